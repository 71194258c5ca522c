"""A scripted OpenAI-compatible server on loopback: the stand-in for a paid teacher or judge in tests and benchmarks.

A script function receives each request body and returns the reply text, or a `Reply` with a fault: an HTTP error
status (429, 500, ...), a delay (to provoke time-outs), a finish reason, or a raw body (garbage JSON). A `Reply` can
also carry token log probabilities, which the server returns in OpenAI's shapes when the request asks for them
(chat: `logprobs: true, top_logprobs: K`; completions: `logprobs: K`). Every request is recorded in
`server.requests`, its headers in `server.headers`.

    with ScriptedServer(lambda req: "Hello") as server:
        client = LLMClient("openai/teacher", api_base=server.url, api_key="x")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted reply: text, or a fault.

    `stop_reason` is what stopped a "stop" answer, as vLLM and `huarizo serve` report it (a stop string, a stop token
    id, or None for the end of sequence). `logprobs` gives, for each generated token in order, its most likely
    alternatives as `{token: logprob}`; the generated token is the most likely one. The server sends the first K
    alternatives a request asks for.
    """

    text: str = ""
    status: int = 200
    delay: float = 0.0
    finish_reason: str = "stop"
    raw_body: str | None = None
    logprobs: Sequence[Mapping[str, float]] | None = None
    stop_reason: str | int | None = None


def _ranked(position: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(position.items(), key=lambda kv: -kv[1])[: max(k, 1)]


def chat_logprobs(positions: Sequence[Mapping[str, float]], k: int) -> dict[str, Any]:
    """`choices[0].logprobs` of a chat completion (OpenAI's shape) with `k` alternatives per token."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = []
    for pos in positions:
        ranked = _ranked(pos, k)
        content.append({**entry(*ranked[0]), "top_logprobs": [entry(t, v) for t, v in ranked[:k]]})
    return {"content": content, "refusal": None}


def completion_logprobs(positions: Sequence[Mapping[str, float]], k: int) -> dict[str, Any]:
    """`choices[0].logprobs` of a (legacy) completion (OpenAI's shape) with `k` alternatives per token."""
    tokens, values, tops, offsets, at = [], [], [], [], 0
    for pos in positions:
        ranked = _ranked(pos, k)
        tokens.append(ranked[0][0])
        values.append(ranked[0][1])
        tops.append(dict(ranked[:k]))
        offsets.append(at)
        at += len(ranked[0][0])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


Script = Callable[[dict[str, Any]], "str | Reply"]


def prompt_text(request: dict[str, Any]) -> str:
    """The prompt of a chat or completion request as one string (for scripts that look at it)."""
    if "prompt" in request:
        prompt = request["prompt"]
        return prompt if isinstance(prompt, str) else "".join(prompt)
    return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))


class PromptCounter:
    """Counts requests per prompt, for scripts whose reply depends on the attempt: `counter(request)` gives
    `(attempt, order)`, how many times this prompt was asked before and where it first came among the prompts
    (thread-safe: the server answers requests concurrently)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.order: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> tuple[int, int]:
        prompt = prompt_text(request)
        with self._lock:
            attempt = self.attempts.get(prompt, 0)
            self.attempts[prompt] = attempt + 1
            return attempt, self.order.setdefault(prompt, len(self.order))


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default (5) drops connections when many clients connect at once
    daemon_threads = True


class ScriptedServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 whose answers come from a script.

    `latency` is added to every request (the server handles requests concurrently, one thread each). `/models`
    lists `model`, with `fingerprint` when one is set (as `huarizo serve` reports its model's).
    """

    def __init__(
        self, script: Script, *, latency: float = 0.0, model: str = "scripted", fingerprint: str | None = None
    ) -> None:
        self.script, self.latency, self.model, self.fingerprint = script, latency, model, fingerprint
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (ends in /v1)."""
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                card = {"id": server.model, "object": "model"}
                if server.fingerprint is not None:
                    card["fingerprint"] = server.fingerprint
                self._send(200, json.dumps({"object": "list", "data": [card]}))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers.items()))
                out = server.script(body)
                reply = out if isinstance(out, Reply) else Reply(text=out)
                delay = server.latency + reply.delay
                if delay:
                    time.sleep(delay)
                if reply.status != 200:
                    err = {"error": {"message": f"scripted error {reply.status}", "type": "server_error", "code": None}}
                    self._send(reply.status, json.dumps(err))
                    return
                if reply.raw_body is not None:
                    self._send(200, reply.raw_body)
                    return
                chat = self.path.rstrip("/").endswith("chat/completions")
                completion = _completion(body, reply, chat=chat, number=len(server.requests), model=server.model)
                self._send(200, json.dumps(completion))

        return Handler


def _completion(body: dict[str, Any], reply: Reply, *, chat: bool, number: int, model: str) -> dict[str, Any]:
    """The OpenAI response to request `body` (chat or text completion) carrying `reply`, with logprobs when asked
    for and usage counted in whitespace-separated words."""
    prompt_tokens = len(prompt_text(body).split())
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": reply.finish_reason,
        "stop_reason": reply.stop_reason,
        "logprobs": None,
    }
    if chat:
        choice["message"] = {"role": "assistant", "content": reply.text}
        if body.get("logprobs") and reply.logprobs is not None:
            choice["logprobs"] = chat_logprobs(reply.logprobs, int(body.get("top_logprobs") or 0))
    else:
        choice["text"] = reply.text
        if body.get("logprobs") is not None and reply.logprobs is not None:
            choice["logprobs"] = completion_logprobs(reply.logprobs, int(body["logprobs"]))
    completion_tokens = len(reply.text.split())
    return {
        "id": f"scripted-{number}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model", model),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }

"""A scripted OpenAI-compatible server on loopback: the stand-in for a paid teacher or judge in tests and benchmarks.

A script function receives each request body and returns the reply text, or a `Reply` with a fault: an HTTP error
status (429, 500, ...), a delay (to provoke time-outs), a finish reason, or a raw body (garbage JSON). Every request is
recorded in `server.requests`.

    with ScriptedServer(lambda req: "Hello") as server:
        client = LLMClient("openai/teacher", api_base=server.url, api_key="x")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted reply: text, or a fault."""

    text: str = ""
    status: int = 200
    delay: float = 0.0
    finish_reason: str = "stop"
    raw_body: str | None = None


Script = Callable[[dict[str, Any]], "str | Reply"]


def prompt_text(request: dict[str, Any]) -> str:
    """The prompt of a chat or completion request as one string (for scripts that look at it)."""
    if "prompt" in request:
        prompt = request["prompt"]
        return prompt if isinstance(prompt, str) else "".join(prompt)
    return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))


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
                prompt_tokens = len(prompt_text(body).split())
                choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": reply.text}
                else:
                    choice["text"] = reply.text
                    choice["logprobs"] = None
                completion_tokens = len(reply.text.split())
                self._send(
                    200,
                    json.dumps(
                        {
                            "id": f"scripted-{len(server.requests)}",
                            "object": "chat.completion" if chat else "text_completion",
                            "created": int(time.time()),
                            "model": body.get("model", server.model),
                            "choices": [choice],
                            "usage": {
                                "prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens,
                                "total_tokens": prompt_tokens + completion_tokens,
                            },
                        }
                    ),
                )

        return Handler

"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.

Bodies are read and validated here (not by FastAPI) so that every invalid request, an oversized one included, gets
a 400 with OpenAI's error JSON; a client that goes away cancels its sequences, which frees their batch slots.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation, Message
from huarizo.serve.config import ServeConfig
from huarizo.serve.engine import (
    Delta,
    EngineError,
    Event,
    Finished,
    PromptLogprobs,
    RequestHandle,
    SamplingParams,
    TokenLogprob,
)
from huarizo.serve.model import ServedModel
from huarizo.serve.tokens import TokenText

MAX_STOPS = 128
"""Stop strings a request may send (OpenAI allows 4; lm-eval sends its task's `until` list)."""
MAX_STOP_CHARS = 512
"""Characters of one stop string."""
MAX_LOGPROBS = 20
"""The most alternatives per position (`top_logprobs` of chat, `logprobs` of completions), as OpenAI allows."""
MAX_LOGIT_BIAS = 1024
"""Entries of `logit_bias` (OpenAI allows 300)."""

# ---- request bodies -------------------------------------------------------------------------------------------------


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, presence_penalty, ...) are ignored

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # vLLM's extension; -1 or 0: off
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension, handy for benchmarks


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """A chat message as OpenAI clients send it (`developer` is read as `system`)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]

    @property
    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class CompletionRequest(_Sampling):
    """POST /v1/completions (`max_tokens: 0` with `echo` scores the prompt alone, as lm-eval asks)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None


class APIError(Exception):
    """An error answered with OpenAI's error JSON."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        err = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": err}, status_code=self.status)


def _validation_error(exc: ValidationError) -> APIError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "list[", "str")))
    return APIError(400, f"{loc}: {err['msg']}" if loc else err["msg"], param=loc or None)


# ---- metrics --------------------------------------------------------------------------------------------------------


class _Metrics:
    def __init__(self, served: ServedModel) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("huarizo_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("huarizo_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("huarizo_completion_tokens", "generated tokens", registry=r)
        self.latency = Histogram("huarizo_request_latency_seconds", "request latency", ["endpoint"], registry=r)
        self.ttft = Histogram("huarizo_time_to_first_token_seconds", "time to the first streamed text", registry=r)
        stats = served.engine.stats
        Gauge("huarizo_queue_depth", "sequences waiting for a batch slot", registry=r).set_function(
            lambda: stats.waiting
        )
        Gauge("huarizo_running_sequences", "sequences in the running batch", registry=r).set_function(
            lambda: stats.running
        )


_ENDPOINTS = {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics"}


class _Guard:
    """ASGI middleware: bearer-key check on /v1/*, request counts and latency (streams included)."""

    def __init__(self, app: Any, api_keys: tuple[str, ...], metrics: _Metrics) -> None:
        self.app, self.keys, self.metrics = app, {f"Bearer {k}".encode() for k in api_keys}, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        start, status = time.perf_counter(), [500]
        if (
            self.keys
            and scope["path"].startswith("/v1/")
            and dict(scope["headers"]).get(b"authorization") not in self.keys
        ):
            self.metrics.requests.labels(path, "401").inc()
            msg = "invalid or missing API key (send Authorization: Bearer KEY)"
            await APIError(401, msg, code="invalid_api_key").response()(scope, receive, send)
            return

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()
            if scope["method"] == "POST" and path.startswith("/v1/"):
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)


# ---- the app --------------------------------------------------------------------------------------------------------


def create_app(served: ServedModel, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving `served` with the limits and keys of `cfg`."""
    app = FastAPI(title="huarizo serve", docs_url=None, redoc_url=None)
    metrics = _Metrics(served)
    app.add_middleware(_Guard, api_keys=tuple(cfg.api_keys), metrics=metrics)
    app.state.served, app.state.metrics = served, metrics

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": served.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "huarizo",
            "max_model_len": served.context_length,
            "fingerprint": served.fingerprint,
        }
        return {"object": "list", "data": [card]}

    async def read_body(request: Request, model: type[BaseModel]) -> Any:
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(400, f"request body of {declared} bytes is over the limit of {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(400, f"request body is over the limit of {limit} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        try:  # an explicit null means "the default", as OpenAI reads it
            return model.model_validate({k: v for k, v in data.items() if v is not None})
        except ValidationError as exc:
            raise _validation_error(exc) from None

    def sampling(req: _Sampling, prompt_len: int, *, chat: bool, max_tokens: int | None, **kw: Any) -> Any:
        room = served.context_length - prompt_len
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens; the context is {served.context_length}")
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                400,
                f"max_tokens={max_tokens} plus the prompt's {prompt_len} tokens exceeds the model's context of "
                f"{served.context_length} tokens",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOPS:
            raise APIError(400, f"stop: at most {MAX_STOPS} stop strings (got {len(stop)})", param="stop")
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"stop: a stop string has at most {MAX_STOP_CHARS} characters", param="stop")
        return served.params(
            chat=chat,
            stop=stop,
            max_tokens=min(cfg.default_max_tokens, room) if max_tokens is None else max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=logit_bias(req.logit_bias or {}),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            **kw,
        )

    def logit_bias(bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
        vocab = served.vocab_size
        try:
            out = tuple((int(k), float(v)) for k, v in bias.items())
        except ValueError:
            raise APIError(400, "logit_bias: keys are token ids (as strings)", param="logit_bias") from None
        if any(not 0 <= t < vocab or not -100 <= v <= 100 for t, v in out):
            msg = f"logit_bias: token ids must be in [0, {vocab}) and biases in [-100, 100]"
            raise APIError(400, msg, param="logit_bias")
        return out

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatCompletionRequest = await read_body(request, ChatCompletionRequest)
        try:
            msgs = [Message(role="system" if m.role == "developer" else m.role, content=m.text) for m in req.messages]
            conv = Conversation(messages=msgs)
            ids = served.chat_prompt(conv)
        except ValidationError as exc:
            raise APIError(400, f"messages: {exc.errors()[0]['msg']}", param="messages") from None
        except HuarizoError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = sampling(req, len(ids), chat=True, max_tokens=max_tokens, logprobs=logprobs)
        choices = [_Choice(ids, p) for p in _per_choice(params, req.n)]
        return await _respond(request, req, choices, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await read_body(request, CompletionRequest)
        if (req.best_of or 1) > 1:
            raise APIError(400, "best_of: only 1 is supported by this server", param="best_of")
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens: 0 is only allowed with echo (to score the prompt)", param="max_tokens")
        p = req.prompt
        prompts: list[Any] = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not prompts or any(not x for x in prompts):
            raise APIError(400, "prompt: must not be empty", param="prompt")
        vocab = served.vocab_size
        if any(not 0 <= t < vocab for x in prompts if not isinstance(x, str) for t in x):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        ids_of = [served.completion_prompt(x) for x in prompts]
        kw = {"logprobs": req.logprobs, "prompt_logprobs": req.logprobs if req.echo else None}
        choices = [
            _Choice(ids, p, _echo_text(served, x) if req.echo else None)
            for x, ids in zip(prompts, ids_of, strict=True)
            for p in _per_choice(sampling(req, len(ids), chat=False, max_tokens=req.max_tokens, **kw), req.n)
        ]
        return await _respond(request, req, choices, chat=False)

    tokens = TokenText(served.tokenizer)

    async def _respond(request: Request, req: _Sampling, choices: list[_Choice], chat: bool) -> Response:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        handles: list[RequestHandle] = []

        def sink_for(i: int) -> Any:
            def sink(ev: Event) -> None:
                if isinstance(ev, Delta) and not req.stream:
                    return  # a non-streaming request only needs the end: no wake-up of the event loop per token
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (i, ev))
                except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                    handles[i].cancel()

            return sink

        try:
            for i, c in enumerate(choices):
                handles.append(served.engine.submit(c.prompt_ids, c.params, sink_for(i)))
        except EngineError as exc:
            for h in handles:
                h.cancel()
            raise APIError(400, str(exc)) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "created": int(time.time()), "model": served.name}
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            gen = _stream(
                events, handles, choices, head, tokens, chat=chat, include_usage=usage, metrics=metrics, started=started
            )
            return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finished = await _collect(request, events, handles)
        if any(f.reason == "error" for f in finished):
            raise APIError(500, f"generation failed: {next(f.error for f in finished if f.error)}")
        _count(metrics, finished)
        out = []
        for i, (c, f) in enumerate(zip(choices, finished, strict=True)):
            fmt = _Logprobs(tokens)
            if chat:
                content = {"content": fmt.chat(f.logprobs), "refusal": None} if c.params.logprobs is not None else None
                message = {"role": "assistant", "content": f.text}
                out.append({"index": i, "message": message, "finish_reason": f.reason, "logprobs": content})
                continue
            text, lps = f.text, None
            if c.echo is not None:
                text = c.echo + f.text
                if f.prompt_logprobs is not None:
                    lps = fmt.completion(c.prompt_ids, f.prompt_logprobs)
                fmt.restart(len(c.echo))
            if c.params.logprobs is not None:
                lps = _join(lps, fmt.completion([t.token for t in f.logprobs], f.logprobs))
            out.append({"index": i, "text": text, "finish_reason": f.reason, "logprobs": lps})
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": out, "usage": _usage(finished, chat)})

    return app


@dataclasses.dataclass(frozen=True)
class _Choice:
    """One sequence of a request: its prompt, how to sample it, and the prompt text it echoes (completions)."""

    prompt_ids: list[int]
    params: SamplingParams
    echo: str | None = None


def _echo_text(served: ServedModel, prompt: str | list[int]) -> str:
    """The prompt as `echo` returns it: the text sent, or the text of the token ids sent."""
    if isinstance(prompt, str):
        return prompt
    return str(served.tokenizer.decode(prompt, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def _finite(logprob: float) -> float:
    """OpenAI's -9999.0 for a token the model cannot produce (JSON has no -Infinity)."""
    return logprob if math.isfinite(logprob) else -9999.0


class _Logprobs:
    """One choice's logprobs in OpenAI's shapes: chat's `content[]` and completions' parallel lists, whose
    `text_offset` is each token's character offset in the choice's `text`."""

    def __init__(self, tokens: TokenText) -> None:
        self.tokens = tokens
        self.restart(0)

    def restart(self, offset: int) -> None:
        """Count offsets on from `offset` (the length of the echoed prompt, once its tokens are done)."""
        self.offset = offset
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        t = self.tokens
        return {"token": t.string(token), "logprob": _finite(logprob), "bytes": list(t.token_bytes(token))}

    def chat(self, items: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
        """`choices[].logprobs.content` (the top alternatives sorted, most likely first)."""
        return [
            {**self._entry(it.token, it.logprob), "top_logprobs": [self._entry(t, lp) for t, lp in it.top]}
            for it in items
        ]

    def completion(
        self, token_ids: Sequence[int], items: Sequence[TokenLogprob | None] | PromptLogprobs
    ) -> dict[str, list[Any]]:
        """`choices[].logprobs` of completions; a token's `top_logprobs` holds the top alternatives and itself."""
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, item in zip(token_ids, items, strict=True):
            out["tokens"].append(self.tokens.string(token))
            out["text_offset"].append(self.offset)
            self.offset += len(self._utf8.decode(self.tokens.text_bytes(token)))
            if item is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            top: dict[str, float] = {}
            for t, lp in (*item.top, (item.token, item.logprob)):
                top.setdefault(self.tokens.string(t), _finite(lp))
            out["token_logprobs"].append(_finite(item.logprob))
            out["top_logprobs"].append(top)
        return out


def _join(a: dict[str, list[Any]] | None, b: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return b if a is None else {k: a[k] + b[k] for k in a}


def _per_choice(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n choices of one prompt: with a seed, choice i samples with seed + i (so they differ, reproducibly)."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]


def _usage(finished: list[Finished], chat: bool) -> dict[str, int]:
    # n choices of one chat prompt count the prompt once, as OpenAI does
    prompt = finished[0].prompt_tokens if chat else sum(f.prompt_tokens for f in finished)
    completion = sum(f.completion_tokens for f in finished)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count(metrics: _Metrics, finished: list[Finished]) -> None:
    metrics.prompt_tokens.inc(sum(f.prompt_tokens for f in finished))
    metrics.completion_tokens.inc(sum(f.completion_tokens for f in finished))


async def _collect(
    request: Request, events: asyncio.Queue[tuple[int, Event]], handles: list[RequestHandle]
) -> list[Finished]:
    """Wait for every sequence to finish; a client that disconnects first cancels them all."""
    finished: dict[int, Finished] = {}

    async def gather() -> None:
        while len(finished) < len(handles):
            i, ev = await events.get()
            if isinstance(ev, Finished):
                finished[i] = ev

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.create_task(gather()), asyncio.create_task(disconnected())
    try:
        await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            for h in handles:
                h.cancel()
    if len(finished) < len(handles):
        raise APIError(499, "client closed the request")
    return [finished[i] for i in range(len(handles))]


async def _stream(
    events: asyncio.Queue[tuple[int, Event]],
    handles: list[RequestHandle],
    choices: list[_Choice],
    head: dict[str, Any],
    tokens: TokenText,
    *,
    chat: bool,
    include_usage: bool,
    metrics: _Metrics,
    started: float,
) -> AsyncIterator[str]:
    """SSE chunks in OpenAI's format, each with the logprobs of its tokens when asked for, then `[DONE]`; if the
    client goes away, the sequences are cancelled."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    first = True
    finished: dict[int, Finished] = {}
    fmts = [_Logprobs(tokens) for _ in choices]

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'object': obj, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

    def choice(i: int, text: str | None, reason: str | None, lps: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
        want = choices[i].params.logprobs is not None
        if chat:
            delta = {} if text is None else {"content": text}
            content = {"content": fmts[i].chat(lps), "refusal": None} if want and lps else None
            return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": content}
        logprobs = fmts[i].completion([t.token for t in lps], lps) if want and lps else None
        return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": logprobs}

    def echo(i: int, prompt_logprobs: PromptLogprobs | None) -> str:
        c = choices[i]
        lps = fmts[i].completion(c.prompt_ids, prompt_logprobs) if prompt_logprobs is not None else None
        fmts[i].restart(len(c.echo or ""))
        return chunk([{"index": i, "text": c.echo, "finish_reason": None, "logprobs": lps}])

    try:
        if chat:
            yield chunk(
                [{**choice(i, "", None), "delta": {"role": "assistant", "content": ""}} for i in range(len(handles))]
            )
        for i, c in enumerate(choices):  # an echo without prompt logprobs needs nothing from the model
            if c.echo is not None and c.params.prompt_logprobs is None:
                yield echo(i, None)
        while len(finished) < len(handles):
            i, ev = await events.get()
            if isinstance(ev, Delta) and ev.prompt_logprobs is not None:
                yield echo(i, ev.prompt_logprobs)
            elif isinstance(ev, Delta):
                if first:
                    metrics.ttft.observe(time.perf_counter() - started)
                    first = False
                yield chunk([choice(i, ev.text, None, ev.logprobs)])
            else:
                finished[i] = ev
                reason = "stop" if ev.reason in ("stop", "error", "cancelled") else ev.reason
                yield chunk([choice(i, None, reason)])
        done = [finished[i] for i in range(len(handles))]
        _count(metrics, done)
        if include_usage:
            yield chunk([], usage=_usage(done, chat))
        yield "data: [DONE]\n\n"
    finally:
        for h in handles:
            h.cancel()

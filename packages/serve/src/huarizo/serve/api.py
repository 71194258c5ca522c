"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.

Bodies are read and validated here (not by FastAPI), so that every invalid request gets OpenAI's error JSON naming
the field: a field the server does not implement is refused (400), never ignored; an unknown model is a 404
(`model_not_found`); a body that is not JSON a 400 or 415. Parsing, validation and tokenization run in worker threads,
off the event loop. Every request is bounded: its body (size, and time to arrive), its sequences (prompts x n), and
the queue it joins (429 with Retry-After when full). A client that goes away cancels its sequences, which frees their
batch slots.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from huarizo.formats import Conversation, HuarizoError, Message
from huarizo.serve.config import ServeConfig
from huarizo.serve.engine import (
    Delta,
    EngineBusy,
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
from huarizo.serve.web import Web, mount_web

log = logging.getLogger("uvicorn.error")  # the server's log: its level is `log_level`

MAX_STOPS = 128
"""Stop strings a request may send (OpenAI allows 4; lm-eval sends its task's `until` list)."""
MAX_STOP_CHARS = 512
"""Characters of one stop string."""
MAX_LOGPROBS = 20
"""The most alternatives per position (`top_logprobs` of chat, `logprobs` of completions), as OpenAI allows."""
MAX_LOGIT_BIAS = 1024
"""Entries of `logit_bias` (OpenAI allows 300)."""
MAX_PREPARING = 256
"""Requests being parsed and tokenized at once; beyond, 429."""
SEED_RANGE = (-(2**63), 2**63 - 1)

# ---- request bodies -------------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field the server does not implement is a 400 naming it


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # vLLM's extension; -1 or 0: off
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension, handy for benchmarks
    # accepted, and without effect on the answer
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class ChatMessageIn(_Body):
    """A chat message as OpenAI clients send it (`developer` is read as `system`; content parts must be text)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        for part in content if isinstance(content, list) else []:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text parts are supported by this server (got type {part.get('type')!r})")
        return content

    @property
    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p["text"] for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: dict[str, Any] | None = None
    tool_choice: Literal["none"] | None = None
    modalities: list[Literal["text"]] | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
        if fmt is not None and fmt != {"type": "text"}:
            raise ValueError(f'only {{"type": "text"}} is supported by this server (got {json.dumps(fmt)[:80]})')
        return fmt


class CompletionRequest(_Sampling):
    """POST /v1/completions (`max_tokens: 0` with `echo` scores the prompt alone, as lm-eval asks)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class APIError(Exception):
    """An error answered with OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        kind = "rate_limit_error" if self.status == 429 else "invalid_request_error"
        if self.status >= 500:
            kind = "server_error"
        err = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": err}, status_code=self.status, headers=self.headers)


def _validation_error(exc: ValidationError) -> APIError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "list[", "str", "dict[")))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "not supported by this server"
    return APIError(400, f"{loc}: {msg}" if loc else msg, param=loc or None)


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
_OPEN = {"/health", "/metrics"}


class _Guard:
    """ASGI middleware: the bearer-key check (everything but /health and /metrics, /openapi.json included), request
    counts and latency (streams included)."""

    def __init__(self, app: Any, api_keys: tuple[str, ...], metrics: _Metrics, web: Web | None) -> None:
        self.app, self.keys, self.metrics = app, {f"Bearer {k}".encode() for k in api_keys}, metrics
        self.web = web  # the pages check their own sessions, and let a logged-in page use the API

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        start, status = time.perf_counter(), [500]
        if (
            self.keys
            and scope["path"] not in _OPEN
            and dict(scope["headers"]).get(b"authorization") not in self.keys
            and not (self.web and self.web.admits(scope))
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

B = TypeVar("B", bound=_Sampling)


class _Routes:
    """The API routes of one served model: reading a request (its body bounded in size and time), parsing,
    validating and tokenizing it in worker threads (never on the event loop), handing its sequences to the engine,
    and answering, whole or streamed."""

    def __init__(self, served: ServedModel, cfg: ServeConfig, metrics: _Metrics) -> None:
        self.served, self.cfg, self.metrics = served, cfg, metrics
        self.workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="huarizo-prepare")
        self.preparing = 0
        self.tokens = TokenText(served.tokenizer)

    # ---- the routes

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.served.name}

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self) -> dict[str, Any]:
        served = self.served
        card = {
            "id": served.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "huarizo",
            "max_model_len": served.context_length,
            "fingerprint": served.fingerprint,
        }
        return {"object": "list", "data": [card]}

    async def chat_completions(self, request: Request) -> Response:
        req, choices = await self.prepare(request, self.prepare_chat)
        return await self.respond(request, req, choices, chat=True)

    async def completions(self, request: Request) -> Response:
        req, choices = await self.prepare(request, self.prepare_completion)
        return await self.respond(request, req, choices, chat=False)

    # ---- reading and checking a request

    async def read_body(self, request: Request) -> bytes:
        """The raw body: JSON only, at most `max_body_bytes`, arriving within `read_timeout`."""
        cfg = self.cfg
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise APIError(415, f"Content-Type must be application/json (got {media})")
        limit, close = cfg.max_body_bytes, {"Connection": "close"}  # the rest of the body is never read
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(400, f"request body of {declared} bytes is over the limit of {limit} bytes", headers=close)
        body = bytearray()
        try:
            async with asyncio.timeout(cfg.read_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise APIError(400, f"request body is over the limit of {limit} bytes", headers=close)
        except TimeoutError:
            log.info("%s: the request body did not arrive within %g s; closing", _client(request), cfg.read_timeout)
            raise APIError(
                408, f"the request body did not arrive within {cfg.read_timeout:g} s", headers=close
            ) from None
        except ClientDisconnect:
            log.info("%s: the client went away while sending its request", _client(request))
            raise APIError(499, "client closed the request") from None
        return bytes(body)

    def parse(self, body: bytes, kind: type[B]) -> B:
        """The body as a request of `kind`: JSON, for this server's model, every field known and valid."""
        try:
            data = json.loads(body)
        except RecursionError:
            raise APIError(400, "request body is nested too deeply") from None
        except ValueError as exc:  # not JSON, not UTF-8, or a number too long to read
            raise APIError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        name = data.get("model")
        if isinstance(name, str) and name != self.served.name:
            msg = f"The model `{name}` does not exist; this server serves: {self.served.name}"
            raise APIError(404, msg, param="model", code="model_not_found")
        try:  # an explicit null means "the default", as OpenAI reads it
            return kind.model_validate({k: v for k, v in data.items() if v is not None})
        except ValidationError as exc:
            raise _validation_error(exc) from None
        except RecursionError:
            raise APIError(400, "request body is nested too deeply") from None

    def sampling(self, req: _Sampling, prompt_len: int, *, chat: bool, max_tokens: int | None, **kw: Any) -> Any:
        """The engine's sampling parameters of a request whose prompt has `prompt_len` tokens."""
        served = self.served
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
            max_tokens=min(self.cfg.default_max_tokens, room) if max_tokens is None else max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=self.logit_bias(req.logit_bias or {}),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            **kw,
        )

    def logit_bias(self, bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs, ids within the vocabulary and biases within [-100, 100]."""
        vocab = self.served.vocab_size
        try:
            out = tuple((int(k), float(v)) for k, v in bias.items())
        except ValueError:
            raise APIError(400, "logit_bias: keys are token ids (as strings)", param="logit_bias") from None
        if any(not 0 <= t < vocab or not -100 <= v <= 100 for t, v in out):
            msg = f"logit_bias: token ids must be in [0, {vocab}) and biases in [-100, 100]"
            raise APIError(400, msg, param="logit_bias")
        return out

    def check_count(self, prompts: int, n: int) -> None:
        """At most `max_sequences_per_request` sequences (prompts x n) in one request."""
        cap = self.cfg.max_sequences_per_request
        if prompts * n > cap:
            where = "n" if n > 1 else "prompt"
            msg = f"{where}: {prompts} prompts x n={n} is {prompts * n} sequences; at most {cap} per request"
            raise APIError(400, msg, param=where)

    def prepare_chat(self, body: bytes) -> tuple[ChatCompletionRequest, list[_Choice]]:
        """A chat request and its sequences (in a worker thread)."""
        req = self.parse(body, ChatCompletionRequest)
        self.check_count(1, req.n)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        try:
            msgs = [Message(role="system" if m.role == "developer" else m.role, content=m.text) for m in req.messages]
            ids = self.served.chat_prompt(Conversation(messages=msgs))
        except ValidationError as exc:
            raise APIError(400, f"messages: {exc.errors()[0]['msg']}", param="messages") from None
        except HuarizoError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = self.sampling(req, len(ids), chat=True, max_tokens=max_tokens, logprobs=logprobs)
        return req, [_Choice(ids, p) for p in _per_choice(params, req.n)]

    def prepare_completion(self, body: bytes) -> tuple[CompletionRequest, list[_Choice]]:
        """A completion request and its sequences: n per prompt (in a worker thread)."""
        req = self.parse(body, CompletionRequest)
        if (req.best_of or 1) > 1:
            raise APIError(400, "best_of: only 1 is supported by this server", param="best_of")
        if req.suffix:
            raise APIError(400, "suffix: not supported by this server", param="suffix")
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens: 0 is only allowed with echo (to score the prompt)", param="max_tokens")
        p = req.prompt
        prompts: list[Any] = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        self.check_count(len(prompts), req.n)
        if not prompts or any(not x for x in prompts):
            raise APIError(400, "prompt: must not be empty", param="prompt")
        vocab = self.served.vocab_size
        if any(not 0 <= t < vocab for x in prompts if not isinstance(x, str) for t in x):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        kw = {"logprobs": req.logprobs, "prompt_logprobs": req.logprobs if req.echo else None}
        choices = []
        for x in prompts:
            ids = self.served.completion_prompt(x)
            params = self.sampling(req, len(ids), chat=False, max_tokens=req.max_tokens, **kw)
            echo = _echo_text(self.served, x) if req.echo else None
            choices += [_Choice(ids, sp, echo) for sp in _per_choice(params, req.n)]
        return req, choices

    async def prepare(
        self, request: Request, fn: Callable[[bytes], tuple[B, list[_Choice]]]
    ) -> tuple[B, list[_Choice]]:
        """Read the body here; parse, validate and tokenize it in a worker thread (never on the event loop)."""
        if self.preparing >= MAX_PREPARING:
            raise APIError(429, "the server is busy reading other requests; retry later", headers={"Retry-After": "1"})
        self.preparing += 1
        try:
            body = await self.read_body(request)
            return await asyncio.get_running_loop().run_in_executor(self.workers, fn, body)
        finally:
            self.preparing -= 1

    # ---- answering

    async def respond(self, request: Request, req: _Sampling, choices: list[_Choice], chat: bool) -> Response:
        """Submit the sequences and answer: a stream of chunks, or the whole answer once every sequence is done."""
        started = time.perf_counter()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        handles = self.submit(choices, events, stream=req.stream)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "created": int(time.time()), "model": self.served.name}
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            gen = _stream(
                events,
                handles,
                choices,
                head,
                self.tokens,
                chat=chat,
                include_usage=usage,
                metrics=self.metrics,
                started=started,
            )
            return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finished = await _collect(request, events, handles)
        if any(f.reason == "error" for f in finished):
            raise APIError(500, f"generation failed: {next(f.error for f in finished if f.error)}")
        _count(self.metrics, finished)
        out = [self.answer(i, c, f, chat) for i, (c, f) in enumerate(zip(choices, finished, strict=True))]
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": out, "usage": _usage(finished, chat)})

    def submit(
        self, choices: list[_Choice], events: asyncio.Queue[tuple[int, Event]], *, stream: bool
    ) -> list[RequestHandle]:
        """Hand the sequences to the engine; their events arrive in `events` as (choice index, event)."""
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []

        def sink_for(i: int) -> Any:
            def sink(ev: Event) -> None:
                if isinstance(ev, Delta) and not stream:
                    return  # a non-streaming request only needs the end: no wake-up of the event loop per token
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (i, ev))
                except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                    for h in handles:
                        h.cancel()

            return sink

        try:
            handles += self.served.engine.submit_many(
                [(c.prompt_ids, c.params, sink_for(i)) for i, c in enumerate(choices)]
            )
        except EngineBusy as exc:
            raise APIError(429, str(exc), code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        except EngineError as exc:
            raise APIError(400, str(exc)) from None
        return handles

    def answer(self, i: int, c: _Choice, f: Finished, chat: bool) -> dict[str, Any]:
        """Choice `i` of a whole (not streamed) answer, with its logprobs when asked for."""
        fmt = _Logprobs(self.tokens)
        ends: dict[str, Any] = {"finish_reason": f.reason, "stop_reason": f.stop_reason}
        if chat:
            content = {"content": fmt.chat(f.logprobs), "refusal": None} if c.params.logprobs is not None else None
            message = {"role": "assistant", "content": f.text}
            return {"index": i, "message": message, **ends, "logprobs": content}
        text, lps = f.text, None
        if c.echo is not None:
            text = c.echo + f.text
            if f.prompt_logprobs is not None:
                lps = fmt.completion(c.prompt_ids, f.prompt_logprobs)
            fmt.restart(len(c.echo))
        if c.params.logprobs is not None:
            lps = _join(lps, fmt.completion([t.token for t in f.logprobs], f.logprobs))
        return {"index": i, "text": text, **ends, "logprobs": lps}


def create_app(served: ServedModel, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving `served` with the limits and keys of `cfg` (the routes: `_Routes`; the pages /ui
    and /arena: `huarizo.serve.web`)."""
    metrics = _Metrics(served)
    routes = _Routes(served, cfg, metrics)
    web: Web | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        routes.workers.shutdown(wait=False, cancel_futures=True)
        if web is not None:
            web.close()

    app = FastAPI(title="huarizo serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    web = mount_web(app, served, cfg) if cfg.web else None
    app.add_middleware(_Guard, api_keys=tuple(cfg.api_keys), metrics=metrics, web=web)
    app.state.served, app.state.metrics = served, metrics
    app.exception_handler(APIError)(_api_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.get("/health")(routes.health)
    app.get("/metrics")(routes.prometheus)
    app.get("/v1/models")(routes.models)
    app.post("/v1/chat/completions")(routes.chat_completions)
    app.post("/v1/completions")(routes.completions)
    return app


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    where = f"{request.method} {request.url.path}"
    msg = {404: f"Invalid URL ({where})", 405: f"Method not allowed ({where})"}.get(exc.status_code, exc.detail)
    return APIError(exc.status_code, str(msg), headers=dict(exc.headers or {})).response()


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


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
    sse = _Chunks(head, choices, tokens, chat=chat)
    first = True
    finished: dict[int, Finished] = {}
    try:
        if chat:
            yield sse.chunk(
                [
                    {**sse.choice(i, "", None), "delta": {"role": "assistant", "content": ""}}
                    for i in range(len(handles))
                ]
            )
        for i, c in enumerate(choices):  # an echo without prompt logprobs needs nothing from the model
            if c.echo is not None and c.params.prompt_logprobs is None:
                yield sse.echo(i, None)
        while len(finished) < len(handles):
            i, ev = await events.get()
            if isinstance(ev, Delta) and ev.prompt_logprobs is not None:
                yield sse.echo(i, ev.prompt_logprobs)
            elif isinstance(ev, Delta):
                if first:
                    metrics.ttft.observe(time.perf_counter() - started)
                    first = False
                yield sse.chunk([sse.choice(i, ev.text, None, ev.logprobs)])
            else:
                finished[i] = ev
                reason = "stop" if ev.reason in ("stop", "error", "cancelled") else ev.reason
                yield sse.chunk([sse.choice(i, None, reason, stop=ev.stop_reason)])
        done = [finished[i] for i in range(len(handles))]
        _count(metrics, done)
        if include_usage:
            yield sse.chunk([], usage=_usage(done, chat))
        yield "data: [DONE]\n\n"
    finally:
        for h in handles:
            h.cancel()


class _Chunks:
    """The SSE chunks of one streamed response: text deltas, finish reasons, echoes, each with its logprobs."""

    def __init__(self, head: dict[str, Any], choices: list[_Choice], tokens: TokenText, *, chat: bool) -> None:
        self.head = head
        self.obj = "chat.completion.chunk" if chat else "text_completion"
        self.choices = choices
        self.chat = chat
        self.fmts = [_Logprobs(tokens) for _ in choices]

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {**self.head, "object": self.obj, "choices": choices, **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def choice(
        self,
        i: int,
        text: str | None,
        reason: str | None,
        lps: Sequence[TokenLogprob] = (),
        stop: str | int | None = None,
    ) -> dict[str, Any]:
        """Choice `i`'s part of a chunk: a chat delta or a completion's text, with the logprobs of `lps`."""
        want = self.choices[i].params.logprobs is not None
        ends = {"finish_reason": reason, "stop_reason": stop}
        if self.chat:
            delta = {} if text is None else {"content": text}
            content = {"content": self.fmts[i].chat(lps), "refusal": None} if want and lps else None
            return {"index": i, "delta": delta, **ends, "logprobs": content}
        logprobs = self.fmts[i].completion([t.token for t in lps], lps) if want and lps else None
        return {"index": i, "text": text or "", **ends, "logprobs": logprobs}

    def echo(self, i: int, prompt_logprobs: PromptLogprobs | None) -> str:
        """The chunk echoing choice `i`'s prompt, with the prompt's logprobs when they were asked for."""
        c = self.choices[i]
        lps = self.fmts[i].completion(c.prompt_ids, prompt_logprobs) if prompt_logprobs is not None else None
        self.fmts[i].restart(len(c.echo or ""))
        return self.chunk([{"index": i, "text": c.echo, "finish_reason": None, "logprobs": lps}])

"""The litellm client shared by datagen and judge (extra `huarizo-formats[llm]`).

Any litellm model string works: hosted APIs, a vLLM or Ollama server, or `huarizo serve` (`openai/<name>` with
`api_base`). Requests run concurrently under a bound; 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter; every response is cached on disk by a hash of the request, so a rerun never pays
twice. A cached answer is reused only for the model that gave it: when the server reports a fingerprint of its model
in `/models` (`huarizo serve` does), only for that fingerprint (so a model retrained and served under the same name is
asked again); when it reports none (a stock vLLM, a stub), only for the same endpoint (so another server that serves a
different model under the same name is asked again). With the server down, the cache still answers. A cache entry
that cannot be read, or that holds another request, is ignored with a warning. Tokens and cost are tracked (unknown
models count tokens without cost). `top_logprobs=K` asks for the K most likely alternatives of each generated token
(chat: `logprobs` + `top_logprobs`; completion: `logprobs=K`, as the OpenAI API has them), returned as `TokenLogprob`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from huarizo.formats.errors import HuarizoError
from huarizo.formats.io import atomic_file

Mode = Literal["chat", "completion"]

log = logging.getLogger(__name__)


class LLMError(HuarizoError):
    """A request that failed for good (after its retries, or with an error that retrying cannot fix)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token: its text, its log probability, and the most likely alternatives at its position
    (`(token, logprob)` pairs, most likely first, the token itself among them)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class LLMResponse:
    """One answer: text, why it stopped, token counts, cost (None when the model's price is unknown) and, when asked
    for with `top_logprobs` and the server gives them, the log probabilities of the generated tokens."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    request_hash: str
    model: str
    cached: bool = False
    logprobs: tuple[TokenLogprob, ...] | None = None
    stop_reason: str | int | None = None
    """What stopped a `finish_reason="stop"` answer, where the server says (vLLM's and `huarizo serve`'s
    `stop_reason`): the stop string, or the stop token's id; None for the model's own end of sequence."""

    @property
    def ended_by_itself(self) -> bool:
        """Whether the model ended the answer: an end-of-turn token, not `max_tokens` or a stop string."""
        return self.finish_reason == "stop" and not isinstance(self.stop_reason, str)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LLMResponse:
        """Rebuild a response from `dataclasses.asdict` output (a cache entry; entries from before `logprobs` load)."""
        lps = data.get("logprobs")
        if lps is not None:
            lps = tuple(
                TokenLogprob(t["token"], float(t["logprob"]), tuple((a, float(b)) for a, b in t["top"])) for t in lps
            )
        return cls(**{**data, "logprobs": lps})


def _stop_reason(choice: Any) -> str | int | None:
    reason = _get(choice, "stop_reason")
    return reason if isinstance(reason, str | int) and not isinstance(reason, bool) else None


@dataclass
class Usage:
    """Running totals of a client."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0
    cache_ignored: int = 0

    def add(self, r: LLMResponse) -> None:
        """Count one response."""
        if r.cached:
            self.cached += 1
            return
        self.requests += 1
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens
        if r.cost is None:
            self.unpriced += 1
        else:
            self.cost += r.cost


def request_hash(model: str, payload: dict[str, Any]) -> str:
    """Content hash of a request: model, messages or prompt, and sampling parameters (not the endpoint or key)."""
    blob = json.dumps({"model": model, **payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _fetch_fingerprint(api_base: str, model: str, api_key: str | None) -> str | None:
    """The `fingerprint` of `model`'s card in the server's `/models`, if it has one."""
    import httpx

    name = model.split("/", 1)[-1]  # litellm's provider prefix is not part of the served name
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        cards = httpx.get(api_base.rstrip("/") + "/models", headers=headers, timeout=10).json()["data"]
        found = [card.get("fingerprint") for card in cards if card.get("id") == name]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return found[0] if found and isinstance(found[0], str) else None


def _get(obj: Any, key: str) -> Any:
    """A field of a litellm response object or of a plain dict."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _chat_logprobs(lp: Any) -> tuple[TokenLogprob, ...] | None:
    """OpenAI chat shape: `content[i] = {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`."""
    content = _get(lp, "content")
    if not content:
        return None
    return tuple(
        TokenLogprob(
            str(_get(t, "token")),
            float(_get(t, "logprob")),
            tuple((str(_get(a, "token")), float(_get(a, "logprob"))) for a in _get(t, "top_logprobs") or ()),
        )
        for t in content
    )


def _completion_logprobs(lp: Any) -> tuple[TokenLogprob, ...] | None:
    """OpenAI completions shape: `tokens[i]`, `token_logprobs[i]`, `top_logprobs[i] = {token: logprob}`."""
    tokens, values = _get(lp, "tokens"), _get(lp, "token_logprobs")
    if not tokens or values is None:
        return None
    tops = _get(lp, "top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(
            str(tok),
            float(value) if value is not None else float("-inf"),
            tuple(sorted(((str(k), float(v)) for k, v in (top or {}).items()), key=lambda kv: -kv[1])),
        )
        for tok, value, top in zip(tokens, values, tops, strict=False)
    )


def import_litellm() -> Any:
    """litellm, imported offline: its cost map read from the package, not fetched from the network (which litellm
    does at import unless told otherwise). The environment variables that say so are set here, right before the
    first import, and only where the user has not set them."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    import litellm

    return litellm


def _retryable(exc: BaseException) -> bool:
    litellm = import_litellm()
    retry = (
        litellm.exceptions.RateLimitError,
        litellm.exceptions.Timeout,
        litellm.exceptions.APIConnectionError,
        litellm.exceptions.InternalServerError,
        litellm.exceptions.ServiceUnavailableError,
    )
    if isinstance(exc, (*retry, asyncio.TimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


@dataclass
class LLMClient:
    """Concurrent, retrying, caching access to one litellm model.

    `mode="completion"` sends plain prompts (for base models such as the embedded default); `"chat"` sends messages.
    """

    model: str
    api_base: str | None = None
    api_key: str | None = None
    mode: Mode = "chat"
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 120.0
    cache_dir: str | Path | None = None
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    usage: Usage = field(default_factory=Usage)
    _sem: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _sem_loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    in_flight: int = field(default=0, init=False)
    max_in_flight: int = field(default=0, init=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _fingerprint_asked: bool = field(default=False, init=False, repr=False)
    _fingerprint_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def server_fingerprint(self) -> str | None:
        """The fingerprint the server at `api_base` reports for this model in `/models` (asked once per client);
        None without `api_base`, when the server reports none, or when it cannot be reached."""
        with self._fingerprint_lock:
            if not self._fingerprint_asked and self.api_base:
                self._fingerprint = _fetch_fingerprint(self.api_base, self.model, self.api_key)
            self._fingerprint_asked = True
            return self._fingerprint

    def _priced(self) -> bool:
        """Whether litellm's local cost table knows the model (asking it about unknown models is slow)."""
        litellm = import_litellm()
        name = self.model.split("/", 1)[-1]
        return self.model in litellm.model_cost or name in litellm.model_cost

    @property
    def endpoint(self) -> str | None:
        """Where requests go: the normalised `api_base`, or None for the provider's own hosted API."""
        return self.api_base.rstrip("/") if self.api_base else None

    def _cache_path(self, h: str) -> Path | None:
        return Path(self.cache_dir) / h[:2] / f"{h}.json" if self.cache_dir else None

    def _read_cache(self, h: str, payload: dict[str, Any], fingerprint: str | None) -> LLMResponse | None:
        """The cached answer, if it was given by this model: the same fingerprint when the server reports one, else
        the same endpoint (entries from before endpoints were recorded: only for hosted APIs, which have no
        api_base). An unreadable entry, or one holding another request, is ignored with a warning."""
        path = self._cache_path(h)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["request"] != json.loads(json.dumps({"model": self.model, **payload})):
                raise ValueError("it holds another request")
            resp = LLMResponse.from_json({**entry["response"], "cached": True})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.usage.cache_ignored += 1
            log.warning("ignoring the cache entry %s (asking again): %s: %s", path, type(exc).__name__, exc)
            return None
        if fingerprint is not None:
            return resp if entry.get("fingerprint") == fingerprint else None
        same = entry["endpoint"] == self.endpoint if "endpoint" in entry else self.endpoint is None
        return resp if same else None

    def _write_cache(self, h: str, payload: dict[str, Any], resp: LLMResponse, fingerprint: str | None) -> None:
        path = self._cache_path(h)
        if path is None:
            return
        entry = {
            "request": {"model": self.model, **payload},
            "response": asdict(resp),
            "fingerprint": fingerprint,
            "endpoint": self.endpoint,
        }
        with atomic_file(path) as fh:
            json.dump(entry, fh, ensure_ascii=False)

    def payload(
        self, content: str | Sequence[dict[str, str]], *, top_logprobs: int | None = None, **params: Any
    ) -> dict[str, Any]:
        """The request body that is hashed and sent: messages (chat) or prompt (completion), and parameters;
        `top_logprobs=K` becomes `logprobs: true, top_logprobs: K` (chat) or `logprobs: K` (completion)."""
        key = "prompt" if self.mode == "completion" else "messages"
        if self.mode == "completion" and not isinstance(content, str):
            raise LLMError("completion mode takes a prompt string, not messages")
        if self.mode == "chat" and isinstance(content, str):
            content = [{"role": "user", "content": content}]
        if top_logprobs is not None:
            asked = (
                {"logprobs": top_logprobs}
                if self.mode == "completion"
                else {"logprobs": True, "top_logprobs": top_logprobs}
            )
            params = {**params, **asked}
        return {
            key: content if isinstance(content, str) else list(content),
            **{k: v for k, v in params.items() if v is not None},
        }

    async def acomplete(
        self, content: str | Sequence[dict[str, str]], *, top_logprobs: int | None = None, **params: Any
    ) -> LLMResponse:
        """Send one request (or answer it from the cache). Parameters: temperature, max_tokens, top_p, stop, ...;
        `top_logprobs=K` asks for the K most likely alternatives of each generated token (`LLMResponse.logprobs`,
        None when the server gives none)."""
        payload = self.payload(content, top_logprobs=top_logprobs, **params)
        h = request_hash(self.model, payload)
        fingerprint = self._fingerprint if self._fingerprint_asked else await asyncio.to_thread(self.server_fingerprint)
        hit = self._read_cache(h, payload, fingerprint)
        if hit is not None:
            self.usage.add(hit)
            return hit
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:  # one semaphore per event loop
            self._sem, self._sem_loop = asyncio.Semaphore(self.concurrency), loop
        async with self._sem:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                resp = await self._send_with_retries(payload, h)
            finally:
                self.in_flight -= 1
        self._write_cache(h, payload, resp, fingerprint)
        self.usage.add(resp)
        return resp

    async def _send_with_retries(self, payload: dict[str, Any], h: str) -> LLMResponse:
        attempt = 0
        while True:
            try:
                return await self._send(payload, h)
            except Exception as exc:
                if not _retryable(exc) or attempt >= self.max_retries:
                    self.usage.failures += 1
                    raise LLMError(f"{self.model}: request failed after {attempt + 1} tries: {exc}") from exc
                delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                self.usage.retries += 1
                await asyncio.sleep(delay)

    async def _send(self, payload: dict[str, Any], h: str) -> LLMResponse:
        litellm = import_litellm()
        litellm.suppress_debug_info = True
        litellm.disable_aiohttp_transport = True  # its aiohttp sessions leak (warnings at exit); httpx does not
        kwargs: dict[str, Any] = {"model": self.model, "timeout": self.timeout, "num_retries": 0, **payload}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        elif self.api_base and self.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            kwargs["api_key"] = "none"  # a local OpenAI-compatible server (huarizo serve, vLLM) needs no key
        call = litellm.atext_completion if self.mode == "completion" else litellm.acompletion
        result = await asyncio.wait_for(call(**kwargs), timeout=self.timeout + 5)
        choice = result.choices[0]
        text = choice.text if self.mode == "completion" else choice.message.content
        lp = _get(choice, "logprobs")
        logprobs = None if lp is None else _completion_logprobs(lp) if self.mode == "completion" else _chat_logprobs(lp)
        usage = getattr(result, "usage", None)
        # litellm prices every response from its local table while logging it; reuse that (None when unpriced).
        hidden = getattr(result, "_hidden_params", None) or {}
        cost: float | None = hidden.get("response_cost")
        if cost is None:
            try:
                cost = float(litellm.completion_cost(completion_response=result)) if self._priced() else None
            except Exception:
                cost = None
        return LLMResponse(
            text=text or "",
            finish_reason=getattr(choice, "finish_reason", None),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost=cost,
            request_hash=h,
            model=self.model,
            logprobs=logprobs,
            stop_reason=_stop_reason(choice),
        )

    async def aclose(self) -> None:
        """Close litellm's pooled HTTP sessions of the running event loop (call before the loop ends)."""
        litellm = import_litellm()
        with contextlib.suppress(Exception):
            await litellm.close_litellm_async_clients()

    def complete(
        self, content: str | Sequence[dict[str, str]], *, top_logprobs: int | None = None, **params: Any
    ) -> LLMResponse:
        """Blocking form of `acomplete` (runs its own event loop)."""
        return asyncio.run(self.acomplete(content, top_logprobs=top_logprobs, **params))

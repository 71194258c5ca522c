"""A litellm client shared by datagen and judge (extra `huarizo-formats[llm]`).

Any litellm model string works: hosted APIs, a vLLM or Ollama server, or `huarizo serve` (`openai/<name>` with
`api_base`). Requests run concurrently under a bound; 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter; every response is cached on disk by a hash of the request, so a rerun never pays
twice. A server that reports a fingerprint of its model in `/models` (`huarizo serve` does) invalidates the answers
cached from another model served under the same name, e.g. after retraining; with the server down, the cache still
answers. Tokens and cost are tracked (unknown models count tokens without cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from huarizo.formats.errors import HuarizoError

# litellm fetches its cost map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

Mode = Literal["chat", "completion"]


class LLMError(HuarizoError):
    """A request that failed for good (after its retries, or with an error that retrying cannot fix)."""


@dataclass(frozen=True)
class LLMResponse:
    """One answer: text, why it stopped, token counts and cost (None when the model's price is unknown)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    request_hash: str
    model: str
    cached: bool = False


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


def _retryable(exc: BaseException) -> bool:
    import litellm

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
        import litellm

        name = self.model.split("/", 1)[-1]
        return self.model in litellm.model_cost or name in litellm.model_cost

    def _cache_path(self, h: str) -> Path | None:
        return Path(self.cache_dir) / h[:2] / f"{h}.json" if self.cache_dir else None

    def _read_cache(self, h: str, fingerprint: str | None) -> LLMResponse | None:
        """The cached answer, unless the server now serves a model other than the one that gave it."""
        path = self._cache_path(h)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            data = entry["response"]
        except (json.JSONDecodeError, KeyError):
            return None
        if fingerprint is not None and entry.get("fingerprint") != fingerprint:
            return None
        return LLMResponse(**{**data, "cached": True})

    def _write_cache(self, h: str, payload: dict[str, Any], resp: LLMResponse, fingerprint: str | None) -> None:
        path = self._cache_path(h)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            entry = {"request": {"model": self.model, **payload}, "response": asdict(resp), "fingerprint": fingerprint}
            json.dump(entry, fh, ensure_ascii=False)
        os.replace(tmp, path)

    def payload(self, content: str | Sequence[dict[str, str]], **params: Any) -> dict[str, Any]:
        """The request body that is hashed and sent: messages (chat) or prompt (completion), and parameters."""
        key = "prompt" if self.mode == "completion" else "messages"
        if self.mode == "completion" and not isinstance(content, str):
            raise LLMError("completion mode takes a prompt string, not messages")
        if self.mode == "chat" and isinstance(content, str):
            content = [{"role": "user", "content": content}]
        return {
            key: content if isinstance(content, str) else list(content),
            **{k: v for k, v in params.items() if v is not None},
        }

    async def acomplete(self, content: str | Sequence[dict[str, str]], **params: Any) -> LLMResponse:
        """Send one request (or answer it from the cache). Parameters: temperature, max_tokens, top_p, stop, ..."""
        payload = self.payload(content, **params)
        h = request_hash(self.model, payload)
        fingerprint = self._fingerprint if self._fingerprint_asked else await asyncio.to_thread(self.server_fingerprint)
        hit = self._read_cache(h, fingerprint)
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
        import litellm

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
        )

    async def aclose(self) -> None:
        """Close litellm's pooled HTTP sessions of the running event loop (call before the loop ends)."""
        import litellm

        with contextlib.suppress(Exception):
            await litellm.close_litellm_async_clients()

    def complete(self, content: str | Sequence[dict[str, str]], **params: Any) -> LLMResponse:
        """Blocking form of `acomplete` (runs its own event loop)."""
        return asyncio.run(self.acomplete(content, **params))

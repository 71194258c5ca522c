"""Asking the judge for one verdict, and reading it from token probabilities or from text.

`verdict: logprobs` asks for the verdict alone with `top_logprobs` and reads it from the probabilities of the
candidate tokens; `text` lets the judge think and parses the verdict from its reply, asking again (a new request, at
a higher temperature with a seed, so the cache cannot return the same reply) when there is none; `auto` first asks
the judge one tiny question with `top_logprobs` (cached like any request): a judge that returns logprobs gets
probability verdicts (and text for an item whose probabilities name no verdict), one that does not gets text
verdicts, each item asked once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from huarizo.formats.llm import LLMClient, LLMError
from huarizo.judge import verdicts as v
from huarizo.judge.prompts import PAIR_PREFIX, RATING_PREFIX, completion_prompt, parse_pair, parse_rating, verdict_only

if TYPE_CHECKING:
    from huarizo.formats import Template
    from huarizo.judge.config import GradeConfig

VERDICT_TOKENS = 4
"""Tokens generated for a probability verdict: enough to get past `[[` or a leading space to the label."""
PROBE = "Reply with the letter A."
"""The question `auto` asks a judge to see whether it returns logprobs."""


@dataclass
class Reading:
    """One request's verdict: `value` is the preference for the answer shown first (pairs) or the rating."""

    value: float | None = None
    label: str | None = None
    probs: dict[str, float] | None = None
    way: str | None = None
    replies: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Kind:
    """A kind of verdict: its labels, how text and probabilities become a value, and the completion prefix."""

    prefix: str
    parse: Callable[[str], Any]
    from_text: Callable[[Any], tuple[float, str]]
    from_logprobs: Callable[[Any], tuple[float, str, dict[str, float]] | None]


def _pair_logprobs(logprobs: Any) -> tuple[float, str, dict[str, float]] | None:
    probs = v.pair_probs(logprobs)
    return None if probs is None else (v.first_preference(probs), v.most_likely(probs), probs)


def _rating_logprobs(logprobs: Any) -> tuple[float, str, dict[str, float]] | None:
    probs = v.rating_probs(logprobs)
    if probs is None:
        return None
    return v.expected_rating(probs), str(max(probs, key=probs.__getitem__)), {str(k): p for k, p in probs.items()}


PAIR = Kind(PAIR_PREFIX, parse_pair, lambda x: ({"A": 1.0, "B": 0.0, "C": 0.5}[x], x), _pair_logprobs)
RATING = Kind(RATING_PREFIX, parse_rating, lambda x: (float(x), f"{x:g}"), _rating_logprobs)


class Asker:
    """Asks one judge (an `LLMClient`) for verdicts, as a grading config says."""

    def __init__(self, cfg: GradeConfig, client: LLMClient, template: Template | None) -> None:
        self.cfg, self.client, self.template = cfg, client, template
        self.way = cfg.verdict

    async def probe(self) -> None:
        """`auto`: whether this judge returns logprobs at all (one tiny request, cached); `way` says the answer."""
        if self.way != "auto":
            return
        question = [{"role": "user", "content": PROBE}]
        try:
            resp = await self.client.acomplete(
                self._content(question), top_logprobs=1, max_tokens=1, temperature=0.0, drop_params=True
            )
        except LLMError:
            return  # unknown: each item tries its probabilities first
        self.way = "auto" if resp.logprobs else "text"

    async def ask(self, kind: Kind, messages: list[dict[str, str]]) -> Reading:
        """A verdict for one request, read as `cfg.verdict` (and, for `auto`, the probe) says."""
        if self.way == "text":
            return await self._text(kind, messages, Reading())
        first = await self._logprobs(kind, messages)
        failed = first.error is not None and first.error.startswith("request failed")
        if first.value is not None or self.cfg.verdict == "logprobs" or failed:
            return first
        return await self._text(kind, messages, first)

    def _content(self, messages: list[dict[str, str]], prefix: str = "") -> str | list[dict[str, str]]:
        return messages if self.template is None else completion_prompt(messages, self.template, prefix)

    async def _logprobs(self, kind: Kind, messages: list[dict[str, str]]) -> Reading:
        params: dict[str, Any] = {"temperature": 0.0, "max_tokens": VERDICT_TOKENS}
        if self.cfg.verdict == "auto":
            params["drop_params"] = True  # judges whose API has no logprobs answer without them
        try:
            resp = await self.client.acomplete(
                self._content(verdict_only(messages), kind.prefix), top_logprobs=self.cfg.top_logprobs, **params
            )
        except LLMError as exc:
            return Reading(attempts=1, error=f"request failed: {exc}")
        read = kind.from_logprobs(resp.logprobs) if resp.logprobs else None
        if read is not None:
            return Reading(read[0], read[1], read[2], "logprobs", [resp.text], 1)
        why = "no logprobs in the reply" if not resp.logprobs else "no verdict token among the top alternatives"
        return Reading(replies=[resp.text], attempts=1, error=f"{why} (top_logprobs={self.cfg.top_logprobs})")

    async def _text(self, kind: Kind, messages: list[dict[str, str]], carry: Reading) -> Reading:
        """Ask until the reply parses (`parse_retries` new requests), after what `carry` already asked."""
        out = Reading(replies=list(carry.replies), attempts=carry.attempts)
        stop = self.template.stop_strings() if self.template is not None else None
        for attempt in range(self.cfg.parse_retries + 1):
            params: dict[str, Any] = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
            if attempt:  # a new request: the cache must not return the same reply; judges without `seed` drop it
                temperature = max(self.cfg.retry_temperature, self.cfg.temperature)
                params.update(temperature=temperature, seed=attempt, drop_params=True)
            out.attempts += 1
            try:
                resp = await self.client.acomplete(self._content(messages), stop=stop, **params)
            except LLMError as exc:
                out.error = f"request failed: {exc}"
                return out
            out.replies.append(resp.text)
            parsed = kind.parse(resp.text)
            if parsed is not None:
                out.value, out.label = kind.from_text(parsed)
                out.way, out.error = "text", None
                return out
        out.error = f"no verdict in {self.cfg.parse_retries + 1} replies" + (
            f" ({carry.error} first)" if carry.error else ""
        )
        return out

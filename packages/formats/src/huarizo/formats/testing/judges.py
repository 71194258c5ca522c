"""Scripted judges for `huarizo.formats.testing.ScriptedServer`: they read the answers out of the prompt as a real
judge would, so tests and benchmarks exercise the whole path (prompt, HTTP, parsing or probabilities, aggregation).

    with ScriptedServer(prefer_longer) as server:
        grade(GradeConfig(..., judge={"model": "openai/judge", "api_base": server.url}))

Text judges (`prefer_longer`, `prefer_first`) write their verdict; probability judges (`longer_with`, `first_with`,
`rating_with`) return the verdict token's alternatives as OpenAI-style logprobs, as a real judge asked with
`top_logprobs` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from huarizo.formats.testing.server import Reply, prompt_text

_CONV = re.compile(r"<conversation with assistant ([AB])>\n(.*?)\n</conversation with assistant \1>", re.S)
_TURN = re.compile(r"### Assistant(?: [AB])? \(turn (\d+)\)\n")


def shown_answers(request: dict[str, Any]) -> dict[str, str]:
    """The answers A and B of a pairwise judge request, chat or completion (the last turn shown of each)."""
    return {side: _TURN.split(conv)[-1] for side, conv in _CONV.findall(prompt_text(request))}


def shown_answer(request: dict[str, Any]) -> str:
    """The graded answer of a single-rating judge request (the last assistant turn shown; "" for none)."""
    text = prompt_text(request)
    if "<conversation>\n" not in text:
        return ""
    conv = text.split("<conversation>\n", 1)[1].rsplit("\n</conversation>", 1)[0]
    return _TURN.split(conv)[-1]


def prefer_longer(request: dict[str, Any]) -> str:
    """A judge that prefers the longer answer (a tie when both have the same length)."""
    ans = shown_answers(request)
    if not ans:  # not a comparison (the `auto` probe)
        return "A"
    a, b = len(ans["A"]), len(ans["B"])
    return "Longer is better. [[A]]" if a > b else "Longer is better. [[B]]" if b > a else "Same length. [[C]]"


def prefer_first(request: dict[str, Any]) -> str:
    """A judge that always prefers whichever answer is shown first."""
    return "The first one is better.\n[[A]]"


def verdict_reply(probs: dict[str, float], text: str = "") -> Reply:
    """A reply whose tokens are `[[` then the verdict, with `probs` as the verdict token's alternatives (spelled
    as servers print them: a leading space on B and C). `text` is the reply's text (default: none at all)."""
    spelled = {("" if label == "A" else " ") + label: math.log(p) for label, p in probs.items() if p > 0}
    return Reply(text=text, logprobs=[{"[[": math.log(0.98), "[": math.log(0.02)}, spelled])


def longer_with(p: float, *, text: str = "") -> Callable[[dict[str, Any]], Reply]:
    """A probability judge that puts `p` on the longer answer (half and half at equal length)."""

    def judge(request: dict[str, Any]) -> Reply:
        ans = shown_answers(request)
        if not ans:  # not a comparison (the `auto` probe)
            return verdict_reply({"A": 1.0}, "A")
        a, b = len(ans["A"]), len(ans["B"])
        pa = p if a > b else 1 - p if b > a else 0.5
        return verdict_reply({"A": pa, "B": 1 - pa}, text)

    return judge


def first_with(p: float, *, text: str = "") -> Callable[[dict[str, Any]], Reply]:
    """A probability judge that puts `p` on whichever answer is shown first."""
    return lambda request: verdict_reply({"A": p, "B": 1 - p}, text)


def rating_with(rate: Callable[[str], dict[int, float]]) -> Callable[[dict[str, Any]], Reply]:
    """A probability judge for single grading: `rate(answer)` gives the rating token's probabilities."""

    def judge(request: dict[str, Any]) -> Reply:
        probs = rate(shown_answer(request))
        return Reply(text="", logprobs=[{str(k): math.log(v) for k, v in probs.items() if v > 0}])

    return judge

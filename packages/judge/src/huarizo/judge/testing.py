"""Scripted judges for `huarizo.formats.testing.ScriptedServer`: they read the answers out of the prompt as a real
judge would, so tests and benchmarks exercise the whole path (prompt, HTTP, parsing, aggregation).

    with ScriptedServer(prefer_longer) as server:
        grade(GradeConfig(..., judge="openai/judge", api_base=server.url, api_key="x"))
"""

from __future__ import annotations

import re
from typing import Any

_CONV = re.compile(r"<conversation with assistant ([AB])>\n(.*?)\n</conversation with assistant \1>", re.S)
_TURN = re.compile(r"### Assistant(?: [AB])? \(turn (\d+)\)\n")


def shown_answers(request: dict[str, Any]) -> dict[str, str]:
    """The answers A and B of a pairwise judge request (the last turn shown of each conversation)."""
    text = request["messages"][-1]["content"]
    return {side: _TURN.split(conv)[-1] for side, conv in _CONV.findall(text)}


def shown_answer(request: dict[str, Any]) -> str:
    """The graded answer of a single-rating judge request (the last assistant turn shown)."""
    text = request["messages"][-1]["content"]
    conv = text.split("<conversation>\n", 1)[1].rsplit("\n</conversation>", 1)[0]
    return _TURN.split(conv)[-1]


def prefer_longer(request: dict[str, Any]) -> str:
    """A judge that prefers the longer answer (a tie when both have the same length)."""
    ans = shown_answers(request)
    a, b = len(ans["A"]), len(ans["B"])
    return "Longer is better. [[A]]" if a > b else "Longer is better. [[B]]" if b > a else "Same length. [[C]]"


def prefer_first(request: dict[str, Any]) -> str:
    """A judge that always prefers whichever answer is shown first."""
    return "The first one is better.\n[[A]]"

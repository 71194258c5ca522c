"""Scripted judges for the judge tests: each reads the answers out of the prompt as a real judge would."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

_CONV = re.compile(r"<conversation with assistant ([AB])>\n(.*?)\n</conversation with assistant \1>", re.S)
_TURN = re.compile(r"### Assistant [AB] \(turn (\d+)\)\n")


def shown_answers(request: dict[str, Any]) -> dict[str, str]:
    """The answers A and B of a pairwise judge request (the last turn shown of each conversation)."""
    text = request["messages"][-1]["content"]
    out = {}
    for side, conv in _CONV.findall(text):
        out[side] = _TURN.split(conv)[-1]
    return out


def prefer_longer(request: dict[str, Any]) -> str:
    """A judge that prefers the longer answer (tie when equal)."""
    ans = shown_answers(request)
    a, b = len(ans["A"]), len(ans["B"])
    return "Longer is better. [[A]]" if a > b else "Longer is better. [[B]]" if b > a else "Same. [[C]]"


def prefer_first(request: dict[str, Any]) -> str:
    """A judge that always prefers whatever is shown first."""
    return "The first one is better.\n[[A]]"


@pytest.fixture
def judges() -> dict[str, Callable[[dict[str, Any]], str]]:
    """Named scripted judges."""
    return {"longer": prefer_longer, "first": prefer_first}


@pytest.fixture
def vicuna(shared_data):  # type: ignore[no-untyped-def]
    """Paths of the legacy Vicuna-80 table."""
    root = shared_data / "fastchat" / "vicuna80_legacy"
    return {
        "questions": root / "question.jsonl",
        "answer": lambda name: root / "answer" / f"answer_{name}.jsonl",
        "review": lambda name: root / "review" / f"review_{name}_vicuna-13b.jsonl",
    }

"""What a judge said about one item: a single rating, or a comparison read in both orders, and how its verdicts
were read (`logprobs`, `text`, or an `annotation` scored from an existing file).

A comparison's outcome is one number, `preference`: how much the judge prefers `model_a` to `model_b` (1 a win,
0.5 a tie, 0 a loss, or anything between for probability verdicts and weighted annotations). The win rate is its
mean, as AlpacaEval defines it; wins, ties and losses count preferences above, at and below 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

TIE_TOLERANCE = 1e-9
"""Two orders' averaged probabilities closer than this to 0.5 are a tie (floating-point noise, not a preference)."""


@dataclass
class Judgment:
    """One graded item: a single rating, or a comparison asked in both orders.

    `order_preferences` are the preference for `model_a` read in each order (A shown first, then B first);
    `read` says how each verdict was read; `probs` holds the label probabilities of probability verdicts.
    """

    mode: str
    question_id: str
    category: str
    turn: int
    model: str | None = None
    score: float | None = None
    model_a: str | None = None
    model_b: str | None = None
    verdicts: list[str | None] = field(default_factory=list)
    order_preferences: list[float | None] = field(default_factory=list)
    preference: float | None = None
    winner: str | None = None
    consistent: bool | None = None
    read: list[str | None] = field(default_factory=list)
    probs: list[dict[str, float] | None] = field(default_factory=list)
    len_a: int = 0
    len_b: int = 0
    index: int | None = None
    reference: bool = False
    replies: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Judgment:
        """A judgment from a `judgments.jsonl` line (lines written before `preference` existed get it from
        `winner`). Raises TypeError naming an unknown field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise TypeError(f"unknown field {unknown[0]!r}")
        j = cls(**record)
        if j.mode == "pairwise" and j.preference is None and j.winner is not None and j.error is None:
            j.preference = 1.0 if j.winner == j.model_a else 0.5 if j.winner == "tie" else 0.0
        return j


def side(preference: float) -> str:
    """`a`, `b` or `tie`: which model a preference for `model_a` favours."""
    if preference > 0.5 + TIE_TOLERANCE:
        return "a"
    if preference < 0.5 - TIE_TOLERANCE:
        return "b"
    return "tie"


def settle(j: Judgment) -> None:
    """Combine the two orders' preferences into `preference`, `winner` and `consistent`.

    Text verdicts follow FastChat: a verdict that changes with the order is a tie. Probability verdicts are
    averaged over both orders, as AlpacaEval's weighted annotator's are."""
    p1, p2 = j.order_preferences
    if p1 is None or p2 is None:
        return
    j.consistent = side(p1) == side(p2)
    if all(way == "text" for way in j.read):
        j.preference = p1 if j.consistent else 0.5
    else:
        mean = (p1 + p2) / 2
        j.preference = 0.5 if side(mean) == "tie" else mean
    j.winner = {"a": j.model_a, "b": j.model_b, "tie": "tie"}[side(j.preference)]


def outcome(j: Judgment, model: str) -> float:
    """The preference of a settled comparison from `model`'s side."""
    assert j.preference is not None
    return j.preference if j.model_a == model else 1 - j.preference


def flip(j: Judgment) -> Judgment:
    """The same comparison seen from `model_b`'s side."""
    return replace(
        j,
        model_a=j.model_b,
        model_b=j.model_a,
        preference=None if j.preference is None else 1 - j.preference,
        order_preferences=[None if p is None else 1 - p for p in reversed(j.order_preferences)],
        verdicts=list(reversed(j.verdicts)),
        read=list(reversed(j.read)),
        probs=list(reversed(j.probs)),
        replies=list(reversed(j.replies)) if len(j.replies) == 2 else j.replies,
        len_a=j.len_b,
        len_b=j.len_a,
    )

"""People's votes from the arena of `huarizo serve` (`votes.jsonl`), read as judgments (`huarizo judge score`) or as
the labels of the judge audit (`--labels`).

One line per vote: `voter, time, item, shown, vote, winner, models, category`. `item` is the question id the judge
uses for the question file the arena showed; `models` are the two models compared; `shown` is the order the voter
saw them in (A, B); `vote` is `A`, `B`, `tie` or `both_bad` (both bad counts as a tie, as in Chatbot Arena).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VOTES = ("A", "B", "tie", "both_bad")
"""What a voter may answer."""


def is_vote(d: dict[str, Any]) -> bool:
    """Whether a record is an arena vote."""
    return "vote" in d and "shown" in d and "models" in d


@dataclass(frozen=True)
class Vote:
    """One vote: who, on which item, which two models, in which order they were shown, and what was voted.
    `winner` is a model, or `tie` (a tie, or both bad)."""

    voter: str | None
    item: str
    models: tuple[str, str]
    shown: tuple[str, str]
    vote: str
    category: str

    @property
    def winner(self) -> str:
        """The preferred model, or `tie`."""
        return {"A": self.shown[0], "B": self.shown[1]}.get(self.vote, "tie")


def _pair(d: dict[str, Any], key: str) -> tuple[str, str]:
    value = d[key]
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(m, str) and m for m in value):
        raise ValueError(f"field {key!r}: expected the two models' names")
    return value[0], value[1]


def read_vote(d: dict[str, Any]) -> Vote:
    """A vote record; raises KeyError for a missing field and ValueError (naming the field) for a bad one."""
    models, shown = _pair(d, "models"), _pair(d, "shown")
    if models[0] == models[1] or set(shown) != set(models):
        raise ValueError(f"field 'shown': {list(shown)} is not an order of the models {list(models)}")
    if d["vote"] not in VOTES:
        raise ValueError(f"field 'vote': {d['vote']!r} is not one of {', '.join(VOTES)}")
    item, voter = d["item"], d.get("voter")
    if not isinstance(item, str | int) or isinstance(item, bool) or str(item) == "":
        raise ValueError("field 'item': expected a question id")
    return Vote(
        None if voter is None else str(voter),
        str(item),
        models,
        shown,
        d["vote"],
        str(d.get("category") or "general"),
    )

"""Verdicts read from the judge's token probabilities (`logprobs`), the way AlpacaEval 2's weighted annotator reads
them: the prompt ends where the verdict token comes, and the probabilities of the candidate tokens among the
`top_logprobs` alternatives give the verdict, even when the judge would never write it out.

Tokens arrive as servers print them (`"A"`, `" A"`, `"[[A"`, `"A]]"`, `"ĠA"`, `"▁A"`); they are normalised before they
are matched, and the probabilities of the spellings of one label are added up. A comparison's preference for the
answer shown first is (P(A) + P(C) / 2) / (P(A) + P(B) + P(C)); a rating's value is the expected rating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from huarizo.formats.llm import TokenLogprob

PAIR_LABELS = ("A", "B", "C")
RATING_LABELS = tuple(str(n) for n in range(1, 11))
_MARKS = " \t\r\n[](){}*:.`'\"Ġ▁"


def normalise(token: str) -> str:
    """The label a token spells: whitespace, brackets and tokenizer space marks stripped (`" [[A"` -> `"A"`)."""
    return token.strip(_MARKS)


def label_probs(position: TokenLogprob, labels: Sequence[str]) -> dict[str, float]:
    """Probabilities of `labels` among one position's alternatives (the generated token included)."""
    alternatives = dict(position.top)
    alternatives.setdefault(position.token, position.logprob)
    out: dict[str, float] = {}
    for token, logprob in alternatives.items():
        label = normalise(token)
        if label in labels:
            out[label] = out.get(label, 0.0) + math.exp(logprob)
    return out


def verdict_position(logprobs: Sequence[TokenLogprob], labels: Sequence[str]) -> int | None:
    """Where the verdict is: the first generated token that spells a label, else the first position whose
    alternatives hold one (None when no position does)."""
    for i, pos in enumerate(logprobs):
        if normalise(pos.token) in labels:
            return i
    for i, pos in enumerate(logprobs):
        if label_probs(pos, labels):
            return i
    return None


def pair_probs(logprobs: Sequence[TokenLogprob]) -> dict[str, float] | None:
    """P(A), P(B), P(C) at the verdict token, normalised over the labels found (None when none is)."""
    i = verdict_position(logprobs, PAIR_LABELS)
    if i is None:
        return None
    probs = label_probs(logprobs[i], PAIR_LABELS)
    total = sum(probs.values())
    return {label: probs.get(label, 0.0) / total for label in PAIR_LABELS}


def rating_probs(logprobs: Sequence[TokenLogprob]) -> dict[int, float] | None:
    """P(rating) for 1-10 at the rating token, normalised (None when no rating token is among the alternatives).

    Tokenizers that split "10" into "1" "0" write it in two tokens: when the generated token is "1", the next
    position's probability of "0" moves that share of P(1) to 10."""
    i = verdict_position(logprobs, RATING_LABELS)
    if i is None:
        return None
    probs = {int(k): v for k, v in label_probs(logprobs[i], RATING_LABELS).items()}
    if normalise(logprobs[i].token) == "1" and i + 1 < len(logprobs):
        zero = label_probs(logprobs[i + 1], ("0",)).get("0", 0.0)
        probs[10] = probs.get(10, 0.0) + probs[1] * zero
        probs[1] *= 1 - zero
    total = sum(probs.values())
    return {k: v / total for k, v in sorted(probs.items()) if v > 0}


def first_preference(probs: dict[str, float]) -> float:
    """Preference for the answer shown first (A): P(A) + P(C) / 2 of normalised label probabilities."""
    return probs.get("A", 0.0) + probs.get("C", 0.0) / 2


def expected_rating(probs: dict[int, float]) -> float:
    """The expected rating of normalised rating probabilities."""
    return sum(k * p for k, p in probs.items())


def most_likely(probs: dict[str, float]) -> str:
    """The label with the highest probability (ties: the first in A, B, C order)."""
    return max(PAIR_LABELS, key=lambda label: probs.get(label, 0.0))

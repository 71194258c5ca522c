"""An exact and fast ROUGE-L novelty filter.

The Alpaca / Self-Instruct filter drops a candidate instruction when its ROUGE-L F1 (the `rouge_score` package, default
tokenizer, no stemming) against any instruction already in the pool is greater than a threshold; kept candidates join
the pool. Done naively that is one dynamic-programming LCS per pair. Here the same decisions come out much faster:

1. Tokens are numbered; each token occurrence `(token, k-th time)` is an item, so the multiset overlap of two texts
   is the size of the intersection of their item sets, and an inverted index (item -> pool rows) gives the overlap of
   a candidate with every pool row in one `numpy.bincount`.
2. `LCS <= overlap`, and F1 = 2 LCS / (n + m), so rows whose bound cannot pass the threshold are skipped.
3. The rows left get an exact LCS by the bit-parallel algorithm (Hyyrö 2004) on Python integers, and the F1 is
   computed with `rouge_score`'s own float formula (both from `huarizo.formats`' ROUGE-L, which the judge's metric
   uses too), so every decision is the one `rouge_score` makes.

The tokenizer is `default` (`rouge_score`'s) or `cjk` (Chinese, Japanese and Korean text split into characters).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from huarizo.formats import (
    CJKTokenizer,
    DefaultTokenizer,
    RougeTokenizer,
    RougeTokenizerName,
    lcs_length,
    lcs_masks,
    lcs_with_masks,
    rouge_l_f1,
    rouge_tokenizer,
)

__all__ = [
    "CJKTokenizer",
    "DefaultTokenizer",
    "Match",
    "NoveltyIndex",
    "lcs_length",
    "novelty_filter",
    "rouge_l_f1",
]

_EPS = 1e-9


class _Growable:
    """An int32 array that grows by doubling (cheap appends, a zero-copy view)."""

    __slots__ = ("arr", "size")

    def __init__(self, capacity: int = 4) -> None:
        self.arr = np.empty(capacity, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.arr):
            self.arr = np.concatenate([self.arr, np.empty(len(self.arr), dtype=np.int32)])
        self.arr[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.arr[: self.size]


@dataclass(frozen=True)
class Match:
    """Why a candidate is not novel: its ROUGE-L F1 against pool entry `index` (whose text is `text`)."""

    score: float
    index: int
    text: str


class NoveltyIndex:
    """A growing pool of instructions that answers "is this candidate's ROUGE-L F1 above the threshold for any?".

    >>> index = NoveltyIndex(threshold=0.7)
    >>> index.add("Write a poem about the sea.")
    >>> index.add_if_novel("Write a poem about the sea!") is None  # a Match: not novel, not added
    False
    """

    def __init__(self, threshold: float = 0.7, tokenizer: RougeTokenizerName | RougeTokenizer = "default") -> None:
        self.threshold = threshold
        self.tokenizer = rouge_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.texts: list[str] = []
        self._tokens: list[list[int]] = []
        self._vocab: dict[str, int] = {}
        self._items: dict[tuple[int, int], int] = {}
        self._postings: dict[int, _Growable] = {}
        self._lens = _Growable(1024)
        self.pairs_scored = 0

    def __len__(self) -> int:
        return len(self.texts)

    def _ids(self, text: str) -> list[int]:
        vocab = self._vocab
        return [vocab.setdefault(t, len(vocab)) for t in self.tokenizer.tokenize(text)]

    def _occurrences(self, ids: list[int], create: bool) -> list[int]:
        seen: dict[int, int] = {}
        out = []
        for tok in ids:
            k = seen[tok] = seen.get(tok, -1) + 1
            key = (tok, k)
            item = self._items.get(key)
            if item is None and create:
                item = self._items[key] = len(self._items)
            if item is not None:
                out.append(item)
        return out

    def add(self, text: str) -> None:
        """Add an instruction to the pool unconditionally."""
        ids = self._ids(text)
        row = len(self.texts)
        self.texts.append(text)
        self._tokens.append(ids)
        self._lens.append(len(ids))
        for item in self._occurrences(ids, create=True):
            posting = self._postings.get(item)
            if posting is None:
                posting = self._postings[item] = _Growable()
            posting.append(row)

    def check(self, text: str) -> Match | None:
        """The first pool entry (most overlapping first) whose ROUGE-L F1 with `text` exceeds the threshold."""
        ids = self._ids(text)
        n = len(ids)
        if n == 0 or not self.texts:
            return None
        items = self._occurrences(ids, create=False)
        if not items:
            return None
        size = len(self.texts)
        overlap = np.bincount(np.concatenate([self._postings[i].view() for i in items]), minlength=size)
        lens = self._lens.view()
        # F1 = 2 LCS / (n + m) <= 2 overlap / (n + m): rows that cannot exceed the threshold are never scored.
        rows = np.flatnonzero(2.0 * overlap > (self.threshold - _EPS) * (n + lens))
        if len(rows) == 0:
            return None
        rows = rows[np.argsort(-(overlap[rows] / (n + lens[rows])), kind="stable")]
        masks = lcs_masks(ids)
        for row in rows.tolist():
            other = self._tokens[row]
            self.pairs_scored += 1
            score = rouge_l_f1(lcs_with_masks(masks, n, other), n, len(other))
            if score > self.threshold:
                return Match(score, row, self.texts[row])
        return None

    def add_if_novel(self, text: str) -> Match | None:
        """Check `text`; add it to the pool when novel. Returns the match that rejected it, or None when kept."""
        match = self.check(text)
        if match is None:
            self.add(text)
        return match


def novelty_filter(
    candidates: Sequence[str],
    pool: Iterable[str] = (),
    *,
    threshold: float = 0.7,
    tokenizer: RougeTokenizerName | RougeTokenizer = "default",
) -> list[Match | None]:
    """Decide each candidate in input order against `pool` and the earlier kept candidates; None means kept."""
    index = NoveltyIndex(threshold, tokenizer)
    for text in pool:
        index.add(text)
    return [index.add_if_novel(text) for text in candidates]

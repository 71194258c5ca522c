"""An exact and fast ROUGE-L novelty filter.

The Alpaca / Self-Instruct filter drops a candidate instruction when its ROUGE-L F1 (the `rouge_score` package, default
tokenizer, no stemming) against any instruction already in the pool is greater than a threshold; kept candidates join
the pool. Done naively that is one dynamic-programming LCS per pair. Here the same decisions come out much faster:

1. Tokens are numbered; each token occurrence `(token, k-th time)` is an item, so the multiset overlap of two texts
   is the size of the intersection of their item sets, and an inverted index (item -> pool rows) gives the overlap of
   a candidate with every pool row in one `numpy.bincount`.
2. `LCS <= overlap`, and F1 = 2 LCS / (n + m), so rows whose bound cannot pass the threshold are skipped.
3. The rows left get an exact LCS by the bit-parallel algorithm (Hyyrö 2004) on Python integers, and the F1 is
   computed with `rouge_score`'s own float formula, so every decision is the one `rouge_score` makes.

`CJKTokenizer` splits Chinese, Japanese and Korean text into characters (rouge_score's tokenizer drops every
non-ASCII character, so such instructions would never match anything) and keeps other scripts' words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

TokenizerName = Literal["default", "cjk"]
_EPS = 1e-9

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_CJK = re.compile(
    "([\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f])"
)
_WORD = re.compile(r"[^\W_]+")


class Tokenizer(Protocol):
    """Anything with `tokenize(text) -> list[str]` (the interface `rouge_score` takes as `tokenizer=`)."""

    def tokenize(self, text: str) -> list[str]: ...


class DefaultTokenizer:
    """`rouge_score`'s default tokenizer without stemming: lowercase, ASCII letters and digits only."""

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`."""
        return _NON_ALNUM.sub(" ", text.lower()).split()


class CJKTokenizer:
    """Lowercase; every CJK character (Han, kana, hangul) is a token; runs of other letters and digits are words."""

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`."""
        return _WORD.findall(_CJK.sub(r" \1 ", text.lower()))


def get_tokenizer(name: TokenizerName | str) -> Tokenizer:
    """`default` (rouge_score's) or `cjk`."""
    if name == "default":
        return DefaultTokenizer()
    if name == "cjk":
        return CJKTokenizer()
    raise ValueError(f"unknown ROUGE tokenizer {name!r}; choose 'default' or 'cjk'")


def rouge_l_f1(lcs: int, n: int, m: int) -> float:
    """F1 of an LCS length, computed exactly as `rouge_score` does (precision, recall, then their harmonic mean)."""
    if n == 0 or m == 0:
        return 0.0
    precision, recall = lcs / m, lcs / n
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel)."""
    masks: dict[int, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return _lcs_masks(masks, len(a), b)


def _lcs_masks(masks: dict[int, int], n: int, b: Iterable[int]) -> int:
    v = (1 << n) - 1
    for tok in b:
        u = v & masks.get(tok, 0)
        v = (v + u) | (v - u)
    return n - (v & ((1 << n) - 1)).bit_count()


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

    def __init__(self, threshold: float = 0.7, tokenizer: TokenizerName | Tokenizer = "default") -> None:
        self.threshold = threshold
        self.tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
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
        masks: dict[int, int] = {}
        for i, tok in enumerate(ids):
            masks[tok] = masks.get(tok, 0) | (1 << i)
        for row in rows.tolist():
            other = self._tokens[row]
            self.pairs_scored += 1
            score = rouge_l_f1(_lcs_masks(masks, n, other), n, len(other))
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
    tokenizer: TokenizerName | Tokenizer = "default",
) -> list[Match | None]:
    """Decide each candidate in input order against `pool` and the earlier kept candidates; None means kept."""
    index = NoveltyIndex(threshold, tokenizer)
    for text in pool:
        index.add(text)
    return [index.add_if_novel(text) for text in candidates]


def rouge_score_filter(
    candidates: Sequence[str],
    pool: Iterable[str] = (),
    *,
    threshold: float = 0.7,
    tokenizer: TokenizerName | Tokenizer = "default",
) -> list[bool]:
    """The original sequential filter through `rouge_score` itself (slow; the reference the fast one must equal).

    Returns one `kept` flag per candidate.
    """
    from rouge_score import rouge_scorer

    if tokenizer == "default":  # rouge_score's own tokenizer, not ours
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    else:
        custom = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=custom)
    tok = scorer._tokenizer
    kept_tokens = [tok.tokenize(t) for t in pool]
    kept = []
    for text in candidates:
        tokens = tok.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in kept_tokens]
        ok = not scores or max(scores) <= threshold
        kept.append(ok)
        if ok:
            kept_tokens.append(tokens)
    return kept

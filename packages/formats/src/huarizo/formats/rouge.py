"""Exact ROUGE-L: the F1 of the longest common subsequence of two texts' tokens, computed as the `rouge_score`
package computes it (its default tokenizer, no stemming; its float formula), only faster (a bit-parallel LCS).

Used by datagen's novelty filter and by the judge's `rouge_l` metric, so both give `rouge_score`'s numbers.
`CJKTokenizer` splits Chinese, Japanese and Korean text into characters (`rouge_score`'s tokenizer drops every
non-ASCII character, so such texts would never match anything) and keeps other scripts' words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

RougeTokenizerName = Literal["default", "cjk"]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_CJK = re.compile(
    "([\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f])"
)
_WORD = re.compile(r"[^\W_]+")


class RougeTokenizer(Protocol):
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


def rouge_tokenizer(name: RougeTokenizerName | str) -> RougeTokenizer:
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
    return lcs_with_masks(lcs_masks(a), len(a), b)


def lcs_masks(a: Sequence[int]) -> dict[int, int]:
    """Per token of `a`, the bit mask of its positions: what `lcs_with_masks` takes, computed once for a text that
    is compared with many."""
    masks: dict[int, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_with_masks(masks: dict[int, int], n: int, b: Iterable[int]) -> int:
    """LCS length of a sequence of `n` tokens (given as `lcs_masks` of it) and `b` (Hyyrö's bit-parallel algorithm)."""
    v = (1 << n) - 1
    for tok in b:
        u = v & masks.get(tok, 0)
        v = (v + u) | (v - u)
    return n - (v & ((1 << n) - 1)).bit_count()


def rouge_l(prediction: str, reference: str, tokenizer: RougeTokenizerName | RougeTokenizer = "default") -> float:
    """ROUGE-L F1 of two texts (`rouge_score`'s `fmeasure` of `score(reference, prediction)["rougeL"]`)."""
    tok = rouge_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    vocab: dict[str, int] = {}
    ref = [vocab.setdefault(t, len(vocab)) for t in tok.tokenize(reference)]
    pred = [vocab.setdefault(t, len(vocab)) for t in tok.tokenize(prediction)]
    return rouge_l_f1(lcs_length(ref, pred), len(ref), len(pred))

"""Tokenize conversations and mask everything but the assistant answers, and verify the mask.

The whole rendered text is encoded once (batched, with offsets), so the tokens are exactly the ones the model sees at
inference; a token is trained when it lies in a trainable segment (its surrounding whitespace aside). Every record's
mask is then verified: the trained tokens, decoded, must equal each answer plus its end of turn; a mismatch raises
`MaskError` showing both sides, never a silently masked sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation
from huarizo.formats.templates import DEFAULT_BOS, DEFAULT_EOS, Template

IGNORE_INDEX = -100


class MaskError(HuarizoError, ValueError):
    """The trained tokens of a record do not decode to its answers."""


@dataclass
class TokenizedSample:
    """One training sample: token ids and labels (`IGNORE_INDEX` where no loss is taken)."""

    input_ids: np.ndarray
    labels: np.ndarray
    id: str | None = None

    @property
    def num_trained(self) -> int:
        """How many tokens carry a loss."""
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass
class TokenizeStats:
    """Counts of a tokenize run: records seen, kept, and dropped per reason."""

    total: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0


def _norm(text: str) -> str:
    # Decoders differ in the spaces they put around special tokens and word starts; compare the rest exactly.
    return "".join(text.split())


def _special(tokenizer: Any, name: str, default: str) -> str:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, str) and value else default


def tokenize_conversations(
    convs: Sequence[Conversation],
    template: Template,
    tokenizer: Any,
    max_length: int,
    *,
    verify: bool = True,
) -> tuple[list[TokenizedSample], TokenizeStats]:
    """Render, tokenize (one batched call) and mask conversations; drop records left with no trained token.

    `tokenizer` is a Hugging Face fast tokenizer. Raises `MaskError` when verification finds a mismatch.
    """
    eos, bos = _special(tokenizer, "eos_token", DEFAULT_EOS), _special(tokenizer, "bos_token", DEFAULT_BOS)
    rendered = [template.render(c, eos=eos, bos=bos) for c in convs]
    texts = ["".join(s.text for s in segs) for segs in rendered]
    enc = tokenizer(
        texts, add_special_tokens=template.add_special_tokens, return_offsets_mapping=True, return_attention_mask=False
    )
    stats = TokenizeStats(total=len(convs))
    samples: list[TokenizedSample] = []
    checks: list[tuple[int, int, str, np.ndarray, bool]] = []
    for i, segs in enumerate(rendered):
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        width = ends > starts
        # Zero-width tokens (added BOS/EOS) must not break the monotone order searchsorted relies on.
        ends_m = np.maximum.accumulate(np.where(width, ends, 0))
        starts_m = np.where(width, starts, ends_m)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        n = min(len(ids), max_length)
        pos = 0
        for seg in segs:
            a, b = pos, pos + len(seg.text)
            pos = b
            if not seg.trainable:
                continue
            core = seg.text.strip()
            if not core:
                continue
            a_core = a + (len(seg.text) - len(seg.text.lstrip()))
            i0 = int(np.searchsorted(ends_m, a_core, side="right"))
            i1 = int(np.searchsorted(starts_m, b, side="left"))
            labels[i0:i1] = np.where(width[i0:i1], ids[i0:i1], IGNORE_INDEX)
            if verify and i0 < n:
                checks.append((len(samples), i, core, ids[i0 : min(i1, n)], i1 > n))
        if n < len(ids):
            stats.truncated += 1
            ids, labels = ids[:n], labels[:n]
        if not (labels != IGNORE_INDEX).any():
            stats.dropped["no trained token after truncation" if n < len(enc["input_ids"][i]) else "empty answer"] += 1
            checks = [c for c in checks if c[0] != len(samples)]
            continue
        samples.append(TokenizedSample(ids, labels, convs[i].id))
    stats.kept = len(samples)
    if checks:
        decoded = tokenizer.batch_decode(
            [c[3] for c in checks], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        for (_, i, want, _ids, truncated), got in zip(checks, decoded, strict=True):
            ok = _norm(want).startswith(_norm(got)) if truncated else _norm(got) == _norm(want)
            if not ok:
                who = convs[i].id or f"record {i}"
                raise MaskError(
                    f"{who}: the trained tokens do not decode to the answer.\n  trained : {got!r}\n  expected: {want!r}"
                )
    return samples, stats


def tokenize_conversation(
    conv: Conversation, template: Template, tokenizer: Any, max_length: int
) -> TokenizedSample | None:
    """Tokenize and mask one conversation; None when truncation leaves no trained token."""
    samples, _ = tokenize_conversations([conv], template, tokenizer, max_length)
    return samples[0] if samples else None

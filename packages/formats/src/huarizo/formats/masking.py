"""Tokenize conversations and mask everything but the assistant answers, and verify the mask.

The whole rendered text is encoded once (one batched call), so the tokens are exactly the ones the model sees at
inference; the tokens from the one holding an answer's first character to the one holding its last are trained
(whitespace around the answer belongs to whichever token the tokenizer puts it in). Every record's
mask is then verified: the trained tokens, decoded, must equal each answer plus its end of turn; a mismatch raises
`MaskError` showing both sides, never a silently masked sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation
from huarizo.formats.templates import DEFAULT_BOS, DEFAULT_EOS, Segment, Template

IGNORE_INDEX = -100


class MaskError(HuarizoError, ValueError):
    """The trained tokens of a record do not decode to its answers."""


@dataclass
class TokenizedSample:
    """One training sample: token ids and labels (`IGNORE_INDEX` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    id: str | None = None

    @property
    def num_trained(self) -> int:
        """How many tokens carry a loss."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenizeStats:
    """Counts of a tokenize run: records seen, kept, and dropped per reason."""

    total: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    resegmented: int = 0
    """Records encoded segment by segment because an answer shared a token with its prompt."""


def _norm(text: str) -> str:
    # Decoders differ in the spaces they put around special tokens and word starts; compare the rest exactly.
    return "".join(text.split())


def _special(tokenizer: Any, name: str, default: str) -> str:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, str) and value else default


def _answer_spans(segs: list[Segment], enc: Any) -> list[tuple[int, int, str]] | None:
    """Token ranges `[start, end)` of the answers in a whole-text encoding; None if a token crosses an answer edge."""
    text = "".join(s.text for s in segs)
    spans = []
    pos = 0
    for seg in segs:
        a = pos
        pos += len(seg.text)
        core = seg.text.strip()
        if not seg.trainable or not core:
            continue
        lo = a + len(seg.text) - len(seg.text.lstrip())
        hi = lo + len(core)
        first, last = enc.char_to_token(lo), enc.char_to_token(hi - 1)
        if first is None or last is None:
            return None
        start, end = enc.token_to_chars(first)[0], enc.token_to_chars(last)[1]
        if text[start:lo].strip() or text[hi:end].strip():
            return None
        spans.append((first, last + 1, core))
    return spans


def _encode_by_segments(backend: Any, segs: list[Segment], prefix: list[int]) -> tuple[list[int], list[Any]]:
    ids = list(prefix)
    spans = []
    for seg, enc in zip(segs, backend.encode_batch([s.text for s in segs], add_special_tokens=False), strict=True):
        if seg.trainable and seg.text.strip():
            spans.append((len(ids), len(ids) + len(enc.ids), seg.text.strip()))
        ids += enc.ids
    return ids, spans


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
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MaskError("tokenize_conversations needs a Hugging Face fast tokenizer (with a backend_tokenizer)")
    eos, bos = _special(tokenizer, "eos_token", DEFAULT_EOS), _special(tokenizer, "bos_token", DEFAULT_BOS)
    rendered = [template.render(c, eos=eos, bos=bos) for c in convs]
    backend.no_truncation()
    backend.no_padding()
    encodings = backend.encode_batch(
        ["".join(s.text for s in segs) for segs in rendered], add_special_tokens=template.add_special_tokens
    )
    stats = TokenizeStats(total=len(convs))
    samples: list[TokenizedSample] = []
    checks: list[tuple[int, str, list[int], bool]] = []
    prefix: list[int] | None = None
    for i, (segs, enc) in enumerate(zip(rendered, encodings, strict=True)):
        spans = _answer_spans(segs, enc)
        if spans is None:
            # An answer shares a token with the prompt (e.g. "Response:" + "**bold**" -> ":**"): encode the segments
            # one by one, as the server will see the prompt on its own.
            if prefix is None:
                prefix = backend.encode("", add_special_tokens=template.add_special_tokens).ids
            ids, spans = _encode_by_segments(backend, segs, prefix)
            stats.resegmented += 1
        else:
            ids = enc.ids
        n = min(len(ids), max_length)
        labels = [IGNORE_INDEX] * n
        mine: list[tuple[int, str, list[int], bool]] = []
        for i0, end, core in spans:
            i1 = min(end, n)
            if i0 >= n:
                continue
            labels[i0:i1] = ids[i0:i1]
            mine.append((i, core, ids[i0:i1], end > n))
        if n < len(ids):
            stats.truncated += 1
        if not mine:
            stats.dropped["no trained token after truncation" if n < len(ids) else "empty answer"] += 1
            continue
        if verify:
            checks += mine
        samples.append(TokenizedSample(ids[:n], labels, convs[i].id))
    stats.kept = len(samples)
    if checks:
        decoded = backend.decode_batch([c[2] for c in checks], skip_special_tokens=False)
        for (i, want, _ids, truncated), got in zip(checks, decoded, strict=True):
            # A cut can split a multi-byte character, which decodes to U+FFFD.
            ok = _norm(want).startswith(_norm(got).rstrip("\ufffd")) if truncated else _norm(got) == _norm(want)
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

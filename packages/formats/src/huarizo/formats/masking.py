"""Tokenize conversations and mask everything but the assistant answers, and verify the mask.

The ids of a record are those of its rendered text encoded as one string, exactly what the model sees at inference;
the tokens from the one holding an answer's first character to the one holding its last are trained (whitespace
around the answer belongs to whichever token the tokenizer puts it in). The tokenizer is called once per batch.
Every record's mask is then verified: the trained tokens, decoded, must equal each answer plus its end of turn; a
mismatch raises `MaskError` showing both sides, never a silently masked sample.

A record is cut by characters before it is tokenized, at a bound derived from `max_length` (`char_limit`), so the
memory and time one record takes are bounded by the configured length, not by the record: a 50 MB answer costs what
a long one does.
"""

from __future__ import annotations

import gc
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation
from huarizo.formats.templates import DEFAULT_BOS, DEFAULT_EOS, Segment, Template

IGNORE_INDEX = -100
TYPECODE = "i"  # token ids as C ints


class MaskError(HuarizoError, ValueError):
    """The trained tokens of a record do not decode to its answers."""


@dataclass(slots=True)
class TokenizedSample:
    """One training sample: token ids and labels (`IGNORE_INDEX` where no loss is taken), as arrays of C ints
    (`array.array("i")`: 4 bytes a token; `torch.tensor`, `list` and slicing take them as they are)."""

    input_ids: array[int]
    labels: array[int]
    id: str | None = None

    @property
    def num_trained(self) -> int:
        """How many tokens carry a loss."""
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


@dataclass
class TokenizeStats:
    """Counts of a tokenize run: records seen, kept, and dropped per reason."""

    total: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    resegmented: int = 0
    """Records encoded segment by segment because an answer shared a token with its prompt."""


class _Encoded(NamedTuple):
    ids: array[int]
    spans: list[tuple[int, int, str]]
    """Token ranges `[start, end)` of the answers, with each answer's text."""
    resegmented: bool = False


def _norm(text: str) -> str:
    # Decoders differ in the spaces they put around special tokens and word starts; compare the rest exactly.
    return "".join(text.split())


def char_limit(backend: Any, max_length: int) -> int:
    """How many characters of a rendered record can matter when only its first `max_length` tokens are kept.

    No token spans more characters than the longest token of the vocabulary (`L`, counted in its vocabulary form,
    which has at least as many characters as the text it decodes to: one per byte for byte-level BPE, `▁` for a
    space for SentencePiece). The first `max_length` tokens thus lie within `max_length * L` characters; the bound
    is four times that (room for normalizers that fold several characters into one), plus a margin, so the tokens
    kept are never near the cut, where encoding a prefix can differ from encoding the whole text.
    """
    longest = max((len(t) for t in backend.get_vocab(with_added_tokens=True)), default=1)
    return 4 * (max_length + 8) * max(longest, 1)


def _cut(segs: list[Segment], limit: int) -> list[Segment]:
    """The segments of a rendered record, cut after `limit` characters."""
    out = []
    for seg in segs:
        if limit <= 0:
            break
        out.append(seg if len(seg.text) <= limit else Segment(seg.text[:limit], seg.trainable))
        limit -= len(seg.text)
    return out


def _special(tokenizer: Any, name: str, default: str) -> str:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, str) and value else default


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of small lists would trigger it again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _answers(segs: list[Segment]) -> list[tuple[int, int, str]]:
    """Character ranges `[lo, hi)` of the answers (stripped of surrounding whitespace) in the rendered text."""
    out = []
    pos = 0
    for seg in segs:
        start = pos
        pos += len(seg.text)
        core = seg.text.strip()
        if seg.trainable and core:
            lo = start + len(seg.text) - len(seg.text.lstrip())
            out.append((lo, lo + len(core), core))
    return out


def _rust_spans(segs: list[Segment], enc: Any) -> list[tuple[int, int, str]] | None:
    """Answer spans in a whole-text `tokenizers.Encoding`; None if a token crosses an answer edge."""
    text = "".join(s.text for s in segs)
    spans = []
    for lo, hi, core in _answers(segs):
        first, last = enc.char_to_token(lo), enc.char_to_token(hi - 1)
        if first is None or last is None:
            return None
        start, end = enc.token_to_chars(first)[0], enc.token_to_chars(last)[1]
        if text[start:lo].strip() or text[hi:end].strip():
            return None
        spans.append((first, last + 1, core))
    return spans


def _by_segments(
    segs: list[Segment], encoded: Sequence[Sequence[int]], prefix: list[int], suffix: list[int]
) -> _Encoded:
    """A record whose segments were encoded one by one, as the server will see a prompt on its own."""
    ids = array(TYPECODE, prefix)
    spans = []
    for seg, seg_ids in zip(segs, encoded, strict=True):
        if seg.trainable and seg.text.strip():
            spans.append((len(ids), len(ids) + len(seg_ids), seg.text.strip()))
        ids.extend(seg_ids)
    ids.extend(suffix)
    return _Encoded(ids, spans, resegmented=True)


def _special_around(backend: Any, add_special: bool) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer's post-processor puts before and after a text."""
    if not add_special:
        return [], []
    bare, full = backend.encode("a", add_special_tokens=False).ids, backend.encode("a", add_special_tokens=True).ids
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    return None


def _encode_rust(
    backend: Any, rendered: list[list[Segment]], add_special: bool, around: tuple[list[int], list[int]] | None
) -> list[_Encoded]:
    """Encode whole texts with the tokenizer (one batched call); encode segment by segment the records where an
    answer shares a token with its prompt (e.g. "Response:" + "**bold**" -> ":**")."""
    texts = ["".join(s.text for s in segs) for segs in rendered]
    out: list[_Encoded | None] = []
    for segs, enc in zip(rendered, backend.encode_batch(texts, add_special_tokens=add_special), strict=True):
        spans = _rust_spans(segs, enc)
        out.append(None if spans is None else _Encoded(array(TYPECODE, enc.ids), spans))
    rest = [k for k, enc in enumerate(out) if enc is None]
    if rest:
        if around is None:  # the specials do not surround the text: keep them in front
            around = backend.encode("", add_special_tokens=add_special).ids, []
        pieces = iter(backend.encode_batch([s.text for k in rest for s in rendered[k]], add_special_tokens=False))
        for k in rest:
            out[k] = _by_segments(rendered[k], [next(pieces).ids for _ in rendered[k]], *around)
    return cast(list[_Encoded], out)


def tokenize_conversations(
    convs: Sequence[Conversation],
    template: Template,
    tokenizer: Any,
    max_length: int,
    *,
    verify: bool = True,
) -> tuple[list[TokenizedSample], TokenizeStats]:
    """Render, tokenize and mask conversations; drop records left with no trained token.

    `tokenizer` is a Hugging Face fast tokenizer. Raises `MaskError` when verification finds a mismatch.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MaskError("tokenize_conversations needs a Hugging Face fast tokenizer (with a backend_tokenizer)")
    backend.no_truncation()
    backend.no_padding()
    with _no_gc():
        return _Masker(convs, template, tokenizer, backend, max_length, verify).run()


def tokenize_conversation(
    conv: Conversation, template: Template, tokenizer: Any, max_length: int
) -> TokenizedSample | None:
    """Tokenize and mask one conversation; None when truncation leaves no trained token."""
    samples, _ = tokenize_conversations([conv], template, tokenizer, max_length)
    return samples[0] if samples else None


_IGNORED = array(TYPECODE, [IGNORE_INDEX])
_Check = tuple[int, str, "array[int]", bool]
"""What verification compares: record index, answer text, its trained ids, and whether truncation cut them."""


class _Masker:
    """One `tokenize_conversations` call: the records and the counts."""

    def __init__(
        self,
        convs: Sequence[Conversation],
        template: Template,
        tokenizer: Any,
        backend: Any,
        max_length: int,
        verify: bool,
    ) -> None:
        self.convs, self.template, self.backend = convs, template, backend
        self.max_length, self.verify = max_length, verify
        self.eos, self.bos = (
            _special(tokenizer, "eos_token", DEFAULT_EOS),
            _special(tokenizer, "bos_token", DEFAULT_BOS),
        )
        self.add_special = template.add_special_tokens
        self.around = _special_around(backend, self.add_special)
        self.stats = TokenizeStats(total=len(convs))
        self._limit: int | None = None

    def render(self) -> list[list[Segment]]:
        """The records as the template lays them out, each cut at `char_limit` characters."""
        render, eos, bos = self.template.render, self.eos, self.bos
        out = []
        for conv in self.convs:
            segs = render(conv, eos=eos, bos=bos)
            size = sum(len(s.text) for s in segs)
            if size > 4 * self.max_length:  # no record shorter than this can reach the limit
                if self._limit is None:
                    self._limit = char_limit(self.backend, self.max_length)
                if size > self._limit:
                    segs = _cut(segs, self._limit)
            out.append(segs)
        return out

    def run(self) -> tuple[list[TokenizedSample], TokenizeStats]:
        checks: list[_Check] = []
        encoded = _encode_rust(self.backend, self.render(), self.add_special, self.around)
        samples = [self._mask(i, enc, checks) for i, enc in enumerate(encoded)]
        decoded = self.backend.decode_batch([c[2].tolist() for c in checks], False) if checks else []
        bad = self._verify(checks, decoded)
        if bad is not None:
            self._raise(checks[bad], decoded[bad])
        kept = [s for s in samples if s is not None]
        self.stats.kept = len(kept)
        return kept, self.stats

    def _mask(self, i: int, enc: _Encoded, checks: list[_Check]) -> TokenizedSample | None:
        """Cut a record at max_length and label its answers; None (and a counted reason) if none is left."""
        self.stats.resegmented += enc.resegmented
        ids = enc.ids
        n = min(len(ids), self.max_length)
        cut = n < len(ids)
        if cut:
            self.stats.truncated += 1
            del ids[n:]
        labels = _IGNORED * n
        trained = False
        for start, end, core in enc.spans:
            if start < n:
                labels[start : min(end, n)] = part = ids[start : min(end, n)]
                trained = True
                if self.verify:
                    checks.append((i, core, part, end > n))
        if not trained:
            self.stats.dropped["no trained token after truncation" if cut else "empty answer"] += 1
            return None
        return TokenizedSample(ids, labels, self.convs[i].id)

    def _verify(self, checks: list[_Check], decoded: list[str]) -> int | None:
        """Where the first check whose trained ids do not decode to the answer is, or None."""
        for k, (check, text) in enumerate(zip(checks, decoded, strict=True)):
            want, truncated = check[1], check[3]
            # Decoders differ in the spaces around special tokens. A cut can split a multi-byte character, which
            # decodes to U+FFFD.
            ok = _norm(want).startswith(_norm(text).rstrip("\ufffd")) if truncated else _norm(text) == _norm(want)
            if not ok:
                return k
        return None

    def _raise(self, check: _Check, text: str) -> None:
        who = self.convs[check[0]].id or f"record {check[0]}"
        raise MaskError(
            f"{who}: the trained tokens do not decode to the answer.\n  trained : {text!r}\n  expected: {check[1]!r}"
        )

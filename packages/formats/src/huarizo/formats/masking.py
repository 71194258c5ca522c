"""Tokenize conversations and mask everything but the assistant answers, and verify the mask.

The ids of a record are those of its rendered text encoded as one string, exactly what the model sees at inference;
the tokens from the one holding an answer's first character to the one holding its last are trained (whitespace
around the answer belongs to whichever token the tokenizer puts it in). Byte-level BPE tokenizers (GPT-2, Llama 3
and Qwen 2 style) take a cached path that gives the tokenizer's ids several times faster (`bytelevel`), checked
against the tokenizer on a sample of every batch; other tokenizers are called once per batch. Every record's mask is
then verified: the trained tokens, decoded, must equal each answer plus its end of turn; a mismatch raises
`MaskError` showing both sides, never a silently masked sample.

A record is cut by characters before it is tokenized, at a bound derived from `max_length` (`char_limit`), so the
memory and time one record takes are bounded by the configured length, not by the record: a 50 MB answer costs what
a long one does.
"""

from __future__ import annotations

import gc
import logging
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from huarizo.formats.bytelevel import TYPECODE, ByteLevelEncoder, Chunked, ChunkMismatchError
from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation
from huarizo.formats.templates import DEFAULT_BOS, DEFAULT_EOS, Segment, Template

IGNORE_INDEX = -100
log = logging.getLogger(__name__)

# The cached path pays off from a few hundred records. It is checked against the tokenizer itself on the first
# `_CHECK_FIRST` records and on every `_CHECK_EVERY`-th record after them.
_CACHED_MIN_RECORDS = 256
_CHECK_FIRST = 64
_CHECK_EVERY = 1024
_BLOCK = 1024  # records between two calls to the tokenizer for the chunks not seen yet


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
    cached: int = 0
    """Records encoded by the cached byte-level path; the others were encoded by the tokenizer itself."""


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


def _segment_spans(
    segs: list[Segment], ids: array[int], ends: list[int], offset: int, space: int | None
) -> list[tuple[int, int, str]] | None:
    """Answer spans of a record whose segments were encoded one after the other (`ends`: the token index where each
    segment ends; `space`: the id of a lone space token). An answer may start with one space before its first word
    (" Hello", as Vicuna's template writes it): that space starts the answer's first chunk, and belongs to its first
    token unless it is a token alone. None if an answer starts or ends with other whitespace (which may share a token
    with its neighbours)."""
    spans = []
    for j, seg in enumerate(segs):
        text = seg.text
        if seg.trainable and text:
            start = ends[j - 1] if j else offset
            if text[0] == " " and len(text) > 1 and not text[1].isspace():
                text = text[1:]
                start += ids[start] == space
            if text[0].isspace() or text[-1].isspace():
                return None
            spans.append((start, ends[j], text))
    return spans


def _cached_spans(segs: list[Segment], chunked: Chunked, offset: int) -> list[tuple[int, int, str]] | None:
    """Answer spans in a cached byte-level encoding; None if a token crosses an answer edge."""
    spans = []
    for lo, hi, core in _answers(segs):
        first, last = chunked.token_at(lo, last=False), chunked.token_at(hi - 1, last=True)
        if first[1].strip() or last[1].strip():
            return None
        spans.append((offset + first[0], offset + last[0] + 1, core))
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
    out = []
    for segs, enc in zip(rendered, backend.encode_batch(texts, add_special_tokens=add_special), strict=True):
        spans = _rust_spans(segs, enc)
        if spans is None:
            if around is None:  # the specials do not surround the text: keep them in front
                around = backend.encode("", add_special_tokens=add_special).ids, []
            alone = [e.ids for e in backend.encode_batch([s.text for s in segs], add_special_tokens=False)]
            out.append(_by_segments(segs, alone, *around))
        else:
            out.append(_Encoded(array(TYPECODE, enc.ids), spans))
    return out


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


class _CachedPathFailed(Exception):
    """The cached encoder disagrees with the tokenizer: the batch goes to the tokenizer instead."""


class _Masker:
    """One `tokenize_conversations` call: the records, the counts, and the two ways to encode them."""

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

    def render(self, lo: int, hi: int) -> list[list[Segment]]:
        """Records `lo:hi` as the template lays them out, each cut at `char_limit` characters."""
        render, eos, bos = self.template.render, self.eos, self.bos
        out = []
        for i in range(lo, hi):
            segs = render(self.convs[i], eos=eos, bos=bos)
            size = sum(len(s.text) for s in segs)
            if size > 4 * self.max_length:  # no record shorter than this can reach the limit
                if self._limit is None:
                    self._limit = char_limit(self.backend, self.max_length)
                if size > self._limit:
                    segs = _cut(segs, self._limit)
            out.append(segs)
        return out

    def run(self) -> tuple[list[TokenizedSample], TokenizeStats]:
        encoder = None
        if len(self.convs) >= _CACHED_MIN_RECORDS and self.around is not None:
            encoder = ByteLevelEncoder.for_tokenizer(self.backend)
        samples = None
        if encoder is not None:
            try:
                samples = self._cached(encoder)
            except (_CachedPathFailed, ChunkMismatchError) as e:
                log.warning(
                    "the cached byte-level encoder cannot reproduce this tokenizer (%s); using the tokenizer", e
                )
                self.stats = TokenizeStats(total=len(self.convs))
        if samples is None:
            samples = self._by_tokenizer()
        self.stats.kept = len(samples)
        return samples, self.stats

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

    def _verify(self, checks: list[_Check], decoded: list[str], exact: bool) -> int | None:
        """Where the first check whose trained ids do not decode to the answer is, or None."""
        for k, (check, text) in enumerate(zip(checks, decoded, strict=True)):
            want, truncated = check[1], check[3]
            # The byte-level decoder is exact; others differ in the spaces around special tokens. A cut can split a
            # multi-byte character, which decodes to U+FFFD.
            if exact:
                ok = want.startswith(text.strip().rstrip("\ufffd")) if truncated else text.strip() == want
            else:
                ok = _norm(want).startswith(_norm(text).rstrip("\ufffd")) if truncated else _norm(text) == _norm(want)
            if not ok:
                return k
        return None

    def _raise(self, check: _Check, text: str) -> None:
        who = self.convs[check[0]].id or f"record {check[0]}"
        raise MaskError(
            f"{who}: the trained tokens do not decode to the answer.\n  trained : {text!r}\n  expected: {check[1]!r}"
        )

    def _by_tokenizer(self) -> list[TokenizedSample]:
        checks: list[_Check] = []
        encoded = _encode_rust(self.backend, self.render(0, len(self.convs)), self.add_special, self.around)
        samples = [self._mask(i, enc, checks) for i, enc in enumerate(encoded)]
        decoded = self.backend.decode_batch([c[2].tolist() for c in checks], False) if checks else []
        bad = self._verify(checks, decoded, exact=False)
        if bad is not None:
            self._raise(checks[bad], decoded[bad])
        return [s for s in samples if s is not None]

    def _encode_cached(self, encoder: ByteLevelEncoder, rendered: list[list[Segment]]) -> list[_Encoded]:
        """Encode records with the cached encoder: segment after segment where their boundaries fall between tokens,
        else the whole text; where a token also crosses an answer's edge, the segments one by one, as a server
        sees a prompt on its own."""
        prefix, suffix = cast(tuple[list[int], list[int]], self.around)
        head, tail = array(TYPECODE, prefix).tobytes(), array(TYPECODE, suffix).tobytes()
        out: list[_Encoded | None] = []
        by_segments = encoder.encode_segments([[s.text for s in r] for r in rendered], head)
        for segs, got in zip(rendered, by_segments, strict=True):
            spans = _segment_spans(segs, *got, len(prefix), encoder.space) if got is not None else None
            if got is None or spans is None:
                out.append(None)
                continue
            ids = got[0]
            ids.frombytes(tail)
            out.append(_Encoded(ids, spans))
        rest = [k for k, enc in enumerate(out) if enc is None]
        whole = encoder.encode_batch(["".join(s.text for s in rendered[k]) for k in rest])
        for k, chunked in zip(rest, whole, strict=True):
            spans = _cached_spans(rendered[k], chunked, len(prefix))
            if spans is None:
                alone = [c.ids() for c in encoder.encode_batch([s.text for s in rendered[k]])]
                out[k] = _by_segments(rendered[k], alone, prefix, suffix)
            else:
                out[k] = _Encoded(chunked.ids(head, tail), spans)
        return cast(list[_Encoded], out)

    def _cached(self, encoder: ByteLevelEncoder) -> list[TokenizedSample]:
        n = len(self.convs)
        self._check(encoder, sorted({*range(min(_CHECK_FIRST, n)), *range(0, n, _CHECK_EVERY)}))
        samples: list[TokenizedSample] = []
        for lo in range(0, n, _BLOCK):  # block by block: a block's rendered text is freed before the next
            checks: list[_Check] = []
            encoded = self._encode_cached(encoder, self.render(lo, min(lo + _BLOCK, n)))
            for i, enc in enumerate(encoded, lo):
                sample = self._mask(i, enc, checks)
                if sample is not None:
                    samples.append(sample)
            decoded = [encoder.decode(c[2]) for c in checks]
            bad = self._verify(checks, decoded, exact=True)
            if bad is not None:  # before blaming the data, make sure the tokenizer agrees with the cached encoding
                self._check(encoder, [checks[bad][0]])
                self._raise(checks[bad], decoded[bad])
        self.stats.cached = n
        return samples

    def _check(self, encoder: ByteLevelEncoder, records: list[int]) -> None:
        """Raise `_CachedPathFailed` unless the cached encoding of these records is the tokenizer's."""
        rendered = [self.render(i, i + 1)[0] for i in records]
        want = _encode_rust(self.backend, rendered, self.add_special, self.around)
        for i, mine, ref in zip(records, self._encode_cached(encoder, rendered), want, strict=True):
            if mine != ref or encoder.decode(ref.ids) != self.backend.decode(ref.ids, skip_special_tokens=False):
                raise _CachedPathFailed(f"record {i} encodes differently")

"""Tokenize conversations and mask everything but the assistant answers, and verify the mask.

Each rendered conversation is encoded as one text, so the tokens are exactly the ones the model sees at inference;
the tokens from the one holding an answer's first character to the one holding its last are trained (whitespace
around the answer belongs to whichever token the tokenizer puts it in). Byte-level BPE tokenizers (GPT-2, Llama 3
and Qwen 2 style) take a cached path that reproduces the tokenizer exactly and several times faster (`bytelevel`),
checked against the tokenizer on a sample of every batch; other tokenizers are called once per batch. Every
record's mask is then verified: the trained tokens, decoded, must equal each answer plus its end of turn; a
mismatch raises `MaskError` showing both sides, never a silently masked sample.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from huarizo.formats.bytelevel import ByteLevelEncoder, Chunked, ChunkMismatchError
from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation
from huarizo.formats.templates import DEFAULT_BOS, DEFAULT_EOS, Segment, Template

IGNORE_INDEX = -100
log = logging.getLogger(__name__)

# The cached path pays off from a few hundred records. It is checked against the tokenizer itself on the first
# `_CHECK_FIRST` records and on every `_CHECK_EVERY`-th record after them.
_CACHED_MIN_RECORDS = 256
_CHECK_FIRST = 64
_CHECK_EVERY = 256
_BLOCK = 1024  # records between two calls to the tokenizer for the chunks not seen yet


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
    cached: int = 0
    """Records encoded by the cached byte-level path; the others were encoded by the tokenizer itself."""


@dataclass
class _Encoded:
    ids: list[int]
    spans: list[tuple[int, int, str]]
    """Token ranges `[start, end)` of the answers, with each answer's text."""
    resegmented: bool = False


def _norm(text: str) -> str:
    # Decoders differ in the spaces they put around special tokens and word starts; compare the rest exactly.
    return "".join(text.split())


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
    segs: list[Segment], got: tuple[list[int], list[int]], offset: int, suffix: list[int]
) -> _Encoded | None:
    """The encoding of a record whose segments were encoded one after the other (`got`: ids and where each segment
    ends); None if an answer starts or ends with whitespace (which may share a token with its neighbours)."""
    ids, ends = got
    spans = []
    for j, seg in enumerate(segs):
        if seg.trainable and seg.text:
            if seg.text[0].isspace() or seg.text[-1].isspace():
                return None
            spans.append((ends[j - 1] if j else offset, ends[j], seg.text))
    ids += suffix
    return _Encoded(ids, spans)


def _cached_spans(segs: list[Segment], chunked: Chunked, offset: int) -> list[tuple[int, int, str]] | None:
    """Answer spans in a cached byte-level encoding; None if a token crosses an answer edge."""
    spans = []
    for lo, hi, core in _answers(segs):
        first, last = chunked.token_at(lo, last=False), chunked.token_at(hi - 1, last=True)
        if first[1].strip() or last[1].strip():
            return None
        spans.append((offset + first[0], offset + last[0] + 1, core))
    return spans


def _by_segments(segs: list[Segment], encoded: list[list[int]], prefix: list[int], suffix: list[int]) -> _Encoded:
    """A record whose segments were encoded one by one, as the server will see a prompt on its own."""
    ids = list(prefix)
    spans = []
    for seg, seg_ids in zip(segs, encoded, strict=True):
        if seg.trainable and seg.text.strip():
            spans.append((len(ids), len(ids) + len(seg_ids), seg.text.strip()))
        ids += seg_ids
    ids += suffix
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
            out.append(_Encoded(enc.ids, spans))
    return out


def _encode_cached(
    encoder: ByteLevelEncoder,
    backend: Any,
    rendered: list[list[Segment]],
    add_special: bool,
    around: tuple[list[int], list[int]],
) -> list[_Encoded] | None:
    """Encode with the cached byte-level encoder, checked against the tokenizer on a sample of records; None when
    the encoder cannot reproduce the tokenizer."""
    prefix, suffix = around
    out: list[_Encoded | None] = []
    try:
        for start in range(0, len(rendered), _BLOCK):
            block = rendered[start : start + _BLOCK]
            by_segments = encoder.encode_segments([[s.text for s in segs] for segs in block], prefix)
            out += [
                _segment_spans(segs, got, len(prefix), suffix) if got else None
                for segs, got in zip(block, by_segments, strict=True)
            ]
            # Where a segment boundary falls inside a token: encode the whole text, cut into chunks.
            rest = [i for i in range(start, len(out)) if out[i] is None]
            whole = encoder.encode_batch(["".join(s.text for s in rendered[i]) for i in rest])
            for i, chunked in zip(rest, whole, strict=True):
                spans = _cached_spans(rendered[i], chunked, len(prefix))
                out[i] = None if spans is None else _Encoded(chunked.ids(prefix, suffix), spans)
            # Where a token crosses an answer's edge: encode the segments one by one.
            for i in [i for i in rest if out[i] is None]:
                alone = [c.ids([], []) for c in encoder.encode_batch([s.text for s in rendered[i]])]
                out[i] = _by_segments(rendered[i], alone, prefix, suffix)
    except ChunkMismatchError as e:
        log.warning("the cached byte-level encoder cannot reproduce this tokenizer (%s); using the tokenizer", e)
        return None
    check = sorted({*range(min(_CHECK_FIRST, len(out))), *range(0, len(out), _CHECK_EVERY)})
    for i, want in zip(check, _encode_rust(backend, [rendered[i] for i in check], add_special, around), strict=True):
        if out[i] != want or encoder.decode(want.ids) != backend.decode(want.ids, skip_special_tokens=False):
            log.warning("record %d: the cached byte-level encoding differs from the tokenizer's; using it instead", i)
            return None
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
    encoder = ByteLevelEncoder.for_tokenizer(backend) if len(convs) >= _CACHED_MIN_RECORDS else None
    job = _Job(convs, template, tokenizer, backend, encoder, max_length, verify)
    with _no_gc():
        masked, stats = _tokenize(job, 0, len(convs))
        return [_sample(job, *m) for m in masked], stats


@dataclass
class _Job:
    convs: Sequence[Conversation]
    template: Template
    tokenizer: Any
    backend: Any
    encoder: ByteLevelEncoder | None
    max_length: int
    verify: bool


_Masked = tuple[int, list[int], list[tuple[int, int]]]
"""A kept record: its index, its ids, and the token ranges `[start, end)` that are trained."""


def _sample(job: _Job, i: int, ids: list[int], trained: list[tuple[int, int]]) -> TokenizedSample:
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in trained:
        labels[start:end] = ids[start:end]
    return TokenizedSample(ids, labels, job.convs[i].id)


def _tokenize(job: _Job, lo: int, hi: int) -> tuple[list[_Masked], TokenizeStats]:
    """Tokenize, mask and verify records `lo:hi` of the job."""
    convs, template, backend, max_length = job.convs, job.template, job.backend, job.max_length
    eos, bos = _special(job.tokenizer, "eos_token", DEFAULT_EOS), _special(job.tokenizer, "bos_token", DEFAULT_BOS)
    rendered = [template.render(convs[i], eos=eos, bos=bos) for i in range(lo, hi)]
    stats = TokenizeStats(total=len(rendered))
    around = _special_around(backend, template.add_special_tokens)
    encoder = job.encoder if around is not None else None
    add_special = template.add_special_tokens
    encoded = _encode_cached(encoder, backend, rendered, add_special, around) if encoder and around else None
    if encoded is None:
        encoder, encoded = None, _encode_rust(backend, rendered, add_special, around)
    else:
        stats.cached = len(encoded)
    stats.resegmented = sum(1 for enc in encoded if enc.resegmented)

    masked: list[_Masked] = []
    checks: list[tuple[int, str, list[int], bool]] = []
    for i, enc in enumerate(encoded, lo):
        ids = enc.ids
        n = min(len(ids), max_length)
        trained = [(start, min(end, n)) for start, end, _ in enc.spans if start < n]
        cut = n < len(ids)
        if cut:
            stats.truncated += 1
            ids = ids[:n]
        if not trained:
            stats.dropped["no trained token after truncation" if cut else "empty answer"] += 1
            continue
        masked.append((i, ids, trained))
        if job.verify:
            checks += [(i, core, ids[start:end], end > n) for start, end, core in enc.spans if start < n]
    stats.kept = len(masked)
    if checks:
        trained_ids = [c[2] for c in checks]
        decoded = list(map(encoder.decode, trained_ids)) if encoder else backend.decode_batch(trained_ids, False)
        for (i, want, _ids, truncated), text in zip(checks, decoded, strict=True):
            if truncated:  # a cut can split a multi-byte character, which decodes to U+FFFD
                ok = _norm(want).startswith(_norm(text).rstrip("\ufffd"))
            else:  # the byte-level decoder is exact; others differ in the spaces around special tokens
                ok = text.strip() == want if encoder else _norm(text) == _norm(want)
            if not ok:
                who = convs[i].id or f"record {i}"
                raise MaskError(
                    f"{who}: the trained tokens do not decode to the answer.\n"
                    f"  trained : {text!r}\n  expected: {want!r}"
                )
    return masked, stats


def tokenize_conversation(
    conv: Conversation, template: Template, tokenizer: Any, max_length: int
) -> TokenizedSample | None:
    """Tokenize and mask one conversation; None when truncation leaves no trained token."""
    samples, _ = tokenize_conversations([conv], template, tokenizer, max_length)
    return samples[0] if samples else None

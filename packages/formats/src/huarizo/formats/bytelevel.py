"""An exact, cached encoder for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen 2 style), used by masking.

A byte-level BPE tokenizer splits text into pre-tokens with a regex and encodes each one on its own, so the ids of
a text are the ids of its pieces, concatenated. For the pre-tokenizer regexes accepted here, no piece holds a space
followed by a non-space character except at its start, so a text can be cut before each such space into *chunks*
whose ids do not depend on their neighbours. Text is made of comparatively few distinct chunks (a word with its
punctuation), so a dict from chunk to ids replaces most of the tokenizer's work with one `str.split` and one dict
lookup per word. Chunks not seen before are encoded by the tokenizer itself, many in one call, and each is checked
to decode back to its text. Segments of many records are encoded at once (`encode_segments`): polars splits them and
finds each word's code, numpy gathers the ids, so the per-word work runs in compiled code, not in the interpreter.

`ByteLevelEncoder.for_tokenizer` returns None for a tokenizer it cannot reproduce (a normalizer, another
pre-tokenizer, BPE dropout, added tokens that strip spaces, ...); callers then use the tokenizer directly.
"""

from __future__ import annotations

import json
import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from itertools import accumulate, islice, pairwise, repeat
from operator import add, itemgetter
from typing import Any, TypeVar

import numpy as np
import polars as pl

# Pre-tokenizer regexes whose pieces never hold " X" (a space, then a non-space) past their first character:
# GPT-2's (the ByteLevel pre-tokenizer's own), and the Llama 3 and Qwen 2 style Split patterns.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
_CHUNK_LOCAL = {_GPT2, _LLAMA3, _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")}  # the last: Qwen 2 (one digit a piece)
# A chunk starts at each space followed by a non-space that does not begin an added token (added tokens are split
# off first, so a space before one ends the text in front of it). Cutting at fewer of these places is also exact.


def _byte_alphabet() -> dict[str, int]:
    """Printable character -> byte, the byte-level BPE alphabet (printable bytes stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return {chr(b) if b in keep else chr(next(shifted)): b for b in range(256)}


_FROM_ALPHABET = _byte_alphabet()
_SPACE = next(c for c, b in _FROM_ALPHABET.items() if b == ord(" "))  # how the vocabulary writes a space
TYPECODE = "i"
"""Ids are kept as C ints (`array.array(TYPECODE)`, or its bytes): compact, and nothing for the garbage collector."""
WIDTH = array(TYPECODE).itemsize
R = TypeVar("R")


@cache
def _python_spaces() -> str:
    """Every character Python's `str.isspace` (and so `re`'s `\\s`) takes for whitespace."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def _rust_class(chars: Iterable[str]) -> str:
    """A character class of the Rust `regex` crate (polars) holding exactly these characters."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(set(chars))) + "]"


Cut = tuple[bytes, str, str, bool]
"""A text cut into chunks: its ids (as `TYPECODE` bytes), its first and last chunk (less its space), and whether
it is a single chunk."""


class ChunkMismatchError(Exception):
    """A chunk's ids, from the tokenizer, do not decode back to the chunk."""


class _Ids(dict[str, bytes]):
    """key -> ids of `lead + key` (as `TYPECODE` bytes); a key not known yet is noted (and counted) for the next
    `ByteLevelEncoder._fill`."""

    def __init__(self, encoder: ByteLevelEncoder, lead: str) -> None:
        super().__init__()
        self.encoder, self.lead = encoder, lead
        self.pending: set[str] = set()

    def __missing__(self, key: str) -> bytes:
        self.pending.add(key)
        self.encoder.misses += 1
        return b""


class ByteLevelEncoder:
    """Encode texts exactly as a byte-level BPE tokenizer does (without its special-token post-processing)."""

    def __init__(self, backend: Any, vocab: dict[str, int], added: dict[str, int]) -> None:
        self._backend = backend
        self.misses = 0  # chunks looked up before they were known
        self._first, self._spaced = _Ids(self, ""), _Ids(self, " ")  # first chunks; the others, less their space
        # `str.split(" ")` finds the chunks unless a space is followed by whitespace (Python's, a superset of the
        # tokenizers') or by the first character of an added token; then `_chunk_start` finds them (leaving out the
        # spaces before any such character: a chunk may hold several, never one cut in the wrong place).
        starts = "".join(sorted({re.escape(token[0]) for token in added}))
        self._irregular = re.compile(rf" [\s{starts}]")
        self._chunk_start = re.compile(rf" (?=[^\s{starts}])")
        self._table = _PartTable(self, {token[0] for token in added})
        size = max([*vocab.values(), *added.values()], default=0) + 1
        self.space: int | None = vocab.get(_SPACE)
        """The id of the token that is a space alone, if the vocabulary has one."""
        self._bytes: list[bytes] = [b""] * size
        for token, i in vocab.items():
            self._bytes[i] = bytes(_FROM_ALPHABET[c] for c in token)
        for token, i in added.items():
            self._bytes[i] = token.encode()

    @classmethod
    def for_tokenizer(cls, backend: Any) -> ByteLevelEncoder | None:
        """An encoder for this `tokenizers.Tokenizer`, or None when it is not a byte-level BPE this can reproduce."""
        if backend.normalizer is not None or backend.pre_tokenizer is None or backend.decoder is None:
            return None
        model = backend.model
        if type(model).__name__ != "BPE" or model.dropout:
            return None
        if model.continuing_subword_prefix or model.end_of_word_suffix:
            return None
        if json.loads(backend.decoder.__getstate__()).get("type") != "ByteLevel":
            return None
        pre = json.loads(backend.pre_tokenizer.__getstate__())
        if pre.get("type") == "ByteLevel":
            pattern = _GPT2 if pre.get("use_regex") and not pre.get("add_prefix_space") else ""
        elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
            split, byte_level = pre["pretokenizers"]
            ok = split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
            ok = ok and byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex")
            ok = ok and not byte_level.get("add_prefix_space")
            pattern = split.get("pattern", {}).get("Regex", "") if ok else ""
        else:
            pattern = ""
        if pattern not in _CHUNK_LOCAL:
            return None
        added: dict[str, int] = {}
        for i, tok in backend.get_added_tokens_decoder().items():
            if tok.lstrip or tok.rstrip or tok.single_word or not tok.content or " " in tok.content:
                return None
            added[tok.content] = i
        vocab = backend.get_vocab(with_added_tokens=False)
        if any(c not in _FROM_ALPHABET for token in vocab for c in token):
            return None
        return cls(backend, vocab, added)

    def _split(self, text: str) -> list[str]:
        """The text cut before each space that starts a chunk: chunk i > 0 is " " + part i."""
        if self._irregular.search(text):
            return self._chunk_start.split(text)
        parts = text.split(" ")
        if len(parts) > 1 and not parts[-1]:  # a space at the end starts no chunk
            parts[-2] += " "
            parts.pop()
        return parts

    def _encode(self, text: str) -> Chunked:
        parts = self._split(text)
        lists = [self._first[parts[0]], *map(self._spaced.__getitem__, islice(parts, 1, None))]
        return Chunked(text, parts, lists, self)

    def _encode_segments(
        self, segments: list[str], cuts: list[Cut], at: int, prefix: bytes
    ) -> tuple[array[int], list[int]] | None:
        """`prefix` (ids as bytes) + the ids of the segments' concatenation, and the token index where each segment
        ends. `cuts[at:]`: the segments, each cut into chunks on its own (`_PartTable.cut`).

        Where two segments meet, the last chunk of one and the first of the next must encode together as they do
        apart. None when they do not (a token crosses the boundary), when whitespace meets whitespace there, or when
        a segment inside is a single chunk (it would join both neighbours)."""
        first, spaced = self._first, self._spaced
        pieces = [prefix]
        ends = []
        size = len(prefix)
        table, key = first, ""  # the dict and key of the chunk that ends the text so far
        for k in range(len(segments)):
            piece, head, last, alone = cuts[at + k]
            if k and (
                (alone and k + 1 < len(segments))
                or (segments[k - 1][-1:].isspace() and segments[k][:1].isspace())
                or table[key + head] != table[key] + first[head]
            ):
                return None
            table, key = (first, head) if alone else (spaced, last)
            pieces.append(piece)
            size += len(piece)
            ends.append(size // WIDTH)
        return array(TYPECODE, b"".join(pieces)), ends

    def encode_segments(self, records: list[list[str]], prefix: bytes) -> list[tuple[array[int], list[int]] | None]:
        """`_encode_segments` for each record (a list of segments), after `prefix` (ids as `TYPECODE` bytes). Raises
        `ChunkMismatchError` if the tokenizer's ids for a chunk do not decode back to it."""
        cuts = self._table.cut([segment for record in records for segment in record])
        at = [0, *accumulate(map(len, records))]
        return self._batch(len(records), lambda k: self._encode_segments(records[k], cuts, at[k], prefix))

    def encode_batch(self, texts: list[str]) -> list[Chunked]:
        """Encode whole texts, cut into chunks. Raises `ChunkMismatchError` as `encode_segments` does."""
        return self._batch(len(texts), lambda k: self._encode(texts[k]))

    def _batch(self, n: int, encode: Callable[[int], R]) -> list[R]:
        """Encode items 0..n-1; the chunks not seen before go to the tokenizer together, then the items that met them
        are encoded again, until none meets a new chunk (an item can get further once its first new chunks are
        known)."""
        out: list[Any] = [None] * n
        todo: Iterable[int] = range(n)
        while True:
            redo = []
            for k in todo:
                misses = self.misses
                out[k] = encode(k)
                if self.misses != misses:
                    redo.append(k)
            if not redo:
                return out
            self._fill()
            todo = redo

    def _fill(self) -> None:
        keys = [(table, key) for table in (self._first, self._spaced) for key in table.pending]
        texts = [table.lead + key for table, key in keys]
        # Only the ids are needed: the variant that skips offsets where this tokenizers version has it.
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        for (table, key), text, enc in zip(keys, texts, encode(texts, add_special_tokens=False), strict=True):
            ids = enc.ids
            if self.decode(ids) != text:
                raise ChunkMismatchError(f"{text!r} encodes to {ids}, which decode to something else")
            table[key] = array(TYPECODE, ids).tobytes()
        for table in (self._first, self._spaced):
            table.pending.clear()

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids as the byte-level decoder does."""
        pieces = itemgetter(*ids)(self._bytes) if len(ids) > 1 else [self._bytes[i] for i in ids]
        return b"".join(pieces).decode("utf-8", "replace")

    def byte_ends(self, ids: Sequence[int]) -> list[int]:
        """Where each token ends, in bytes from the start of the first."""
        return list(accumulate(map(len, map(self._bytes.__getitem__, ids))))


class Chunked:
    """A text cut into chunks and the ids of each chunk."""

    __slots__ = ("_enc", "_ends", "_parts", "_text", "lists")

    def __init__(self, text: str, parts: list[str], lists: list[bytes], encoder: ByteLevelEncoder) -> None:
        # `parts`: the text cut before each space that starts a chunk.
        self._text, self._parts, self.lists, self._enc = text, parts, lists, encoder
        self._ends: list[int] = []

    def ids(self, prefix: bytes = b"", suffix: bytes = b"") -> array[int]:
        """All ids, in order, between `prefix` and `suffix` (ids as `TYPECODE` bytes)."""
        return array(TYPECODE, b"".join([prefix, *self.lists, suffix]))

    def _chunk_at(self, char: int) -> tuple[int, int, str]:
        """Index, first character and text of the chunk holding character `char`."""
        if not self._ends:  # chunk i > 0 is one space longer than parts[i]
            self._ends = list(accumulate(map(add, map(len, self._parts), repeat(1))))
        i = bisect_right(self._ends, char + 1)
        start = self._ends[i - 1] - 1 if i else 0
        return i, start, self._text[start : self._ends[i] - 1]

    def token_at(self, char: int, *, last: bool) -> tuple[int, str]:
        """The index of the token holding character `char` (its last byte if `last`, else its first) and that
        token's text outside the character (after it if `last`, else before it)."""
        i, start, chunk = self._chunk_at(char)
        ends = self._enc.byte_ends(array(TYPECODE, self.lists[i]))
        at = len(chunk[: char - start + last].encode()) - last
        j = bisect_right(ends, at)
        raw = chunk.encode()
        outside = raw[at + 1 : ends[j]] if last else raw[ends[j - 1] if j else 0 : at]
        return sum(map(len, islice(self.lists, i))) // WIDTH + j, outside.decode("utf-8", "replace")


class _PartTable:
    """The chunk cache again, as arrays, to encode many texts at once.

    Polars splits the texts at spaces and finds each part's code (a join with the parts seen so far); per code, numpy
    keeps the ids of the part as a text's first chunk and as a later one (after its space), and gathers them for all
    the parts in one go. The encoder's dicts stay the source: a part met here for the first time is looked up there,
    which sends it to the tokenizer if it is new."""

    def __init__(self, encoder: ByteLevelEncoder, added_starts: set[str]) -> None:
        """`added_starts`: the first characters of the added tokens (a space before one starts no chunk)."""
        self._enc = encoder
        starts = _rust_class([*_python_spaces(), *added_starts])
        self._irregular, self._joins = f" (?:{starts}|$)", f"^(?:{starts}|$)"
        self._codes = pl.DataFrame(schema={"part": pl.String, "code": pl.Int64})
        # [0 first / 1 later chunk, code]: where the part's ids start in `_ids`, and how many; -1: not looked up yet.
        self._start = np.zeros((2, 0), np.int64)
        self._len = np.zeros((2, 0), np.int64)
        self._ids = np.zeros(0, np.dtype(TYPECODE))

    def cut(self, texts: list[str]) -> list[Cut]:
        """Each text cut into chunks as `ByteLevelEncoder._split` cuts it."""
        series = pl.Series("part", texts, dtype=pl.String)
        parts = series.str.split(" ")
        count = parts.list.len().to_numpy().astype(np.int64)
        starts = np.cumsum(count) - count  # each text's first part
        flat = parts.explode()
        # A part that is empty or starts with whitespace or an added token's first character starts no chunk: it
        # joins the one before it, with the space between (a text's first part always starts one). Only texts with
        # a space before such a character, or at their end, hold one.
        irregular = series.str.contains(self._irregular).to_numpy()
        if irregular.any():
            joins = np.zeros(len(flat), bool)
            joins[np.repeat(irregular, count)] = parts.filter(irregular).explode().str.contains(self._joins).to_numpy()
            joins[starts] = False
            flat = self._join(flat, joins)
            count = np.add.reduceat((~joins).astype(np.int64), starts)
            starts = np.cumsum(count) - count
        last = starts + count - 1
        code = self._code(flat)
        later = np.ones(len(flat), np.intp)
        later[starts] = 0
        length = self._len[later, code]
        if (length < 0).any():
            self._learn(flat, later, code, length < 0)
            length = self._len[later, code]
        # The ids of every part in order: part i is `_ids[start_i : start_i + length_i]`, one gather for all.
        ends = np.cumsum(length)
        start = self._start[later, code]
        blob = self._ids[np.repeat(start - ends + length, length) + np.arange(ends[-1] if len(ends) else 0)].tobytes()
        bounds = (ends[last] * WIDTH).tolist()
        ids = [blob[lo:hi] for lo, hi in pairwise([0, *bounds])]
        heads, lasts = flat.gather(starts).to_list(), flat.gather(last).to_list()
        return list(zip(ids, heads, lasts, (count == 1).tolist(), strict=True))

    @staticmethod
    def _join(flat: pl.Series, joins: np.ndarray[Any, np.dtype[np.bool_]]) -> pl.Series:
        """The parts, each one that `joins` marks joined to the one before it with a space."""
        chunk = np.cumsum(~joins) - 1  # the chunk each part ends up in
        rows = np.flatnonzero(joins)
        owners = np.flatnonzero(~joins)[chunk[rows]]  # the part that starts each one's chunk
        merged = dict(zip(owners.tolist(), flat.gather(owners).to_list(), strict=True))
        for owner, part in zip(owners.tolist(), flat.gather(rows).to_list(), strict=True):
            merged[owner] += " " + part
        return flat.filter(pl.Series(~joins)).scatter(chunk[list(merged)], list(merged.values()))

    def _code(self, flat: pl.Series) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Each part's code; parts not seen before get new ones."""
        code = flat.to_frame().join(self._codes, on="part", how="left", maintain_order="left")["code"]
        missing = code.is_null()
        if missing.any():
            unseen = flat.filter(missing)
            n = len(self._codes)
            new = unseen.unique(maintain_order=True)
            added = pl.DataFrame({"part": new, "code": np.arange(n, n + len(new), dtype=np.int64)})
            self._codes = pl.concat([self._codes, added], rechunk=True)
            unknown = np.full((2, len(new)), -1, np.int64)
            self._start = np.concatenate([self._start, unknown], axis=1)
            self._len = np.concatenate([self._len, unknown], axis=1)
            # Only the parts just added need looking up again, and only among themselves.
            found = unseen.to_frame().join(added, on="part", how="left", maintain_order="left")["code"]
            code = code.scatter(np.flatnonzero(missing.to_numpy()), found)
        return code.to_numpy()

    def _learn(self, flat: pl.Series, later: np.ndarray[Any, Any], code: np.ndarray[Any, Any], unknown: Any) -> None:
        """Look the parts whose ids are not in the arrays yet up in the encoder's dicts, and keep their ids here."""
        rows = np.flatnonzero(unknown)
        rows = rows[pl.Series(code[rows] * 2 + later[rows]).arg_unique().to_numpy()]  # each (part, first/later) once
        kinds, parts = later[rows].tolist(), flat.gather(rows).to_list()
        tables = (self._enc._first, self._enc._spaced)
        misses = self._enc.misses
        found = [tables[k][p] for k, p in zip(kinds, parts, strict=True)]
        if self._enc.misses != misses:
            self._enc._fill()
            found = [tables[k][p] for k, p in zip(kinds, parts, strict=True)]
        length = np.array([len(ids) // WIDTH for ids in found], np.int64)
        self._start[later[rows], code[rows]] = len(self._ids) + np.cumsum(length) - length
        self._len[later[rows], code[rows]] = length
        self._ids = np.concatenate([self._ids, np.frombuffer(b"".join(found), self._ids.dtype)])

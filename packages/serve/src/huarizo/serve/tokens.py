"""The exact bytes and the display string of each token id, for logprobs (OpenAI's `token`, `bytes`, `text_offset`).

A token can hold part of a UTF-8 character (byte-level BPE, SentencePiece byte fallback), so decoding it alone loses
bytes; its bytes are read from the vocabulary instead: byte-level tokens through the GPT-2 byte-to-character table,
`<0xNN>` byte-fallback tokens as that byte, `▁` as a space, added tokens (Gemma's `"\\n\\n"`, special tokens) as their
text. A token whose bytes are not valid UTF-8 on their own is shown as `bytes:\\xNN...`, as OpenAI does.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the others for chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _decoder_kinds(tokenizer: Any) -> set[str]:
    """The types of the tokenizer's decoder steps (`ByteLevel`, `ByteFallback`, `Metaspace`, `Replace`, ...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    steps = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    kinds = {str(step.get("type")) for step in steps}
    if any(s.get("type") == "Replace" and s.get("content") == " " for s in steps):
        kinds.add("Metaspace")  # Gemma and Llama: Replace("▁", " ")
    return kinds


class TokenText:
    """Bytes and display strings of a tokenizer's tokens (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.added = {int(i): (t.content, bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items()}
        kinds = _decoder_kinds(tokenizer)
        self._byte_level = _byte_level_table() if "ByteLevel" in kinds else None
        self._byte_fallback = "ByteFallback" in kinds
        self._metaspace = "Metaspace" in kinds
        self._known = bool(kinds & {"ByteLevel", "ByteFallback", "Metaspace"})
        self._bytes: dict[int, bytes] = {}
        self._strings: dict[int, str] = {}

    def is_special(self, token_id: int) -> bool:
        """Whether the token is special (skipped in decoded text: BOS, EOS, turn markers)."""
        return self.added.get(token_id, ("", False))[1]

    def token_bytes(self, token_id: int) -> bytes:
        """The token's bytes (a special token's: its text)."""
        got = self._bytes.get(token_id)
        if got is None:
            got = self._bytes[token_id] = self._read(token_id)
        return got

    def _read(self, token_id: int) -> bytes:
        if token_id in self.added:
            return self.added[token_id][0].encode()
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if not self._known or not isinstance(piece, str):
            return str(self.tokenizer.decode([token_id])).encode()
        if self._byte_level is not None and all(c in self._byte_level for c in piece):
            return bytes(self._byte_level[c] for c in piece)
        if self._byte_fallback and (m := _BYTE_FALLBACK.fullmatch(piece)):
            return bytes([int(m[1], 16)])
        return (piece.replace("▁", " ") if self._metaspace else piece).encode()

    def text_bytes(self, token_id: int) -> bytes:
        """The bytes the token adds to the decoded text (none for a special token)."""
        return b"" if self.is_special(token_id) else self.token_bytes(token_id)

    def string(self, token_id: int) -> str:
        """The token as OpenAI shows it: its text, or `bytes:\\xNN...` when its bytes are not valid UTF-8 alone."""
        got = self._strings.get(token_id)
        if got is None:
            raw = self.token_bytes(token_id)
            try:
                got = raw.decode()
            except UnicodeDecodeError:
                got = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._strings[token_id] = got
        return got

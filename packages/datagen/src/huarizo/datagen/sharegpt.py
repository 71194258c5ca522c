"""`huarizo clean-sharegpt`: turn scraped ShareGPT conversations into training data.

Steps, in order: roles normalised (user/chatgpt/bard/... to human/gpt), HTML turned into markdown (markdownify, with
code blocks restored as fenced blocks with their language), turns trimmed (leading gpt turns, a trailing human turn),
conversations that are empty, too short, have an empty turn or do not alternate dropped, exact duplicates dropped,
optionally a language filter (py3langid, extra `huarizo-datagen[lang]`), and conversations longer than the token
budget split into parts made of whole human+gpt pairs, with ids `<id>_<k>`. A single pair longer than the budget
becomes a part of its own: no turn is ever dropped by the split.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from huarizo.datagen.config import CleanConfig
from huarizo.formats import (
    HuarizoError,
    JsonlAppender,
    RawRecord,
    ShareGPTConversation,
    StageResult,
    iter_raw,
    write_records,
)

ROLES = {
    "human": "human",
    "user": "human",
    "gpt": "gpt",
    "chatgpt": "gpt",
    "assistant": "gpt",
    "bard": "gpt",
    "bing": "gpt",
    "model": "gpt",
    "system": "system",
}
_HTML = re.compile(r"<(?:p|div|pre|code|ol|ul|li|br|h[1-6]|table|tr|td|span|strong|em|b|i|a|blockquote)\b[^>]*>", re.I)
_PRE = re.compile(r"<pre[^>]*>(.*?)</pre>", re.S | re.I)
_CODE = re.compile(r"<code([^>]*)>(.*?)</code>", re.S | re.I)
_LANG = re.compile(r"language-([\w+#.-]+)")
_TAG = re.compile(r"<[^>]+>")


def html_to_markdown(text: str) -> str:
    """Markdown for a turn scraped as HTML; code blocks come back as fenced blocks. Plain text is returned as is."""
    if not _HTML.search(text):
        return text
    from markdownify import markdownify

    blocks: list[str] = []

    def stash(m: re.Match[str]) -> str:
        inner = m.group(1)
        code = _CODE.search(inner)
        lang = ""
        if code is not None:
            found = _LANG.search(code.group(1))
            lang = found.group(1) if found else ""
            inner = code.group(2)
        body = html.unescape(_TAG.sub("", inner)).strip("\n")
        blocks.append(f"\n\n```{lang}\n{body}\n```\n\n")
        return f"HZCODEBLOCK{len(blocks) - 1}X"

    text = _PRE.sub(stash, text)
    md = markdownify(text, heading_style="ATX", bullets="-")
    for k, block in enumerate(blocks):
        md = md.replace(f"HZCODEBLOCK{k}X", block)
    md = re.sub(r"\n{3,}", "\n\n", md)
    return md.strip()


@dataclass
class CleanResult:
    """Kept conversations (possibly split) and dropped ones with reasons."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    split: int = 0

    @property
    def counts(self) -> Counter[str]:
        """Drops per reason."""
        return Counter(r["reason"] for r in self.rejected)


def _normalise(raw: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    turns = raw.get("conversations")
    if not isinstance(turns, list) or not turns:
        return None, "empty"
    out = []
    for t in turns:
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            return None, "malformed"
        role = ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            return None, f"unknown-role:{t.get('from')}"
        out.append({"from": role, "value": html_to_markdown(t["value"]).strip()})
    system = [t for t in out[:1] if t["from"] == "system"]
    body = out[len(system) :]
    while body and body[0]["from"] != "human":
        body = body[1:]
    if body and body[-1]["from"] == "human":
        body = body[:-1]
    if not body:
        return None, "too-short"
    if any(not t["value"] for t in body):
        return None, "empty-turn"
    if any(t["from"] != ("human" if i % 2 == 0 else "gpt") for i, t in enumerate(body)):
        return None, "not-alternating"
    return system + body, ""


def split_conversation(
    conv_id: str, turns: list[dict[str, str]], lengths: list[int], max_length: int
) -> list[dict[str, Any]]:
    """Split into parts of whole human+gpt pairs within `max_length` tokens (`lengths` per turn); ids `<id>_<k>`."""
    system = turns[:1] if turns and turns[0]["from"] == "system" else []
    budget = max_length - (lengths[0] if system else 0)
    body, blens = turns[len(system) :], lengths[len(system) :]
    parts: list[list[dict[str, str]]] = []
    current: list[dict[str, str]] = []
    used = 0
    for i in range(0, len(body), 2):
        pair, n = body[i : i + 2], blens[i] + blens[i + 1]
        if current and used + n > budget:
            parts.append(current)
            current, used = [], 0
        current += pair
        used += n
    if current:
        parts.append(current)
    if len(parts) == 1:
        return [{"id": conv_id, "conversations": system + parts[0]}]
    return [{"id": f"{conv_id}_{k}", "conversations": system + p} for k, p in enumerate(parts)]


def _length_fn(tokenizer: str | None) -> Callable[[list[str]], list[int]]:
    if tokenizer is None:
        return lambda texts: [len(t.split()) for t in texts]
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise HuarizoError("--tokenizer needs transformers: pip install 'huarizo-datagen[tokenizers]'") from None
    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def _language_fn(lang: str | None) -> Callable[[str], str] | None:
    if lang is None:
        return None
    try:
        import py3langid
    except ImportError:
        raise HuarizoError(
            "--lang needs the language detector py3langid: pip install 'huarizo-datagen[lang]'"
        ) from None
    return lambda text: str(py3langid.classify(text)[0])


def clean_conversations(records: Iterable[dict[str, Any]], cfg: CleanConfig | None = None) -> CleanResult:
    """Clean raw ShareGPT dicts (see the module docstring for the steps)."""
    cfg = cfg or CleanConfig()
    lengths = _length_fn(cfg.tokenizer)
    detect = _language_fn(cfg.lang)
    seen: set[str] = set()
    result = CleanResult()
    for k, raw in enumerate(records):
        conv_id = str(raw.get("id", k))
        turns, reason = _normalise(raw)
        if turns is not None and sum(t["from"] == "gpt" for t in turns) < cfg.min_pairs:
            turns, reason = None, "too-short"
        if turns is not None:
            key = hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()
            if key in seen:
                turns, reason = None, "duplicate"
            seen.add(key)
        if turns is not None and detect is not None:
            text = "\n".join(t["value"] for t in turns if t["from"] == "human")[:2000]
            found = detect(text)
            if found != cfg.lang:
                turns, reason = None, f"language:{found}"
        if turns is None:
            result.rejected.append({"id": conv_id, "reason": reason})
            continue
        parts = split_conversation(conv_id, turns, lengths([t["value"] for t in turns]), cfg.max_length)
        result.split += len(parts) > 1
        for part in parts:
            ShareGPTConversation.model_validate(part)
        result.kept += parts
    return result


class CleanFileResult(StageResult):
    """What `clean_file` did. `counts`: `conversations` (read), `kept` (conversations kept), `parts` (written,
    after splitting), `split`, `rejected`; `reasons`: dropped conversations per reason."""

    kept: int = 0
    parts: int = 0
    split: int = 0
    rejected: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="dropped conversations per reason")


def clean_file(src: str | Path, dst: str | Path, cfg: CleanConfig | None = None) -> CleanFileResult:
    """Clean a ShareGPT JSON/JSONL file into `dst`; dropped ids and reasons go to `DST.rejects.jsonl`."""
    start = time.monotonic()
    raws = []
    for item in iter_raw(src):
        if not isinstance(item, RawRecord):
            raise item
        if not isinstance(item.data, dict):
            raise HuarizoError(f"{src}: {item.where}: expected a JSON object")
        raws.append(item.data)
    result = clean_conversations(raws, cfg)
    write_records(dst, result.kept)
    rej = Path(f"{dst}.rejects.jsonl")
    rej.unlink(missing_ok=True)
    with JsonlAppender(rej) as app:
        app.append(result.rejected)
    kept = len(raws) - len(result.rejected)
    counts = {"conversations": len(raws), "kept": kept, "parts": len(result.kept), "split": result.split,
              "rejected": len(result.rejected)}  # fmt: skip
    return CleanFileResult(
        outputs={"conversations": Path(dst), "rejects": rej},
        counts=counts,
        prompt_tokens=0,
        completion_tokens=0,
        cost=0.0,
        seconds=time.monotonic() - start,
        kept=kept,
        parts=len(result.kept),
        split=result.split,
        rejected=len(result.rejected),
        reasons=dict(result.counts.most_common()),
    )

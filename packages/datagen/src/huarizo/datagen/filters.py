"""Filters for generated instruction data, shared by `huarizo filter` and the generation pipelines.

Instruction checks (per task): `keywords` (words a text model cannot act on), `length` (instruction words out of
bounds), `start` (instruction starting with punctuation, or with a non-ASCII character under the default tokenizer),
`rouge` (ROUGE-L F1 above the threshold against the pool or an earlier kept instruction; exact, see `rouge.py`).
Instance checks (per record): `empty-output`, `duplicate` (same instruction, input and output as an earlier record),
`conflict` (same instruction and input with different outputs: every such record is dropped).
The tabular checks are polars expressions; the ROUGE-L check then runs in input order on what is left.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import polars as pl
from pydantic import Field

from huarizo.datagen.config import FilterConfig
from huarizo.datagen.rouge import NoveltyIndex
from huarizo.formats import (
    AlpacaRecord,
    JsonlAppender,
    RawRecord,
    RecordError,
    StageResult,
    iter_raw,
    parse_record,
    write_records,
)


def _instruction_reasons(df: pl.DataFrame, cfg: FilterConfig) -> pl.Expr:
    ins = pl.col("instruction").str.strip_chars()
    words = ins.str.count_matches(r"\S+")
    rules: list[tuple[str, pl.Expr]] = []
    if cfg.enabled("length"):
        rules.append(("length", (words < cfg.min_words) | (words > cfg.max_words)))
    if cfg.enabled("keywords") and cfg.blacklist:
        pattern = r"(?i)\b(?:" + "|".join(re.escape(w) for w in cfg.blacklist) + r")\b"
        rules.append(("keywords", ins.str.contains(pattern)))
    if cfg.enabled("start"):
        first = r"^[^\p{L}\p{N}]" if cfg.tokenizer == "cjk" else r"^(?:[^A-Za-z0-9]|[^\x00-\x7F])"
        rules.append(("start", ins.str.contains(first)))
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for name, cond in reversed(rules):
        expr = pl.when(cond).then(pl.lit(name)).otherwise(expr)
    return expr


def tabular_reasons(
    records: Sequence[dict[str, Any]], cfg: FilterConfig, *, instance_checks: bool = True
) -> list[str | None]:
    """The first failing non-ROUGE check of each record (None: passes), computed with polars."""
    if not records:
        return []
    df = pl.DataFrame(
        {
            "instruction": [str(r.get("instruction", "")) for r in records],
            "input": [str(r.get("input", "") or "") for r in records],
            "output": [str(r.get("output", "") or "") for r in records],
        }
    )
    reason = _instruction_reasons(df, cfg)
    if instance_checks:
        key = ["instruction", "input"]
        if cfg.enabled("conflict"):
            conflicting = pl.col("output").n_unique().over(key) > 1
            reason = pl.when(reason.is_null() & conflicting).then(pl.lit("conflict")).otherwise(reason)
        if cfg.enabled("duplicate"):
            dup = ~pl.struct("instruction", "input", "output").is_first_distinct()
            reason = pl.when(reason.is_null() & dup).then(pl.lit("duplicate")).otherwise(reason)
        if cfg.enabled("empty-output"):
            empty = pl.col("output").str.strip_chars() == ""
            reason = pl.when(empty).then(pl.lit("empty-output")).otherwise(reason)
    return df.with_columns(reason.alias("reason"))["reason"].to_list()


@dataclass
class Rejected:
    """A dropped record and why."""

    record: dict[str, Any]
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record with `reason` and `detail` keys added (a rejects-file line)."""
        return {**self.record, "reason": self.reason, "detail": self.detail}


@dataclass
class FilterResult:
    """Kept records, rejected records with reasons, and counts per reason."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        """Rejections per reason."""
        return Counter(r.reason for r in self.rejected)


class RecordFilter:
    """Stateful filtering: the ROUGE-L pool keeps growing with every kept instruction, across calls."""

    def __init__(self, cfg: FilterConfig | None = None, pool: Iterable[str] = ()) -> None:
        self.cfg = cfg or FilterConfig()
        self.index = NoveltyIndex(self.cfg.rouge_threshold, self.cfg.tokenizer)
        self._kept_instructions: set[str] = set()
        self.added: list[str] = []  # instructions that joined the pool through this filter, in order
        for text in pool:
            self.index.add(text)

    def add_to_pool(self, instruction: str) -> None:
        """Add an instruction kept elsewhere (e.g. when resuming a run)."""
        if instruction not in self._kept_instructions:
            self._kept_instructions.add(instruction)
            self.index.add(instruction)
            self.added.append(instruction)

    def _rouge(self, instruction: str) -> Rejected | None:
        if not self.cfg.enabled("rouge") or instruction in self._kept_instructions:
            return None
        match = self.index.check(instruction)
        if match is None:
            self.add_to_pool(instruction)
            return None
        return Rejected({}, "rouge", f"ROUGE-L {match.score:.3f} vs {match.text!r}")

    def filter_instructions(self, instructions: Sequence[str]) -> list[Rejected | None]:
        """Instruction checks only, in order; kept instructions join the pool. None means kept. An instruction this
        filter kept before is a `duplicate` (or, with that check off, a ROUGE-L match of 1)."""
        recs = [{"instruction": t} for t in instructions]
        reasons = tabular_reasons(recs, self.cfg, instance_checks=False)
        out: list[Rejected | None] = []
        for rec, reason in zip(recs, reasons, strict=True):
            repeat = reason is None and rec["instruction"] in self._kept_instructions
            if repeat and self.cfg.enabled("duplicate"):
                reason = "duplicate"
            elif repeat and self.cfg.enabled("rouge"):
                out.append(Rejected(rec, "rouge", f"ROUGE-L 1.000 vs {rec['instruction']!r}"))
                continue
            if reason is not None:
                out.append(Rejected(rec, reason))
                continue
            rej = self._rouge(rec["instruction"])
            if rej is not None:
                rej.record = rec
            out.append(rej)
        return out

    def filter(self, records: Sequence[dict[str, Any]]) -> FilterResult:
        """All enabled checks on Alpaca-like records, in input order.

        Records repeating an instruction that was already kept are instances of the same task and are not compared
        by ROUGE-L with it (the other checks still apply).
        """
        result = FilterResult()
        for rec, reason in zip(records, tabular_reasons(records, self.cfg), strict=True):
            rej = Rejected(rec, reason) if reason is not None else self._rouge(str(rec["instruction"]))
            if rej is None:
                result.kept.append(rec)
            else:
                rej.record = rec
                result.rejected.append(rej)
        return result


def read_instructions(paths: Iterable[str | Path]) -> list[str]:
    """The `instruction` of every record in the given files (seed tasks, Alpaca, instruction-only...), in order."""
    return [r.data["instruction"] for path in paths for r in _read_raw(path, "instruction")]


def _read_raw(path: str | Path, required: str) -> list[RawRecord]:
    """The records of a file as JSON objects, each with a non-empty string `required` field; errors name the
    file, the line and the field."""
    out = []
    for item in iter_raw(path):
        if isinstance(item, RecordError):
            raise item
        if not isinstance(item.data, dict):
            raise RecordError(item.file, item.where, None, f"expected a JSON object, got {type(item.data).__name__}")
        value = item.data.get(required)
        if not isinstance(value, str) or not value.strip():
            problem = "missing required field" if value is None else "empty" if isinstance(value, str) else "not text"
            raise RecordError(item.file, item.where, required, problem)
        out.append(item)
    return out


class FilterFileResult(StageResult):
    """What `filter_file` did. `counts`: `records` (read), `kept`, `rejected`; `reasons`: rejected per reason."""

    kept: int = 0
    rejected: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="rejected records per reason")
    instructions_only: bool = Field(False, description="the input had no outputs: only instruction checks ran")


def filter_file(
    src: str | Path,
    dst: str | Path,
    *,
    pool: Sequence[str | Path] = (),
    cfg: FilterConfig | None = None,
    rejects: str | Path | None = None,
) -> FilterFileResult:
    """Filter a file of Alpaca records, or of instructions alone (records with an `instruction` and no `output`,
    as Self-Instruct filters them before any instance exists), into `dst`. Rejected records, with `reason` and
    `detail`, go to `rejects` (default `DST.rejects.jsonl`). Instruction-only records are written back as they
    were read, other fields included; only the instruction checks (and exact duplicates) apply to them."""
    start = time.monotonic()
    raws = _read_raw(src, "instruction")
    instructions_only = bool(raws) and not any("output" in r.data for r in raws)
    filt = RecordFilter(cfg, read_instructions(pool))
    if instructions_only:
        records = [r.data for r in raws]
        result = FilterResult()
        for rec, rej in zip(records, filt.filter_instructions([r["instruction"] for r in records]), strict=True):
            if rej is None:
                result.kept.append(rec)
            else:
                result.rejected.append(Rejected(rec, rej.reason, rej.detail))
    else:
        result = filt.filter([cast(AlpacaRecord, parse_record(r, "alpaca")).to_json() for r in raws])
    write_records(dst, result.kept)
    rej_path = Path(rejects) if rejects else Path(f"{dst}.rejects.jsonl")
    rej_path.unlink(missing_ok=True)
    with JsonlAppender(rej_path) as app:
        app.append(r.to_json() for r in result.rejected)
    kept, rejected = len(result.kept), len(result.rejected)
    return FilterFileResult(
        outputs={"records": Path(dst), "rejects": rej_path},
        counts={"records": len(raws), "kept": kept, "rejected": rejected},
        prompt_tokens=0,
        completion_tokens=0,
        cost=0.0,
        seconds=time.monotonic() - start,
        kept=kept,
        rejected=rejected,
        reasons=dict(result.counts.most_common()),
        instructions_only=instructions_only,
    )


def summary_table(result: FilterFileResult, title: str = "filter") -> Any:
    """A rich table: kept and rejected counts per reason."""
    from rich.table import Table

    total = result.kept + result.rejected
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")
    for name, n in [("kept", result.kept), *result.reasons.items()]:
        table.add_row(name if name == "kept" else f"rejected: {name}", str(n), f"{n / max(total, 1):.1%}")
    table.add_row("total", str(total), "", style="bold")
    return table

"""`huarizo judge score FILE... --out DIR`: existing judgments in, the `summary.json` and `report.md` of `grade`
out, with no judge asked.

Each kind of file is a `Reader` in `READERS`, recognised from its first record's keys; adding a kind of input (human
votes, another leaderboard's files) is one more `Reader`:

- AlpacaEval annotations (`instruction, output_1, generator_1, output_2, generator_2, preference`): `preference`
  1 (the baseline, `generator_1`, wins), 2 (the model wins), 1.5 or 0 (a draw) or any float between 1 and 2
  (weighted annotators), scored as AlpacaEval scores it: the win rate is the mean of `preference - 1`, its standard
  error the sample standard error of that mean, and records without a preference are left out.
- FastChat MT-bench judgments: pairwise (`model_1, model_2, g1_winner, g2_winner, turn`; a verdict that changes
  with the order is a tie, as FastChat's `show_result` counts it; `error` rows are errors) and single
  (`model, score, turn`; a score of -1 is an error).
- Huarizo's own `judgments.jsonl`, as `grade` writes it.
- People's votes from the arena of `huarizo serve` (`votes.jsonl`, `huarizo.judge.votes`): each vote is a comparison
  read from a person (`vote`), one verdict in the order the person saw (so the first-position preference is the
  people's own); a tie or both bad counts half.

With `labels`, the judgments are audited against them as `grade --labels` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError, RawRecord, RecordError, iter_raw, load_questions, text_key
from huarizo.judge.config import ScoreConfig
from huarizo.judge.judgments import Judgment, flip, settle
from huarizo.judge.labels import load_labels
from huarizo.judge.report import write_run
from huarizo.judge.results import GradeResult
from huarizo.judge.summary import SummaryOptions, read_difficulty, summarize
from huarizo.judge.votes import is_vote, read_vote


@dataclass(frozen=True)
class Reader:
    """A kind of judgment file: whether a record is of this kind, and the judgment it holds (and the judge's name,
    when the record says it). `read` raises KeyError, TypeError or ValueError on a record that does not fit."""

    name: str
    detect: Callable[[dict[str, Any]], bool]
    read: Callable[[dict[str, Any], int], tuple[Judgment, str | None]]


def _alpaca_eval(d: dict[str, Any], position: int) -> tuple[Judgment, str | None]:
    pref = d["preference"]
    j = Judgment(
        "pairwise",
        text_key(str(d["instruction"])),
        str(d.get("dataset") or "general"),
        0,
        model_a=str(d["generator_2"]),
        model_b=str(d["generator_1"]),
        read=["annotation"],
        len_a=len(str(d.get("output_2") or "")),
        len_b=len(str(d.get("output_1") or "")),
        index=position,
    )
    p = None if pref is None or pref == "" else float(pref)
    if p is None or math.isnan(p):
        j.read, j.error = [None], "no preference"
    elif p == 0 or 1 <= p <= 2:
        j.preference = 0.5 if p == 0 else p - 1
        j.winner = j.model_a if j.preference > 0.5 else j.model_b if j.preference < 0.5 else "tie"
    else:
        raise ValueError(f"preference {pref!r} is not 1, 2, 1.5, 0 or between 1 and 2")
    return j, d.get("annotator")


_G1 = {"model_1": ("A", 1.0), "model_2": ("B", 0.0), "tie": ("C", 0.5)}
_G2 = {"model_1": ("B", 1.0), "model_2": ("A", 0.0), "tie": ("C", 0.5)}  # game 2 shows model_2 first


def _fastchat_pair(d: dict[str, Any], position: int) -> tuple[Judgment, str | None]:
    g1, g2 = str(d["g1_winner"]), str(d["g2_winner"])
    j = Judgment(
        "pairwise",
        str(d["question_id"]),
        "general",
        int(d.get("turn", 1)) - 1,
        model_a=str(d["model_1"]),
        model_b=str(d["model_2"]),
        replies=[str(d.get("g1_judgment", "")), str(d.get("g2_judgment", ""))],
        attempts=2,
    )
    if "error" in (g1, g2):
        j.read, j.error = [None, None], "the judge gave no verdict (FastChat: error)"
        return j, _judge_name(d)
    (v1, p1), (v2, p2) = _G1[g1], _G2[g2]
    j.verdicts, j.order_preferences, j.read = [v1, v2], [p1, p2], ["text", "text"]
    settle(j)
    return j, _judge_name(d)


def _fastchat_single(d: dict[str, Any], position: int) -> tuple[Judgment, str | None]:
    score = float(d["score"])
    j = Judgment(
        "single",
        str(d["question_id"]),
        "general",
        int(d.get("turn", 1)) - 1,
        model=str(d["model"]),
        replies=[str(d.get("judgment", ""))],
        attempts=1,
    )
    if score == -1:
        j.read, j.error = [None], "the judge gave no rating (FastChat: -1)"
    else:
        j.score, j.read = score, ["text"]
    return j, _judge_name(d)


PEOPLE = "people (arena votes)"
"""The judge's name in the report of scored votes."""


def _arena_vote(d: dict[str, Any], position: int) -> tuple[Judgment, str | None]:
    v = read_vote(d)
    preference = 1.0 if v.winner == v.models[0] else 0.0 if v.winner == v.models[1] else 0.5
    j = Judgment(
        "pairwise",
        v.item,
        v.category,
        0,
        model_a=v.models[0],
        model_b=v.models[1],
        verdicts=[{"A": "A", "B": "B"}.get(v.vote, "C")],
        order_preferences=[preference],
        preference=preference,
        winner=v.winner,
        read=["vote"],
        index=position,
    )
    return j, PEOPLE


def _judge_name(d: dict[str, Any]) -> str | None:
    judge = d.get("judge")
    return str(judge[0]) if isinstance(judge, list) and judge else None


READERS: list[Reader] = [
    Reader("AlpacaEval annotations", lambda d: "generator_1" in d and "preference" in d, _alpaca_eval),
    Reader("FastChat pairwise judgments", lambda d: "g1_winner" in d, _fastchat_pair),
    Reader("FastChat single judgments", lambda d: "model" in d and "score" in d and "judgment" in d, _fastchat_single),
    Reader(
        "Huarizo judgments", lambda d: "mode" in d and "question_id" in d, lambda d, i: (Judgment.from_record(d), None)
    ),
    Reader("arena votes", is_vote, _arena_vote),
]
"""The kinds of judgment files `score` reads, tried in order on a file's first record."""


def _records(path: str) -> list[RawRecord]:
    out = []
    for item in iter_raw(path):
        if isinstance(item, RecordError):
            raise item
        if not isinstance(item.data, dict):
            raise RecordError(item.file, item.where, None, "expected a JSON object")
        out.append(item)
    if not out:
        raise HuarizoError(f"{path}: no records")
    return out


def read_file(path: str) -> tuple[Reader, list[Judgment], set[str]]:
    """One judgment file: its kind, its judgments and the judges named in it. A record that does not fit its
    file's kind is an error naming the file, the record and the field."""
    rows = _records(path)
    reader = next((r for r in READERS if r.detect(rows[0].data)), None)
    if reader is None:
        keys = ", ".join(sorted(rows[0].data))
        kinds = "; ".join(r.name for r in READERS)
        raise RecordError(path, rows[0].where, None, f"unknown judgment layout (keys {keys}); known: {kinds}")
    judgments, judges = [], set()
    for position, raw in enumerate(rows):
        try:
            j, judge = reader.read(raw.data, position)
        except KeyError as exc:
            raise RecordError(raw.file, raw.where, str(exc.args[0]), f"missing ({reader.name})") from None
        except (TypeError, ValueError) as exc:
            raise RecordError(raw.file, raw.where, None, f"{exc} ({reader.name})") from None
        judgments.append(j)
        judges.update([judge] if judge else [])
    return reader, judgments, judges


def _orient(js: list[Judgment], baseline: str | None) -> tuple[list[Judgment], str | None]:
    """Put the baseline second in every comparison; without one given, the one model every comparison has second
    (AlpacaEval's `generator_1`, FastChat's baseline mode) is the baseline."""
    pairs = [j for j in js if j.mode == "pairwise"]
    if baseline is None:
        seconds = {j.model_b for j in pairs}
        only = seconds.pop() if len(seconds) == 1 else None
        baseline = only if only and all(j.model_a != only for j in pairs) else None
    return [flip(j) if j.mode == "pairwise" and j.model_a == baseline else j for j in js], baseline


def _categories(js: list[Judgment], questions: str | None) -> None:
    if questions is None:
        return
    cats = {q.question_id: q.category for q in load_questions(questions).questions}
    for j in js:
        j.category = cats.get(j.question_id, j.category)


def score(cfg: ScoreConfig) -> GradeResult:
    """Score existing judgments; write `summary.json`, `judgments.jsonl`, `report.md` (+ plots) and `config.yaml`
    into `cfg.out`, as `grade` does."""
    start = time.monotonic()
    js: list[Judgment] = []
    judges: set[str] = set()
    sources = {}
    for path in cfg.files:
        reader, more, named = read_file(path)
        js += more
        judges |= named
        sources[path] = {"kind": reader.name, "records": len(more)}
    modes = {j.mode for j in js}
    if len(modes) > 1:
        raise HuarizoError("these files mix single ratings and pairwise comparisons: score them separately")
    js, baseline = _orient(js, cfg.baseline)
    _categories(js, cfg.questions)
    qs = load_questions(cfg.questions) if cfg.questions else None
    labels = [lab for path in cfg.labels for lab in load_labels(path, qs)]
    judge = ", ".join(sorted(judges)) or "existing judgments"
    opts = SummaryOptions(
        modes.pop(),
        judge,
        cfg.questions,
        baseline,
        cfg.bootstrap,
        cfg.seed,
        read_difficulty(cfg.instruction_difficulty),
    )
    summary = {**summarize(js, opts, labels), "sources": sources}
    if not summary["n"]:
        raise HuarizoError(f"nothing to score: none of the {len(js)} judgments in {', '.join(cfg.files)} has a verdict")
    out = write_run(Path(cfg.out), summary, js, cfg, plots=cfg.plots)
    return GradeResult.build(out, summary, js, None, time.monotonic() - start)

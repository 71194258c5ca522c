"""Reference metrics with intervals: ROUGE-L and exact match against the questions' reference answers (the package's
`evaluate` modules, one score per question; extra `huarizo-judge[evaluate]`) and the stop rate (turns the model
ended itself, at its end of turn: not at `max_tokens`, nor cut by a stop string such as a template's section header
a base model writes again), each a mean over questions with a percentile bootstrap interval and a standard error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huarizo.formats import Answer, Question, load_answers, load_questions
from huarizo.judge.answer import ended_by_itself
from huarizo.judge.stats import mean_estimate


def _metric(name: str) -> Any:
    import evaluate

    from huarizo.judge.metrics import metric_path

    return evaluate.load(metric_path(name))


@dataclass
class _Scores:
    """One model's per-question values."""

    rouge_l: list[float] = field(default_factory=list)
    exact_match: list[float] = field(default_factory=list)
    stop_rate: list[float] = field(default_factory=list)


class _Scorer:
    """Scores one answer against its question's reference with the `rouge_l` and `exact_match` modules."""

    def __init__(self) -> None:
        self.rouge, self.exact = _metric("rouge_l"), _metric("exact_match")

    def row(self, model: str, q: Question, ans: Answer, ended: list[bool], scores: _Scores) -> dict[str, Any]:
        """The question's row of `scores.jsonl`; its values are added to `scores`."""
        row: dict[str, Any] = {"model": model, "question_id": q.question_id, "stopped": bool(ended) and all(ended)}
        scores.stop_rate += [float(e) for e in ended]
        if q.reference:
            pred, ref = ans.turns[-1], q.reference[min(len(ans.turns), len(q.reference)) - 1]
            row["rouge_l"] = self.rouge.compute(predictions=[pred], references=[ref])["rougeL"]
            row["exact_match"] = self.exact.compute(predictions=[pred], references=[ref])["exact_match"]
            scores.rouge_l.append(row["rouge_l"])
            scores.exact_match.append(row["exact_match"])
        return row


def reference_metrics(
    questions_path: str | os.PathLike[str],
    answer_files: Mapping[str, str | os.PathLike[str]],
    *,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per model (name -> answer file written by `answer()`): ROUGE-L and exact match (questions with a reference)
    and the stop rate (every answered turn), each `{mean, ci, standard_error, n}`; and the per-question rows."""
    qs = load_questions(questions_path)
    by_id = qs.by_id()
    scorer = _Scorer()
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for model, path in answer_files.items():
        answers = next(iter(load_answers(path, qs).values()), {})
        endings = turn_endings(path)
        scores = _Scores()
        rows += [scorer.row(model, by_id[qid], ans, endings.get(qid, []), scores) for qid, ans in answers.items()]
        summary[model] = {
            "answers": len(answers),
            **{
                name: mean_estimate(values, bootstrap=bootstrap, level=level, seed=seed)
                for name, values in vars(scores).items()
            },
        }
    return summary, rows


def turn_endings(path: str | os.PathLike[str]) -> dict[str, list[bool]]:
    """Per question of an answer file written by `answer()`, whether each turn ended by itself (from the
    `finish_reasons` and `stop_reasons` it records)."""
    out: dict[str, list[bool]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        choice = record["choices"][0]
        finish, stop = choice.get("finish_reasons") or [], choice.get("stop_reasons") or []
        why = [*stop, *[None] * (len(finish) - len(stop))]
        out[str(record["question_id"])] = [ended_by_itself(f, s) for f, s in zip(finish, why, strict=True)]
    return out

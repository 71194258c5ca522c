"""Reference metrics with intervals: ROUGE-L and exact match (the judge's `evaluate` modules, one score per
question) and the stop rate (turns the model ended itself, at its end of turn: not at `max_tokens`, nor cut by a
stop string such as a template's section header a base model writes again), each a mean over questions with a
percentile bootstrap interval and a standard error.

huarizo-judge's metric modules return only the mean; this is the smallest version that gives intervals. It belongs
in huarizo-judge; until it moves there it lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from huarizo.formats import Question, load_answers, load_questions
from huarizo.judge.stats import bootstrap_ci


def estimate(values: Sequence[float], *, bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean, bootstrap interval, standard error and n of per-question values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"mean": None, "ci": None, "standard_error": None, "n": 0}
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    return {
        "mean": float(x.mean()),
        "ci": bootstrap_ci(list(x), n=bootstrap, seed=seed, level=level),
        "standard_error": se,
        "n": int(x.size),
    }


def _metric(name: str) -> Any:
    import evaluate

    from huarizo.judge.metrics import metric_path

    return evaluate.load(metric_path(name))


def score_answers(
    questions_path: str | Path,
    answer_files: dict[str, Path],
    *,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per model: ROUGE-L, exact match (questions with a reference) and stop rate (every answered turn); and the
    per-question scores."""
    qs = load_questions(questions_path)
    by_id: dict[str, Question] = qs.by_id()
    rouge, exact = _metric("rouge_l"), _metric("exact_match")
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for model, path in answer_files.items():
        answers = next(iter(load_answers(path, qs).values()), {})
        endings = _endings(path)
        rl: list[float] = []
        em: list[float] = []
        stops: list[float] = []
        for qid, ans in answers.items():
            q = by_id[qid]
            row: dict[str, Any] = {"model": model, "question_id": qid}
            ended = endings.get(qid, [])
            stops += [float(e) for e in ended]
            row["stopped"] = bool(ended) and all(ended)
            if q.reference:
                pred, ref = ans.turns[-1], q.reference[min(len(ans.turns), len(q.reference)) - 1]
                row["rouge_l"] = rouge.compute(predictions=[pred], references=[ref])["rougeL"]
                row["exact_match"] = exact.compute(predictions=[pred], references=[ref])["exact_match"]
                rl.append(row["rouge_l"])
                em.append(row["exact_match"])
            rows.append(row)
        summary[model] = {
            "answers": len(answers),
            **{
                name: estimate(values, bootstrap=bootstrap, level=level, seed=seed)
                for name, values in (("rouge_l", rl), ("exact_match", em), ("stop_rate", stops))
            },
        }
    return summary, rows


def _endings(path: Path) -> dict[str, list[bool]]:
    """Per question, whether each turn ended by itself (from the `finish_reasons` and `stop_reasons` that
    `huarizo.judge.answer` records)."""
    import json

    from huarizo.judge import ended_by_itself

    out: dict[str, list[bool]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            choice = json.loads(line)["choices"][0]
            finish, stop = choice.get("finish_reasons") or [], choice.get("stop_reasons") or []
            why = [*stop, *[None] * (len(finish) - len(stop))]
            out[str(json.loads(line)["question_id"])] = [
                ended_by_itself(f, s) for f, s in zip(finish, why, strict=True)
            ]
    return out

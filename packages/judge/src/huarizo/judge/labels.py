"""Reference labels for the judge audit: human or strong-judge preferences to measure a judge's agreement against.

Three layouts are read (detected from keys):

- FastChat's legacy reviews (`review/*.jsonl`): `question_id, answer1_id, answer2_id, text` where `text` starts with
  the two scores "s1 s2" (also in `score`); the answer ids name the models through the answer files being graded.
- AlpacaEval annotations: `instruction, generator_1, generator_2, preference` (1 or 2, 1.5 or 0 for a tie).
- People's votes from the arena of `huarizo serve` (`votes.jsonl`: `voter, item, models, shown, vote`; both bad is a
  tie), one label per vote: several people may label the same comparison.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from huarizo.formats import Answer, HuarizoError, QuestionSet, RawRecord, RecordError, iter_raw, text_key
from huarizo.judge.votes import is_vote, read_vote

_SCORES = re.compile(r"^\s*(\d+(?:\.\d+)?)[\s,/]+(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Label:
    """A labelled comparison: `winner` is `model_1`, `model_2` or `tie`; `voter` names the person (arena votes)."""

    question_id: str
    model_1: str
    model_2: str
    winner: str
    voter: str | None = None


def _review_scores(d: dict[str, Any]) -> tuple[float, float] | None:
    """The review's two scores: its `score` pair, else the "s1 s2" its text starts with (some reviews, e.g. of
    math questions, solve the problem first and put the scores on the last line; `score` has them)."""
    score = d.get("score")
    if isinstance(score, list) and len(score) == 2 and all(isinstance(x, int | float) for x in score):
        return float(score[0]), float(score[1])
    match = _SCORES.match(str(d.get("text", "")))
    return (float(match.group(1)), float(match.group(2))) if match else None


def _winner(s1: float, s2: float, m1: str, m2: str) -> str:
    return m1 if s1 > s2 else m2 if s2 > s1 else "tie"


def load_labels(
    path: str | os.PathLike[str],
    questions: QuestionSet | None,
    answers: dict[str, dict[str, Answer]] | None = None,
) -> list[Label]:
    """Read a labels file; comparisons whose models or questions are not being graded are skipped. Without
    `questions` (scoring existing judgments) every question is kept (an AlpacaEval instruction's id is its text key);
    without `answers`, every model (FastChat reviews, which name answers by id, need them)."""
    by_answer_id = {a.answer_id: a.model_id for per in (answers or {}).values() for a in per.values() if a.answer_id}
    by_text = {q.text_key: q.question_id for q in questions.questions} if questions else None
    ids = {q.question_id for q in questions.questions} if questions else None
    out: list[Label] = []
    for item in iter_raw(path):
        if isinstance(item, RecordError):
            raise item
        d = item.data
        if not isinstance(d, dict):
            raise RecordError(item.file, item.where, None, "expected a JSON object")
        if "answer1_id" in d:
            if answers is None:
                raise HuarizoError(f"{path}: FastChat reviews name answers by id: grade them with the answer files")
            label = _review_label(item, d, by_answer_id)
        elif "generator_1" in d and "preference" in d:
            label = _annotation_label(item, d, by_text)
        elif is_vote(d):
            label = _vote_label(item, d, ids, answers)
        else:
            keys = ", ".join(sorted(d))
            raise RecordError(
                item.file,
                item.where,
                None,
                f"unknown labels layout (keys {keys}); expected FastChat reviews (answer1_id, answer2_id, text), "
                "AlpacaEval annotations (generator_1, generator_2, preference) or arena votes (item, models, shown, "
                "vote)",
            )
        if label is not None:
            out.append(label)
    if not out:
        raise HuarizoError(f"{path}: no label matches the models and questions being graded")
    return out


def _review_label(item: RawRecord, d: dict[str, Any], by_answer_id: dict[str, str]) -> Label | None:
    """A FastChat review: the higher of its two scores wins; None when an answer is not being graded."""
    scores = _review_scores(d)
    if scores is None:
        raise RecordError(item.file, item.where, "text", "neither a score pair nor text starting 's1 s2'")
    m1, m2 = by_answer_id.get(d["answer1_id"]), by_answer_id.get(d["answer2_id"])
    if m1 is None or m2 is None:
        return None
    s1, s2 = scores
    return Label(str(d["question_id"]), m1, m2, _winner(s1, s2, m1, m2))


def _annotation_label(item: RawRecord, d: dict[str, Any], by_text: dict[str, str] | None) -> Label | None:
    """An AlpacaEval annotation (preference 1 or 2; 0 or 1.5: a tie); None for an unknown question or no preference."""
    key = text_key(str(d.get("instruction", "")))
    qid = key if by_text is None else by_text.get(key)
    pref = d["preference"]
    if qid is None or pref is None or (isinstance(pref, float) and math.isnan(pref)):
        return None
    try:
        p = float(pref)
    except (TypeError, ValueError):
        raise RecordError(item.file, item.where, "preference", f"not a number: {pref!r}") from None
    m1, m2 = str(d["generator_1"]), str(d["generator_2"])
    winner = "tie" if p == 0 or p == 1.5 else m1 if p < 1.5 else m2
    return Label(qid, m1, m2, winner)


def _vote_label(
    item: RawRecord, d: dict[str, Any], ids: set[str] | None, answers: dict[str, dict[str, Answer]] | None
) -> Label | None:
    """An arena vote; None when its question or models are not being graded."""
    try:
        v = read_vote(d)
    except KeyError as exc:
        raise RecordError(item.file, item.where, str(exc.args[0]), "missing (arena vote)") from None
    except ValueError as exc:
        raise RecordError(item.file, item.where, None, f"{exc} (arena vote)") from None
    if (ids is not None and v.item not in ids) or (answers is not None and not set(v.models) <= set(answers)):
        return None
    return Label(v.item, v.models[0], v.models[1], v.winner, v.voter)

"""Evaluation sets: question and answer files in the layouts people already have, read into two types (`Question`,
`Answer`) that the judge grades and the arena shows.

- legacy Vicuna-80 (FastChat `eval/table`): questions `question_id, text, category`; answers
  `question_id, text, model_id[, answer_id]`.
- MT-bench / new Vicuna bench (FastChat `llm_judge`): questions `question_id, category, turns[]`; answers (and
  reference answers) `question_id, model_id, choices[{turns[]}]`.
- AlpacaEval: questions `instruction, dataset`; answers `instruction, output, generator`.
- Self-Instruct user-oriented: questions `id, instruction, instances[{input, output}]`; answers (predictions)
  `instruction, input, response`.

The layout is detected from the keys of the first record; a record that does not fit is an error naming the file, the
line (or record) and the field. Answers are matched to questions by id, or by the question text when the layout has
no id (AlpacaEval, Self-Instruct predictions).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from huarizo.formats.errors import HuarizoError, RecordError
from huarizo.formats.io import RawRecord, iter_raw

# ---- on-disk layouts ---------------------------------------------------------------------------------------------


class _Layout(BaseModel):
    model_config = ConfigDict(extra="allow")


class VicunaLegacyQuestion(_Layout):
    """A question of FastChat's legacy Vicuna-80 table."""

    question_id: int | str
    text: str = Field(min_length=1)
    category: str = "general"


class VicunaLegacyAnswer(_Layout):
    """An answer of FastChat's legacy table (one turn)."""

    question_id: int | str
    text: str
    model_id: str
    answer_id: str | None = None


class MTBenchQuestion(_Layout):
    """A question of MT-bench (or the newer Vicuna bench): one or more turns, an optional inline reference."""

    question_id: int | str
    category: str = "general"
    turns: list[str] = Field(min_length=1)
    reference: list[str] | None = None


class MTBenchChoice(_Layout):
    """One sampled answer of an MT-bench answer record."""

    index: int = 0
    turns: list[str] = Field(min_length=1)


class MTBenchAnswer(_Layout):
    """An MT-bench answer (also the layout of reference answers and of what `huarizo judge answer` writes)."""

    question_id: int | str
    model_id: str
    choices: list[MTBenchChoice] = Field(min_length=1)
    answer_id: str | None = None


class AlpacaEvalRecord(_Layout):
    """An AlpacaEval record: the instruction, and a model's output with its generator name."""

    instruction: str = Field(min_length=1)
    output: str | None = None
    generator: str | None = None
    dataset: str = "alpaca_eval"


class SelfInstructInstance(_Layout):
    """An input/output example of a Self-Instruct task."""

    input: str = ""
    output: str = ""


class SelfInstructTask(_Layout):
    """One of Self-Instruct's 252 user-oriented instructions."""

    id: str
    instruction: str = Field(min_length=1)
    instances: list[SelfInstructInstance] = Field(min_length=1)
    motivation_app: str = "general"


class SelfInstructPrediction(_Layout):
    """A Self-Instruct prediction: the instruction, its input and the model's response."""

    instruction: str
    input: str = ""
    response: str


QUESTION_LAYOUTS: dict[str, type[_Layout]] = {
    "mt-bench": MTBenchQuestion,
    "self-instruct": SelfInstructTask,
    "alpaca-eval": AlpacaEvalRecord,
    "vicuna-legacy": VicunaLegacyQuestion,
}
ANSWER_LAYOUTS: dict[str, type[_Layout]] = {
    "mt-bench": MTBenchAnswer,
    "self-instruct": SelfInstructPrediction,
    "alpaca-eval": AlpacaEvalRecord,
    "vicuna-legacy": VicunaLegacyAnswer,
}


def detect_question_layout(data: Any) -> str | None:
    """The question layout a record's keys say, or None."""
    if not isinstance(data, dict):
        return None
    if "turns" in data:
        return "mt-bench"
    if "instances" in data:
        return "self-instruct"
    if "instruction" in data:
        return "alpaca-eval"
    if "text" in data and "question_id" in data:
        return "vicuna-legacy"
    return None


def detect_answer_layout(data: Any) -> str | None:
    """The answer layout a record's keys say, or None."""
    if not isinstance(data, dict):
        return None
    if "choices" in data:
        return "mt-bench"
    if "response" in data:
        return "self-instruct"
    if "instruction" in data and "output" in data:
        return "alpaca-eval"
    if "text" in data and "question_id" in data:
        return "vicuna-legacy"
    return None


# ---- internal types ----------------------------------------------------------------------------------------------


def text_key(text: str) -> str:
    """Key that matches a question by its text (whitespace-insensitive), for layouts without ids."""
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:16]


@dataclass
class Question:
    """A question: one or more user turns, a category, and optional reference answers (one per turn)."""

    question_id: str
    turns: list[str]
    category: str = "general"
    reference: list[str] | None = None

    @property
    def text_key(self) -> str:
        """Key of the first turn's text (how id-less answer layouts find their question)."""
        return text_key(self.turns[0])


@dataclass
class Answer:
    """A model's answer to a question: one text per turn."""

    question_id: str
    model_id: str
    turns: list[str]
    answer_id: str | None = None

    @property
    def length(self) -> int:
        """Characters over all turns (for the length audit)."""
        return sum(len(t) for t in self.turns)


@dataclass
class QuestionSet:
    """Questions read from a file, with the layout they came in."""

    path: str
    layout: str
    questions: list[Question] = field(default_factory=list)

    def by_id(self) -> dict[str, Question]:
        """Questions by id."""
        return {q.question_id: q for q in self.questions}


def _validate(raw: RawRecord, model: type[_Layout]) -> Any:
    if not isinstance(raw.data, dict):
        raise RecordError(raw.file, raw.where, None, f"expected a JSON object, got {type(raw.data).__name__}")
    try:
        return model.model_validate(raw.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        msg = "missing required field" if err["type"] == "missing" else err["msg"]
        raise RecordError(raw.file, raw.where, loc, f"{msg} (as {model.__name__})") from None


def _raw(path: str | os.PathLike[str]) -> Iterable[RawRecord]:
    for item in iter_raw(path):
        if isinstance(item, RecordError):
            raise item
        yield item


def _layout_of(path: str | os.PathLike[str], detect: Any, layouts: dict[str, type[_Layout]], what: str) -> str:
    for raw in _raw(path):
        found = detect(raw.data)
        if found is None:
            keys = ", ".join(sorted(raw.data)) if isinstance(raw.data, dict) else type(raw.data).__name__
            known = "; ".join(f"{k}: {', '.join(m.model_fields)}" for k, m in layouts.items())
            raise RecordError(
                str(path), raw.where, None, f"cannot tell the {what} layout from keys [{keys}]; known: {known}"
            )
        return found
    raise HuarizoError(f"{path}: no records")


def _to_question(rec: Any, layout: str) -> Question:
    if layout == "mt-bench":
        return Question(str(rec.question_id), list(rec.turns), rec.category, rec.reference)
    if layout == "vicuna-legacy":
        return Question(str(rec.question_id), [rec.text], rec.category)
    if layout == "alpaca-eval":
        return Question(text_key(rec.instruction), [rec.instruction], rec.dataset)
    inst = rec.instances[0]
    text = f"{rec.instruction}\n\n{inst.input}" if inst.input.strip() else rec.instruction
    return Question(rec.id, [text], rec.motivation_app, [inst.output] if inst.output.strip() else None)


def load_questions(path: str | os.PathLike[str]) -> QuestionSet:
    """Read a question file in any known layout; duplicate ids are an error naming the line."""
    layout = _layout_of(path, detect_question_layout, QUESTION_LAYOUTS, "question")
    out = QuestionSet(str(path), layout)
    seen: set[str] = set()
    for raw in _raw(path):
        q = _to_question(_validate(raw, QUESTION_LAYOUTS[layout]), layout)
        if q.question_id in seen:
            raise RecordError(raw.file, raw.where, "question_id", f"duplicate question id {q.question_id!r}")
        seen.add(q.question_id)
        out.questions.append(q)
    return out


def load_references(questions: QuestionSet, path: str | os.PathLike[str]) -> int:
    """Attach reference answers (an MT-bench answer file, e.g. `reference_answer/gpt-4.jsonl`); returns how many."""
    by_id = questions.by_id()
    n = 0
    for raw in _raw(path):
        rec = _validate(raw, MTBenchAnswer)
        q = by_id.get(str(rec.question_id))
        if q is not None:
            q.reference = list(rec.choices[0].turns)
            n += 1
    return n


def _answer_key(rec: Any, layout: str) -> tuple[str | None, str | None]:
    """(question id, question text key) of an answer record."""
    if layout in ("mt-bench", "vicuna-legacy"):
        return str(rec.question_id), None
    if layout == "alpaca-eval":
        return None, text_key(rec.instruction)
    text = f"{rec.instruction.strip()}\n\n{rec.input}" if rec.input.strip() else rec.instruction
    return None, text_key(text)


def _answer_turns(raw: RawRecord, rec: Any, layout: str, path: str | os.PathLike[str]) -> tuple[list[str], str]:
    """(turns, model id) of an answer record; layouts without a model id are named after the file."""
    if layout == "mt-bench":
        return list(rec.choices[0].turns), rec.model_id
    if layout == "vicuna-legacy":
        return [rec.text], rec.model_id
    if layout == "alpaca-eval":
        if rec.output is None:
            raise RecordError(raw.file, raw.where, "output", "missing required field")
        return [rec.output], rec.generator or Path(path).stem
    return [rec.response.strip()], Path(path).stem.removesuffix("_predictions")


class _Matcher:
    """Finds the question of an answer record: by id, or by text for layouts without ids."""

    def __init__(self, path: str | os.PathLike[str], layout: str, questions: QuestionSet | None) -> None:
        self.path, self.layout, self.questions = path, layout, questions
        self.ids = set(questions.by_id()) if questions else None
        self.by_text = {q.text_key: q.question_id for q in questions.questions} if questions else {}

    def question_id(self, raw: RawRecord, rec: Any) -> str:
        qid, key = _answer_key(rec, self.layout)
        where = self.questions.path if self.questions else ""
        if qid is not None:
            if self.ids is not None and qid not in self.ids:
                raise RecordError(raw.file, raw.where, "question_id", f"{qid!r} is not in {where}")
            return qid
        if self.questions is None:
            what = f"{self.layout} answers carry no question id"
            raise HuarizoError(f"{self.path}: {what}; pass the questions to match them")
        found = self.by_text.get(key or "")
        if found is None:
            raise RecordError(raw.file, raw.where, "instruction", f"matches no question of {where}")
        return found


def load_answers(
    path: str | os.PathLike[str], questions: QuestionSet | None = None, model_id: str | None = None
) -> dict[str, dict[str, Answer]]:
    """Read an answer file: model id -> question id -> answer.

    Layouts without question ids are matched to `questions` by text; answers to unknown questions are errors naming
    the line. `model_id` overrides the file's own model name (e.g. for AlpacaEval's `generator: example`).
    """
    layout = _layout_of(path, detect_answer_layout, ANSWER_LAYOUTS, "answer")
    matcher = _Matcher(path, layout, questions)
    out: dict[str, dict[str, Answer]] = {}
    for raw in _raw(path):
        rec = _validate(raw, ANSWER_LAYOUTS[layout])
        qid = matcher.question_id(raw, rec)
        turns, model = _answer_turns(raw, rec, layout, path)
        model = model_id or model
        out.setdefault(model, {})[qid] = Answer(qid, model, turns, getattr(rec, "answer_id", None))
    return out


def load_answer_files(
    paths: Iterable[str | os.PathLike[str]], questions: QuestionSet | None = None
) -> dict[str, dict[str, Answer]]:
    """Several answer files merged: model id -> question id -> answer (a later file's answer replaces an earlier)."""
    merged: dict[str, dict[str, Answer]] = {}
    for path in paths:
        for model, per in load_answers(path, questions).items():
            merged.setdefault(model, {}).update(per)
    return merged

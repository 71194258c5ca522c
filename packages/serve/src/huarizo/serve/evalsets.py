"""Question and answer files for the arena, in the layouts huarizo-judge reads (serve does not import the judge), so
that a vote's item and model ids are the judge's question and model ids:

| layout | questions | answers |
|---|---|---|
| legacy Vicuna-80 | `question_id, text, category` | `question_id, text, model_id` |
| MT-bench | `question_id, category, turns[]` | `question_id, model_id, choices[{turns[]}]` |
| AlpacaEval | `instruction, dataset` | `instruction, output, generator` |
| Self-Instruct | `id, instruction, instances[{input, output}]` | `instruction, input, response` |

The layout is told by the first record's keys; a record that does not fit is an error naming the file, the line and
the field. Layouts without a question id (AlpacaEval, Self-Instruct predictions) are matched by the question's text,
whose key is the judge's question id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huarizo.formats.errors import HuarizoError, RecordError
from huarizo.formats.io import RawRecord, iter_raw


def text_key(text: str) -> str:
    """The id of a question known by its text (whitespace-insensitive), as huarizo-judge computes it."""
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Question:
    """A question: one or more user turns and a category."""

    question_id: str
    turns: tuple[str, ...]
    category: str = "general"


def _records(path: str) -> Iterator[tuple[RawRecord, dict[str, Any]]]:
    for item in iter_raw(path):
        if isinstance(item, RecordError):
            raise item
        if not isinstance(item.data, dict):
            raise RecordError(item.file, item.where, None, f"expected a JSON object, got {type(item.data).__name__}")
        yield item, item.data


def _text(raw: RawRecord, d: dict[str, Any], key: str, default: str | None = None, *, empty: bool = False) -> str:
    """`d[key]` as text: missing (without a default), not a string, or empty (unless `empty`) is an error naming the
    file, the line and the field."""
    value = d.get(key)
    if value is None:
        if default is None:
            raise RecordError(raw.file, raw.where, key, "missing required field")
        return default
    if not isinstance(value, str) or not (empty or value.strip()):
        raise RecordError(raw.file, raw.where, key, "expected a non-empty string")
    return value


def _id(raw: RawRecord, d: dict[str, Any], key: str) -> str:
    """An id: a string or an integer, as text."""
    value = d.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(raw, d, key)


def _turns(raw: RawRecord, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise RecordError(raw.file, raw.where, key, "expected a non-empty list of strings")
    return tuple(value)


def _question(raw: RawRecord, d: dict[str, Any]) -> Question:
    if "turns" in d:  # MT-bench
        return Question(
            _id(raw, d, "question_id"), _turns(raw, d["turns"], "turns"), _text(raw, d, "category", "general")
        )
    if "instances" in d:  # Self-Instruct
        instances = d["instances"]
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise RecordError(raw.file, raw.where, "instances", "expected a non-empty list of objects")
        inst = str(instances[0].get("input") or "")
        instruction = _text(raw, d, "instruction")
        text = f"{instruction}\n\n{inst}" if inst.strip() else instruction
        return Question(_id(raw, d, "id"), (text,), _text(raw, d, "motivation_app", "general"))
    if "instruction" in d:  # AlpacaEval
        instruction = _text(raw, d, "instruction")
        return Question(text_key(instruction), (instruction,), _text(raw, d, "dataset", "alpaca_eval"))
    if "text" in d and "question_id" in d:  # legacy Vicuna-80
        return Question(_id(raw, d, "question_id"), (_text(raw, d, "text"),), _text(raw, d, "category", "general"))
    keys = ", ".join(sorted(d))
    raise RecordError(
        raw.file,
        raw.where,
        None,
        f"cannot tell the question layout from keys [{keys}]; known: MT-bench (question_id, turns), Self-Instruct "
        "(id, instruction, instances), AlpacaEval (instruction), Vicuna-80 (question_id, text)",
    )


def read_questions(path: str) -> list[Question]:
    """The questions of a file in any of the four layouts; a duplicate id is an error naming its line."""
    out: list[Question] = []
    seen: set[str] = set()
    for raw, d in _records(path):
        q = _question(raw, d)
        if q.question_id in seen:
            raise RecordError(raw.file, raw.where, "question_id", f"duplicate question id {q.question_id!r}")
        seen.add(q.question_id)
        out.append(q)
    if not out:
        raise HuarizoError(f"{path}: no questions")
    return out


def _answer(raw: RawRecord, d: dict[str, Any], stem: str) -> tuple[str | None, str | None, str, tuple[str, ...]]:
    """(question id, question text key, model id, turns) of an answer record."""
    if "choices" in d:  # MT-bench
        choices = d["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise RecordError(raw.file, raw.where, "choices", "expected a non-empty list of objects")
        turns = _turns(raw, choices[0].get("turns"), "choices.0.turns")
        return _id(raw, d, "question_id"), None, _text(raw, d, "model_id"), turns
    if "response" in d:  # Self-Instruct predictions
        instruction, inp = _text(raw, d, "instruction", empty=True), _text(raw, d, "input", "", empty=True)
        text = f"{instruction.strip()}\n\n{inp}" if inp.strip() else instruction
        response = _text(raw, d, "response", empty=True)
        return None, text_key(text), stem.removesuffix("_predictions"), (response.strip(),)
    if "instruction" in d and "output" in d:  # AlpacaEval
        generator = _text(raw, d, "generator", stem)
        output = _text(raw, d, "output", empty=True)
        return None, text_key(_text(raw, d, "instruction")), generator, (output,)
    if "text" in d and "question_id" in d:  # legacy Vicuna-80
        return _id(raw, d, "question_id"), None, _text(raw, d, "model_id"), (_text(raw, d, "text", empty=True),)
    keys = ", ".join(sorted(d))
    raise RecordError(
        raw.file,
        raw.where,
        None,
        f"cannot tell the answer layout from keys [{keys}]; known: MT-bench (question_id, model_id, choices), "
        "Self-Instruct (instruction, input, response), AlpacaEval (instruction, output, generator), Vicuna-80 "
        "(question_id, text, model_id)",
    )


def read_answers(path: str, questions: list[Question]) -> dict[str, dict[str, tuple[str, ...]]]:
    """An answer file: model id -> question id -> the answer's turns. An answer to a question not in `questions`
    is an error naming its line."""
    by_id = {q.question_id for q in questions}
    by_text = {text_key(q.turns[0]): q.question_id for q in questions}
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    stem = Path(path).stem
    for raw, d in _records(path):
        qid, key, model, turns = _answer(raw, d, stem)
        if qid is None:
            qid = by_text.get(key or "")
            if qid is None:
                raise RecordError(raw.file, raw.where, "instruction", "matches no question of the question file")
        elif qid not in by_id:
            raise RecordError(raw.file, raw.where, "question_id", f"{qid!r} is not in the question file")
        out.setdefault(model, {})[qid] = turns
    if not out:
        raise HuarizoError(f"{path}: no answers")
    return out

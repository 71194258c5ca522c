"""Question and answer layouts people already have, read from the real files, and errors that name the spot."""

from __future__ import annotations

import json

import pytest

from huarizo.formats import RecordError, load_answers, load_questions, load_references


def test_vicuna_legacy_questions_and_answers(vicuna) -> None:  # type: ignore[no-untyped-def]
    qs = load_questions(vicuna["questions"])
    assert qs.layout == "vicuna-legacy" and len(qs.questions) == 80
    assert {q.category for q in qs.questions} >= {"generic", "math", "coding", "fermi"}
    answers = load_answers(vicuna["answer"]("alpaca-13b"), qs)
    assert list(answers) == ["alpaca-13b:v1"]
    a = answers["alpaca-13b:v1"]["1"]
    assert a.turns[0].startswith("Improving time management") and a.answer_id == "kEL9ifUHDeYuAXzevje2se"


def test_mt_bench_turns_and_references(shared_data) -> None:  # type: ignore[no-untyped-def]
    qs = load_questions(shared_data / "fastchat/mt_bench/question.jsonl")
    assert qs.layout == "mt-bench" and len(qs.questions) == 80
    assert all(len(q.turns) == 2 for q in qs.questions)
    n = load_references(qs, shared_data / "fastchat/mt_bench/reference_answer/gpt-4.jsonl")
    assert n == 30
    q = qs.by_id()["101"]
    assert q.category == "reasoning" and q.reference is not None and len(q.reference) == 2


def test_alpaca_eval_805_and_model_outputs(shared_data) -> None:  # type: ignore[no-untyped-def]
    qs = load_questions(shared_data / "alpaca_eval/example_outputs_805.json")
    assert qs.layout == "alpaca-eval" and len(qs.questions) == 805
    assert {q.category for q in qs.questions} == {"selfinstruct", "oasst", "koala", "helpful_base", "vicuna"}
    out = load_answers(shared_data / "alpaca_eval/model_outputs/alpaca-7b.json", qs)
    assert list(out) == ["alpaca-7b"] and len(out["alpaca-7b"]) == 805


def test_self_instruct_252_and_predictions(shared_data) -> None:  # type: ignore[no-untyped-def]
    root = shared_data / "self_instruct/human_eval"
    qs = load_questions(root / "user_oriented_instructions.jsonl")
    assert qs.layout == "self-instruct" and len(qs.questions) == 252
    assert qs.questions[0].reference and qs.questions[0].category == "Grammarly"
    out = load_answers(root / "predictions/text-davinci-003_predictions.jsonl", qs)
    assert len(out["text-davinci-003"]) == 252


def test_bad_records_name_file_line_and_field(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "text": "Hi", "category": "x"}\n{"question_id": 2, "category": "x"}\n')
    # line 2 has no text: it is not even recognisable as a question, but its layout was set by line 1
    with pytest.raises(RecordError, match=r"q\.jsonl: line 2: field 'text': missing required field"):
        load_questions(bad)
    bad.write_text('{"question_id": 1, "text": "Hi"}\n{"question_id": 1, "text": "Again"}\n')
    with pytest.raises(RecordError, match=r"line 2: field 'question_id': duplicate"):
        load_questions(bad)
    bad.write_text('{"prompt": "Hi"}\n')
    with pytest.raises(RecordError, match=r"line 1: cannot tell the question layout from keys \[prompt\]"):
        load_questions(bad)
    qs = load_questions(vicuna["questions"])
    ans = tmp_path / "a.jsonl"
    ans.write_text(json.dumps({"question_id": 999, "text": "x", "model_id": "m"}) + "\n")
    with pytest.raises(RecordError, match=r"a\.jsonl: line 1: field 'question_id': '999' is not in"):
        load_answers(ans, qs)
    ans.write_text(json.dumps({"instruction": "never asked", "output": "x", "generator": "m"}) + "\n")
    with pytest.raises(RecordError, match=r"line 1: field 'instruction': matches no question"):
        load_answers(ans, qs)

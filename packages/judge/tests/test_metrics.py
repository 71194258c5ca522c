"""The `evaluate` modules shipped in the package load offline by path and compute the right numbers."""

from __future__ import annotations

import json

import pytest

from huarizo.judge import metric_path

evaluate = pytest.importorskip("evaluate")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: the modules must load from their folders alone."""
    for var in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def test_rouge_l_matches_rouge_score_on_self_instruct(shared_data) -> None:  # type: ignore[no-untyped-def]
    rouge_score = pytest.importorskip("rouge_score.rouge_scorer")
    metric = evaluate.load(metric_path("rouge_l"))
    rows = [
        json.loads(line)
        for line in (shared_data / "self_instruct/human_eval/predictions/text-davinci-003_predictions.jsonl").open()
    ][:40]
    preds, refs = [r["response"] for r in rows], [r["target"] for r in rows]
    got = metric.compute(predictions=preds, references=refs)["rougeL"]
    scorer = rouge_score.RougeScorer(["rougeL"], use_stemmer=False)
    want = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)) / len(rows)
    assert got == pytest.approx(want, abs=1e-9)
    assert metric.compute(predictions=["a b c"], references=[["x", "a b c"]])["rougeL"] == 1.0


def test_exact_match_on_self_instruct_classification_labels(shared_data) -> None:  # type: ignore[no-untyped-def]
    metric = evaluate.load(metric_path("exact_match"))
    tasks = [json.loads(line) for line in (shared_data / "stanford_alpaca/seed_tasks.jsonl").open()]
    labels = [t["instances"][0]["output"] for t in tasks if t["is_classification"]]
    assert len(labels) == 26
    shouted = [f"  {lab.upper()}. " for lab in labels]
    assert metric.compute(predictions=shouted, references=labels)["exact_match"] == 1.0
    assert metric.compute(predictions=shouted, references=labels, ignore_case=False)["exact_match"] < 1.0
    wrong = labels[1:] + labels[:1]
    got = metric.compute(predictions=wrong, references=labels)["exact_match"]
    assert got == sum(a.lower() == b.lower() for a, b in zip(wrong, labels, strict=True)) / 26


def test_judge_win_rate_from_both_orders() -> None:
    metric = evaluate.load(metric_path("judge_win_rate"))
    first = ["Better: [[A]]", "[[B]]", "[[A]]", "[[C]]", "no verdict"]
    second = ["[[B]]", "[[A]]", "[[A]]", "[[C]]", "[[A]]"]  # with the model shown second
    r = metric.compute(predictions=first, references=second)
    # win, loss, flip (tie, inconsistent), tie, error
    assert (r["n"], r["wins"], r["losses"], r["ties"], r["inconsistent"], r["errors"]) == (4, 1, 1, 2, 1, 1)
    assert r["win_rate"] == 0.5 and r["position_consistency"] == 0.75
    assert r["win_rate_ci"][0] <= 0.5 <= r["win_rate_ci"][1]

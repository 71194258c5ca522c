"""`huarizo judge score`: existing judgments in (AlpacaEval annotations, FastChat MT-bench judgments, Huarizo's own),
the same summary and report as `grade` out; AlpacaEval's published leaderboard row reproduced from its annotations."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from huarizo.formats.cli import main
from huarizo.formats.errors import HuarizoError
from huarizo.formats.testing import ScriptedServer, prefer_longer
from huarizo.judge import GradeConfig, ScoreConfig, grade, score
from huarizo.judge.stats import alpaca_eval_length_controlled


def _leaderboard_row(shared_data: Path, name: str) -> dict[str, str]:
    path = shared_data / "alpaca_eval/leaderboards/AlpacaEval1_alpaca_eval_gpt4_leaderboard.csv"
    with path.open(newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r[""] == name)


def test_alpaca_eval_1_leaderboard_row_of_alpaca_7b_is_reproduced(tmp_path, shared_data, capsys) -> None:  # type: ignore[no-untyped-def]
    annotations = shared_data / "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json"
    row = _leaderboard_row(shared_data, "alpaca-7b")
    out = tmp_path / "out"
    assert main(["judge", "score", str(annotations), "--out", str(out), "--bootstrap", "200"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["wins"], s["losses"], s["ties"], s["n"]) == (205, 584, 16, 805)
    assert (int(row["n_wins"]), int(row["n_wins_base"]), int(row["n_draws"]), int(row["n_total"])) == (
        205,
        584,
        16,
        805,
    )
    # the leaderboard prints percentages: the same to the last digit it prints (floating-point summation aside)
    assert f"{100 * s['win_rate']:.4f}" == "26.4596" and f"{100 * s['standard_error']:.4f}" == "1.5357"
    assert 100 * s["win_rate"] == pytest.approx(float(row["win_rate"]), rel=1e-13, abs=0)
    assert 100 * s["standard_error"] == pytest.approx(float(row["standard_error"]), rel=1e-13, abs=0)
    assert s["baseline"] == "text_davinci_003" and s["judge"] == "alpaca_eval_gpt4"
    assert s["verdicts_read"] == {"annotation": 805} and s["sources"][str(annotations)]["records"] == 805
    report = (out / "report.md").read_text()
    assert "| alpaca-7b | text_davinci_003 | 805 | 205 | 16 | 584 | 26.5% ± 1.5 |" in report
    assert "It is not AlpacaEval's length-controlled win rate" in report
    assert "AlpacaEval annotations" in capsys.readouterr().out


def _fastchat_files(tmp: Path, reviews: Path) -> tuple[Path, Path, dict[str, Any]]:
    """FastChat MT-bench judgment files built from real GPT-4 reviews, and what FastChat's show_result counts."""
    pair, single, hand = [], [], {"win": 0, "loss": 0, "tie": 0, "scores": {"m1": [], "m2": []}}
    for line in reviews.open():
        r = json.loads(line)
        qid, (s1, s2) = r["question_id"], r["score"]
        g1 = "model_1" if s1 > s2 else "model_2" if s2 > s1 else "tie"
        flipped = {"model_1": "model_2", "model_2": "model_1", "tie": "tie"}[g1]
        g2 = "tie" if qid % 5 == 0 else flipped if qid % 7 == 0 else "error" if qid == 11 else g1
        judge = ["gpt-4", "pair-v2"]
        pair.append({"question_id": qid, "model_1": "m1", "model_2": "m2", "g1_winner": g1, "g2_winner": g2})
        pair[-1].update({"judge": judge, "g1_judgment": r["text"], "g2_judgment": "...", "turn": 1, "tstamp": 0})
        if g2 != "error":  # show_result: errors dropped; a tie or a flip is a tie
            hand["tie" if g1 == "tie" or g1 != g2 else "win" if g1 == "model_1" else "loss"] += 1
        for model, value in (("m1", s1), ("m2", -1 if qid == 3 else s2)):
            single.append({"question_id": qid, "model": model, "judge": ["gpt-4", "single-v1"], "user_prompt": "..."})
            single[-1].update({"judgment": f"Rating: [[{value}]]", "score": value, "turn": 1, "tstamp": 0})
            if value != -1:
                hand["scores"][model].append(value)
    files = tmp / "gpt-4_pair.jsonl", tmp / "gpt-4_single.jsonl"
    for path, rows in zip(files, (pair, single), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files[0], files[1], hand


def test_fastchat_judgments_agree_with_a_hand_count(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    pair, single, hand = _fastchat_files(tmp_path, vicuna["review"]("alpaca-13b"))
    p = score(ScoreConfig(files=[str(pair)], out=str(tmp_path / "pair"), questions=str(vicuna["questions"]))).summary
    assert (p["wins"], p["losses"], p["ties"]) == (hand["win"], hand["loss"], hand["tie"])
    assert p["n"] == 79 and p["errors"] == 1 and p["judge"] == "gpt-4" and p["baseline"] == "m2"
    assert p["win_rate"] == pytest.approx((hand["win"] + hand["tie"] / 2) / 79)  # FastChat's win_rate_adjusted
    assert p["verdicts_read"] == {"text": 158} and 0 < p["position_consistency"] < 1
    assert set(p["models"]["m1"]["win_rate_by_category"]) > {"writing", "coding"}  # categories from the questions
    s = score(ScoreConfig(files=[str(single)], out=str(tmp_path / "single"))).summary
    for model in ("m1", "m2"):
        assert s["models"][model]["mean"] == pytest.approx(np.mean(hand["scores"][model]))
    assert s["models"]["m2"]["n"] == 79 and s["models"]["m2"]["errors"] == 1
    with pytest.raises(HuarizoError, match="mix single ratings and pairwise comparisons"):
        score(ScoreConfig(files=[str(pair), str(single)], out=str(tmp_path / "both")))


def test_huarizo_judgments_score_as_grade_summarised_them(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(prefer_longer) as server:
        graded = grade(
            GradeConfig(
                judge={"model": "openai/judge", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
                verdict="text",
                questions=str(vicuna["questions"]),
                answers=[str(vicuna["answer"]("bard")), str(vicuna["answer"]("gpt35"))],
                baseline=str(vicuna["answer"]("vicuna-13b")),
                out=str(tmp_path / "grade"),
                limit=15,
                bootstrap=100,
            ),
            progress=False,
        ).summary
    again = score(ScoreConfig(files=[str(tmp_path / "grade/judgments.jsonl")], out=str(tmp_path / "s"), bootstrap=100))
    s = again.summary
    for key in ("n", "wins", "losses", "ties", "win_rate", "standard_error", "position_consistency", "baseline"):
        assert s[key] == graded[key], key
    assert [p["win_rate"] for p in s["pairs"]] == [p["win_rate"] for p in graded["pairs"]]
    assert again.counts["judged"] == 30 and again.counts["read_text"] == 60


def test_bad_records_name_the_file_the_record_and_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"instruction": "x", "generator_1": "b", "generator_2": "m", "preference": 2}, {}]))
    with pytest.raises(HuarizoError, match=r"a.json: record 1: field 'preference': missing \(AlpacaEval annotations\)"):
        score(ScoreConfig(files=[str(bad)], out=str(tmp_path / "o")))
    bad.write_text(json.dumps([{"instruction": "x", "generator_1": "b", "generator_2": "m", "preference": 7}]))
    with pytest.raises(HuarizoError, match=r"record 0.*preference 7 is not 1, 2, 1.5, 0"):
        score(ScoreConfig(files=[str(bad)], out=str(tmp_path / "o")))
    other = tmp_path / "b.jsonl"
    other.write_text('{"prompt": "hello"}\n')
    with pytest.raises(HuarizoError, match=r"b.jsonl: line 1: unknown judgment layout \(keys prompt\)"):
        score(ScoreConfig(files=[str(other)], out=str(tmp_path / "o")))


def test_alpaca_eval_length_controlled_formula_matches_sklearn(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    """AlpacaEval's GLM (tanh of the standardised length difference + instruction difficulty + the model's weight,
    no intercept, soft targets), fitted as AlpacaEval fits it with scikit-learn (rows duplicated with weights p and
    1 - p), gives the same length-controlled win rate."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    rows = json.loads((shared_data / "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json").read_text())
    y = np.array([(1.5 if float(r["preference"]) == 0 else float(r["preference"])) - 1 for r in rows])
    d = np.array([len(r["output_2"]) - len(r["output_1"]) for r in rows], dtype=float)
    difficulty = np.random.default_rng(0).normal(0, 1, len(rows))  # AlpacaEval's own file is on the hub
    x = np.column_stack([np.tanh(d / d.std(ddof=1)), difficulty, np.ones_like(d)])
    model = sklearn.LogisticRegression(C=1e12, fit_intercept=False, tol=1e-10, max_iter=10_000)  # no penalty
    model.fit(np.vstack([x, x]), np.r_[np.ones_like(y), np.zeros_like(y)], sample_weight=np.r_[y, 1 - y])
    w = model.coef_[0]
    expected = float(np.mean(1 / (1 + np.exp(-(w[1] * difficulty + w[2])))))
    assert alpaca_eval_length_controlled(y, d, difficulty) == pytest.approx(expected, abs=1e-6)
    table = tmp_path / "instruction_difficulty.csv"
    table.write_text("index,instruction_difficulty\n" + "".join(f"{i},{v}\n" for i, v in enumerate(difficulty)))
    s = score(
        ScoreConfig(
            files=[str(shared_data / "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json")],
            out=str(tmp_path / "o"),
            instruction_difficulty=str(table),
            bootstrap=100,
        )
    ).summary
    assert s["length_controlled_win_rate"] == pytest.approx(expected, abs=1e-6)
    assert "Length-controlled win rate (AlpacaEval's formula" in (tmp_path / "o/report.md").read_text()
    assert not math.isclose(s["length_controlled_win_rate"], s["win_rate"])

"""Grading against scripted judges on loopback, on the real legacy Vicuna-80 answers and GPT-4 reviews."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.testing import Reply, ScriptedServer, prefer_first, prefer_longer, shown_answers
from huarizo.judge import GradeConfig, JudgeIncomplete, grade

BASE = "vicuna-13b"


def _cfg(server: ScriptedServer, tmp: Path, max_retries: int = 5, **kw: Any) -> GradeConfig:
    """Text verdicts (these scripted judges write them and return no logprobs)."""
    judge = {
        "model": "openai/judge",
        "api_base": server.url,
        "cache_dir": str(tmp / "cache"),
        "max_retries": max_retries,
    }
    return GradeConfig(judge=judge, verdict="text", out=str(tmp / "out"), bootstrap=200, **kw)


def _texts(path: Path) -> dict[int, str]:
    return {(d := json.loads(line))["question_id"]: d["text"] for line in path.open()}


def _verdict(a: float, b: float) -> str:
    return "1" if a > b else "2" if b > a else "tie"


def _hand_agreement(reviews: Path, judge: dict[int, str]) -> tuple[int, int, int]:
    """Counted by hand against the GPT-4 reviews: (same verdict, both decided, same verdict among those)."""
    same = decided = same_decided = 0
    for line in reviews.open():
        r = json.loads(line)
        label, mine = _verdict(*r["score"]), judge[r["question_id"]]
        same += mine == label
        if "tie" not in (mine, label):
            decided += 1
            same_decided += mine == label
    return same, decided, same_decided


def test_first_position_judge_gives_all_ties_and_zero_consistency(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(prefer_first) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            answers=[str(vicuna["answer"]("alpaca-13b"))],
            baseline=str(vicuna["answer"](BASE)),
        )
        s = grade(cfg, progress=False).summary
        assert len(server.requests) == 160  # 80 questions, both orders
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (80, 0, 0, 80)
    assert s["win_rate"] == 0.5 and s["inconsistent"] == 80 and s["position_consistency"] == 0.0
    assert s["first_position_preference"] == 1.0 and s["prefers_longer"] is None and s["errors"] == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "position consistency (same verdict in both orders) | 0.0%" in report


def test_longer_judge_matches_hand_count_on_real_answers(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    models = ["alpaca-13b", "llama-13b", "gpt35"]
    base = _texts(vicuna["answer"](BASE))
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            answers=[str(vicuna["answer"](m)) for m in models],
            baseline=str(vicuna["answer"](BASE)),
        )
        s = grade(cfg, progress=False).summary
    ids = {"alpaca-13b": "alpaca-13b:v1", "llama-13b": "llama-13b:v1", "gpt35": "gpt-3.5-turbo:20230327"}
    pairs = {p["model"]: p for p in s["pairs"]}
    for m in models:
        mine = _texts(vicuna["answer"](m))
        wins = sum(len(mine[q]) > len(base[q]) for q in base)
        losses = sum(len(mine[q]) < len(base[q]) for q in base)
        p = pairs[ids[m]]
        assert (p["wins"], p["losses"], p["ties"], p["n"]) == (wins, losses, 80 - wins - losses, 80), m
        assert p["win_rate"] == (wins + (80 - wins - losses) / 2) / 80
        lo, hi = p["win_rate_ci"]
        assert lo <= p["win_rate"] <= hi
        assert p["position_consistency"] == 1.0 and p["prefers_longer"] == 1.0 and p["inconsistent"] == 0
    assert s["audit"]["prefers_longer"] == 1.0
    assert set(s["bradley_terry"]) == {"alpaca-13b:v1", "llama-13b:v1", "gpt-3.5-turbo:20230327", s["baseline"]}


def test_agreement_with_gpt4_reviews_matches_hand_count(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    mine, base = _texts(vicuna["answer"]("alpaca-13b")), _texts(vicuna["answer"](BASE))
    judge = {q: _verdict(len(mine[q]), len(base[q])) for q in base}
    same, decided, same_decided = _hand_agreement(vicuna["review"]("alpaca-13b"), judge)
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            answers=[str(vicuna["answer"]("alpaca-13b"))],
            baseline=str(vicuna["answer"](BASE)),
            labels=[str(vicuna["review"]("alpaca-13b"))],
        )
        lab = grade(cfg, progress=False).summary["label_agreement"]
    assert lab["n"] == 80 and lab["n_decided"] == decided
    assert lab["agreement_with_ties"] == same / 80
    assert lab["agreement_without_ties"] == same_decided / decided
    assert "Agreement with labels" in (tmp_path / "out" / "report.md").read_text()


def test_unparseable_and_failing_replies_are_retried_and_counted(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def flaky(req: dict[str, Any]) -> str | Reply:
        ans = shown_answers(req)
        key = ans["A"] + "|" + ans["B"]
        with lock:
            seen[key] += 1
            k = seen[key]
        if k == 1:
            return Reply(status=429 if len(ans["A"]) % 2 else 500)  # every prompt fails once at first
        if "seed" not in req:
            return "Both answers have merits; hard to say."  # no verdict: must be asked again with a seed
        if "Python and JavaScript" in req["messages"][-1]["content"]:  # question 3 never gets a verdict
            return "I refuse to choose."
        return prefer_longer(req)

    with ScriptedServer(flaky) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            answers=[str(vicuna["answer"]("alpaca-13b"))],
            baseline=str(vicuna["answer"](BASE)),
            limit=12,
            parse_retries=2,
        )
        with pytest.raises(JudgeIncomplete, match=r"1 of 12 items got no verdict \(1 no verdict in 3 replies\)"):
            grade(cfg, progress=False)
        sent = len(server.requests)
        s = json.loads((tmp_path / "out" / "summary.json").read_text())
        report = (tmp_path / "out" / "report.md").read_text()
        # rerun: every reply, good or bad, comes from the cache
        with pytest.raises(JudgeIncomplete) as again:
            grade(cfg, progress=False)
        assert len(server.requests) == sent
    s2 = again.value.result.summary  # type: ignore[attr-defined]
    js = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").open()]
    never = [j for j in js if j["error"]]
    bad_q = {j["question_id"] for j in never}
    assert all(j["error"].startswith("no verdict in 3 replies") for j in never)
    assert s["errors"] == len(never) == len(bad_q) and s["n"] == 12 - len(never)
    assert s["usage"]["retries"] == 24  # each of the 24 prompts failed once with 429 / 500
    assert bad_q == {"3"} and sent == 24 + 22 * 2 + 2 * 3
    assert s["audit"]["unparsed_replies"] == 22 + 2 * 3
    good = [j for j in js if not j["error"]]
    assert all(j["verdicts"] and None not in j["verdicts"] and j["attempts"] == 4 for j in good)
    assert s2["wins"] == s["wins"] and s2["errors"] == s["errors"] and s2["usage"]["requests"] == 0
    # the report says how many got no verdict and why, and quotes two of the judge's replies
    assert "**1 item got no verdict** (1 no verdict in 3 replies)" in report
    assert "> Both answers have merits; hard to say." in report and "> I refuse to choose." in report


def _mt_answers(tmp: Path, qs_path: Path, model: str, style: str) -> Path:
    rows = []
    for line in qs_path.open():
        q = json.loads(line)
        turns = [f"{model} reply {i + 1} to {q['question_id']}: " + style * (i + 1) for i in range(len(q["turns"]))]
        rows.append({"question_id": q["question_id"], "model_id": model, "choices": [{"index": 0, "turns": turns}]})
    path = tmp / f"{model}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_single_grading_mt_bench_reference_guided_and_multi_turn(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    from huarizo.formats.testing import shown_answer

    qs = shared_data / "fastchat/mt_bench/question.jsonl"
    refs = shared_data / "fastchat/mt_bench/reference_answer/gpt-4.jsonl"
    seen: list[dict[str, Any]] = []

    def rater(req: dict[str, Any]) -> str:
        seen.append(req)
        body = req["messages"][-1]["content"]
        score = 9 if "<reference solution" in body else 3 + shown_answer(req).count("x")
        return f"Reasonable.\nRating: [[{score}]]"

    files = [_mt_answers(tmp_path, qs, "short", "x"), _mt_answers(tmp_path, qs, "long", "xx")]
    with ScriptedServer(rater) as server:
        cfg = _cfg(
            server, tmp_path, mode="single", questions=str(qs), references=str(refs), answers=[str(f) for f in files]
        )
        s = grade(cfg, progress=False).summary
    assert len(seen) == 2 * 80 * 2  # two models, 80 questions, two turns each
    m = s["models"]
    # math, reasoning and coding have references: graded 9 against them; the others by the rule above
    for model, per_turn in (("short", [4, 5]), ("long", [5, 7])):
        assert m[model]["by_category"]["math"] == 9 and m[model]["by_category"]["coding"] == 9
        assert m[model]["by_category"]["writing"] == (per_turn[0] + per_turn[1]) / 2
        assert m[model]["n"] == 160 and m[model]["errors"] == 0
    assert m["long"]["by_turn"]["2"] > m["short"]["by_turn"]["2"]
    turn2 = [r for r in seen if "### User (turn 2)" in r["messages"][-1]["content"]]
    assert len(turn2) == 160 and all("reply 1 to" in r["messages"][-1]["content"] for r in turn2)
    assert s["audit"]["prefers_longer"] == 1.0 and s["audit"]["position_consistency"] is None
    out = tmp_path / "out"
    assert (out / "score_by_category.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Mean score by category" in report and "## Judge audit" in report and "### By turn" in report


def test_all_pairs_bradley_terry_and_report(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    models = ["alpaca-13b", "llama-13b", "gpt35", "bard"]
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            limit=20,
            answers=[str(vicuna["answer"](m)) for m in models],
        )
        s = grade(cfg, progress=False).summary
        assert len(server.requests) == 6 * 20 * 2
    assert len(s["pairs"]) == 6 and s["baseline"] is None
    # the ratings order the models as their total answer length over these 20 questions does
    texts = {m: _texts(vicuna["answer"](m)) for m in models}
    ids = {
        "alpaca-13b": "alpaca-13b:v1",
        "llama-13b": "llama-13b:v1",
        "gpt35": "gpt-3.5-turbo:20230327",
        "bard": "bard:20230327",
    }
    wins = {m: sum(len(texts[m][q]) > len(texts[o][q]) for o in models if o != m for q in range(1, 21)) for m in models}
    by_rating = sorted(models, key=lambda m: s["bradley_terry"][ids[m]]["rating"])
    assert by_rating == sorted(models, key=lambda m: wins[m])
    for v in s["bradley_terry"].values():
        assert v["ci"][0] <= v["rating"] <= v["ci"][1]
    assert {m: s["models"][ids[m]]["wins"] for m in models} == wins
    out = tmp_path / "out"
    for png in ("win_tie_loss.png", "win_rate.png", "bradley_terry.png"):
        assert (out / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Bradley-Terry ratings" in report and "![bradley_terry.png](bradley_terry.png)" in report
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 120


def test_single_scores_agreement_with_gpt4_reviews(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    from huarizo.formats.testing import shown_answer

    def by_length(req: dict[str, Any]) -> str:
        return f"Rating: [[{min(10, 1 + len(shown_answer(req)) // 300)}]]"

    mine, base = _texts(vicuna["answer"]("llama-13b")), _texts(vicuna["answer"](BASE))
    judge = {q: _verdict(min(10, 1 + len(mine[q]) // 300), min(10, 1 + len(base[q]) // 300)) for q in base}
    same, n_decided, same_decided = _hand_agreement(vicuna["review"]("llama-13b"), judge)
    with ScriptedServer(by_length) as server:
        cfg = _cfg(
            server,
            tmp_path,
            mode="single",
            questions=str(vicuna["questions"]),
            answers=[str(vicuna["answer"]("llama-13b")), str(vicuna["answer"](BASE))],
            labels=[str(vicuna["review"]("llama-13b"))],
        )
        lab = grade(cfg, progress=False).summary["label_agreement"]
    assert (lab["n"], lab["n_decided"]) == (80, n_decided)
    assert lab["agreement_with_ties"] == same / 80 and lab["agreement_without_ties"] == same_decided / n_decided


def test_alpaca_eval_baseline_with_annotations_as_labels(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    ae = shared_data / "alpaca_eval"
    outs = {
        g: {d["instruction"]: d["output"] for d in json.loads((ae / f"model_outputs/{g}.json").read_text())}
        for g in ("alpaca-7b", "text_davinci_003")
    }
    annotations = json.loads((ae / "annotations/alpaca-7b__alpaca_eval_gpt4.json").read_text())
    instructions = [d["instruction"] for d in json.loads((ae / "example_outputs_805.json").read_text())][:30]
    pairs = []
    for a in annotations:
        if a["instruction"] in instructions[:30] and a["preference"] is not None:
            la, lb = len(outs["alpaca-7b"][a["instruction"]]), len(outs["text_davinci_003"][a["instruction"]])
            judge = "alpaca-7b" if la > lb else "text_davinci_003" if lb > la else "tie"
            p = float(a["preference"])
            label = "tie" if p in (0, 1.5) else a["generator_1"] if p < 1.5 else a["generator_2"]
            pairs.append(judge == label)
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(ae / "example_outputs_805.json"),
            limit=30,
            answers=[str(ae / "model_outputs/alpaca-7b.json")],
            baseline=str(ae / "model_outputs/text_davinci_003.json"),
            labels=[str(ae / "annotations/alpaca-7b__alpaca_eval_gpt4.json")],
        )
        s = grade(cfg, progress=False).summary
    assert s["baseline"] == "text_davinci_003" and s["n"] == 30
    lab = s["label_agreement"]
    assert lab["labels"] == lab["n"] == len(pairs) == 30  # the labels of the graded questions
    assert lab["agreement_with_ties"] == sum(pairs) / len(pairs)
    assert s["models"]["alpaca-7b"]["win_rate_by_category"]


def test_garbage_response_body_is_an_error_not_a_verdict(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    def broken(req: dict[str, Any]) -> str | Reply:
        if "Python and JavaScript" in req["messages"][-1]["content"]:
            return Reply(raw_body="<html>oops</html>")
        return prefer_longer(req)

    with ScriptedServer(broken) as server:
        cfg = _cfg(
            server,
            tmp_path,
            questions=str(vicuna["questions"]),
            limit=4,
            max_retries=1,
            answers=[str(vicuna["answer"]("alpaca-13b"))],
            baseline=str(vicuna["answer"](BASE)),
        )
        with pytest.raises(JudgeIncomplete, match="1 of 4 items got no verdict"):
            grade(cfg, progress=False)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    js = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").open()]
    assert [j["question_id"] for j in js if j["error"]] == ["3"]
    assert next(j["error"] for j in js if j["error"]).startswith("request failed")
    assert s["errors"] == 1 and s["n"] == 3 and s["wins"] + s["losses"] + s["ties"] == 3


def test_pairwise_multi_turn_judges_each_turn(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    qs = shared_data / "fastchat/mt_bench/question.jsonl"
    files = [_mt_answers(tmp_path, qs, "short", "x"), _mt_answers(tmp_path, qs, "long", "xx")]
    seen: list[dict[str, Any]] = []

    def judge(req: dict[str, Any]) -> str:
        seen.append(req)
        return prefer_longer(req)

    with ScriptedServer(judge) as server:
        cfg = _cfg(server, tmp_path, questions=str(qs), limit=5, answers=[str(files[0])], baseline=str(files[1]))
        s = grade(cfg, progress=False).summary
    assert len(seen) == 5 * 2 * 2  # five questions, two turns, both orders
    # turn 1: "short ...: x" and "long ...: xx" have the same length (ties); turn 2: the longer one wins
    assert (s["n"], s["ties"], s["losses"]) == (10, 5, 5)
    turn2 = [r["messages"][-1]["content"] for r in seen if "### User (turn 2)" in r["messages"][-1]["content"]]
    assert len(turn2) == 10 and all("reply 1 to" in t and "reply 2 to" in t for t in turn2)

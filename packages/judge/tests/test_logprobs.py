"""Probability verdicts: read from the verdict token's `top_logprobs`, against scripted judges that return them in
OpenAI's shapes (chat and completion), through the real litellm, on the real Vicuna-80 answers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.llm import TokenLogprob
from huarizo.formats.testing import (
    Reply,
    ScriptedServer,
    first_with,
    longer_with,
    prefer_longer,
    prompt_text,
    rating_with,
    shown_answers,
)
from huarizo.judge import GradeConfig, JudgeIncomplete, grade
from huarizo.judge.verdicts import normalise, pair_probs, rating_probs

BASE = "vicuna-13b"


def _texts(path: Path) -> dict[int, str]:
    return {(d := json.loads(line))["question_id"]: d["text"] for line in path.open()}


def _cfg(
    server: ScriptedServer, tmp: Path, vicuna: dict[str, Any], model: str = "alpaca-13b", **kw: Any
) -> GradeConfig:
    return GradeConfig(
        judge={"model": "openai/judge", "api_base": server.url, "cache_dir": str(tmp / "cache"), "max_retries": 0},
        questions=str(vicuna["questions"]),
        answers=[str(vicuna["answer"](model))],
        baseline=str(vicuna["answer"](BASE)),
        out=str(tmp / "out"),
        bootstrap=200,
        **kw,
    )


def test_tokens_are_normalised_and_spellings_added_up() -> None:
    tokens = ("A", " A", "[[A", "A]]", "ĠA", "▁B", " [[ C", "10", " 7.")
    assert [normalise(t) for t in tokens] == ["A", "A", "A", "A", "A", "B", "C", "10", "7"]
    first = TokenLogprob("[[", -0.01, (("[[", -0.01), ("[", -4.0)))
    verdict = TokenLogprob(
        "A", math.log(0.5), (("A", math.log(0.5)), (" A", math.log(0.1)), ("ĠB", math.log(0.3)), ("a", -3.0))
    )
    probs = pair_probs([first, verdict])
    assert probs == pytest.approx({"A": 0.6 / 0.9, "B": 0.3 / 0.9, "C": 0.0})  # "a" is not a verdict
    assert pair_probs([first]) is None


def test_ten_written_as_one_then_zero_counts_as_ten() -> None:
    one = TokenLogprob("1", math.log(0.6), (("1", math.log(0.6)), ("9", math.log(0.4))))
    zero = TokenLogprob("0", math.log(0.75), (("0", math.log(0.75)), ("]]", math.log(0.25))))
    assert rating_probs([one, zero]) == pytest.approx({1: 0.15, 9: 0.4, 10: 0.45})


def test_a_judge_with_07_on_the_first_answer_in_both_orders_is_a_tie_with_zero_consistency(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(first_with(0.7)) as server:
        s = grade(_cfg(server, tmp_path, vicuna, limit=20), progress=False).summary
        asked = [r for r in server.requests if shown_answers(r)]
        assert len(server.requests) == 1 + 40  # the probe, then both orders of 20 questions, each asked once
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 and r["max_tokens"] == 4 for r in asked)
    assert (s["n"], s["ties"], s["wins"], s["losses"], s["errors"]) == (20, 20, 0, 0, 0)
    assert s["win_rate"] == 0.5 and s["position_consistency"] == 0.0 and s["inconsistent"] == 20
    assert s["position_consistency_by_reading"] == {"logprobs": {"n": 20, "position_consistency": 0.0}}
    assert s["verdicts_read"] == {"logprobs": 40} and s["first_position_preference"] == 1.0
    js = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").open()]
    assert all(j["preference"] == 0.5 and j["order_preferences"] == pytest.approx([0.7, 0.3]) for j in js)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "40 from the judge's token probabilities" in report
    assert "position consistency, verdicts read from logprobs | 0.0% of 20" in report


def test_a_judge_with_09_on_the_longer_answer_reproduces_the_hand_count(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    mine, base = _texts(vicuna["answer"]("bard")), _texts(vicuna["answer"](BASE))
    wins = sum(len(mine[q]) > len(base[q]) for q in base)
    losses = sum(len(mine[q]) < len(base[q]) for q in base)
    ties = 80 - wins - losses
    with ScriptedServer(longer_with(0.9)) as server:
        s = grade(_cfg(server, tmp_path, vicuna, "bard"), progress=False).summary
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (80, wins, losses, ties)
    assert s["win_rate"] == pytest.approx((0.9 * wins + 0.1 * losses + 0.5 * ties) / 80)
    assert s["position_consistency"] == 1.0 and s["prefers_longer"] == 1.0
    se = s["standard_error"]
    assert se is not None and 0 < se < 0.1 and s["win_rate_ci"][0] < s["win_rate"] < s["win_rate_ci"][1]


def test_a_judge_that_never_writes_a_verdict_still_gives_one_for_every_question(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    mute = longer_with(0.8, text="Both answers have merits.")
    with ScriptedServer(mute) as server:
        s = grade(_cfg(server, tmp_path, vicuna), progress=False).summary
        with pytest.raises(JudgeIncomplete, match=r"80 of 80 items got no verdict \(80 no verdict in 1 replies"):
            grade(_cfg(server, tmp_path / "text", vicuna, verdict="text", parse_retries=0), progress=False)
    assert (s["n"], s["errors"], s["verdicts_read"]) == (80, 0, {"logprobs": 160})
    # read from text, the same judge gives nothing: no rate, rating or plot is drawn from zero data
    text = json.loads((tmp_path / "text" / "out" / "summary.json").read_text())
    assert text["n"] == 0 and text["win_rate"] is None and text["bradley_terry"] is None
    assert not list((tmp_path / "text" / "out").glob("*.png"))
    report = (tmp_path / "text" / "out" / "report.md").read_text()
    assert "No rating, rate or plot: nothing was judged." in report and "> Both answers have merits." in report


def test_completion_mode_with_a_template_ends_the_prompt_at_the_verdict(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    """A base model as judge (the quickstart's embedded model): plain prompts in a Huarizo template, completion
    logprobs (`logprobs: K`), the prompt ending where the verdict token comes."""
    seen: list[dict[str, Any]] = []

    def base_model(req: dict[str, Any]) -> Reply:
        seen.append(req)
        if not shown_answers(req):
            return Reply("A", logprobs=[{"A": -0.1, "B": -2.5}])
        assert "messages" not in req and req["prompt"].endswith("### Response:\nVerdict: [[")
        return Reply(" B]]", logprobs=[{" B": math.log(0.6), "A": math.log(0.3), "C": math.log(0.1)}, {"]]": 0.0}])

    with ScriptedServer(base_model) as server:
        s = grade(_cfg(server, tmp_path, vicuna, limit=5, template="alpaca", top_logprobs=5), progress=False).summary
    verdicts = [r for r in seen if shown_answers(r)]
    assert len(verdicts) == 10 and all(r["logprobs"] == 5 and "top_logprobs" not in r for r in verdicts)
    assert "Reply with the verdict alone" in verdicts[0]["prompt"]
    assert (s["n"], s["errors"], s["verdicts_read"], s["ties"]) == (5, 0, {"logprobs": 10}, 5)  # B in both orders


def test_single_grading_reads_the_expected_rating(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    qs = shared_data / "fastchat/mt_bench/question.jsonl"
    rows = [
        {"question_id": q["question_id"], "model_id": "m", "choices": [{"turns": [f"answer {i}", "second"]}]}
        for i, q in enumerate(json.loads(line) for line in qs.open())
    ]
    answers = tmp_path / "m.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def rate(answer: str) -> dict[int, float]:
        return {7: 0.5, 8: 0.3, 9: 0.2} if answer == "second" else {3: 0.5, 4: 0.5}

    with ScriptedServer(rating_with(rate)) as server:
        cfg = GradeConfig(
            mode="single",
            judge={"model": "openai/judge", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(qs),
            answers=[str(answers)],
            out=str(tmp_path / "out"),
            limit=10,
            bootstrap=100,
        )
        s = grade(cfg, progress=False).summary
    m = s["models"]["m"]
    assert m["n"] == 20 and m["by_turn"] == pytest.approx({"1": 3.5, "2": 7.7})
    assert s["verdicts_read"] == {"logprobs": 20} and m["standard_error"] == pytest.approx(2.1 / math.sqrt(19))


def test_auto_reads_text_from_a_judge_without_logprobs_asking_each_item_once(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(prefer_longer) as server:
        s = grade(_cfg(server, tmp_path, vicuna, limit=10), progress=False).summary
        bodies = list(server.requests)
    probe = [b for b in bodies if "top_logprobs" in b]
    assert len(probe) == 1 and "Reply with the letter A." in prompt_text(probe[0])
    assert len(bodies) == 1 + 20 and s["verdicts_read"] == {"text": 20} and s["errors"] == 0


def test_logprobs_mode_says_why_a_judge_without_logprobs_gives_no_verdict(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    why = r"3 of 3 items got no verdict \(3 no logprobs in the reply\)"
    with ScriptedServer(prefer_longer) as server, pytest.raises(JudgeIncomplete, match=why):
        grade(_cfg(server, tmp_path, vicuna, limit=3, verdict="logprobs"), progress=False)

"""`huarizo judge answer`: concurrent, cached, turn by turn, and resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from huarizo.formats import load_answers, load_questions
from huarizo.formats.testing import Reply, ScriptedServer
from huarizo.judge import AnswerConfig, answer


def echo(req: dict[str, Any]) -> str:
    """An assistant that says which turn it answers and how many replies of its own it has seen."""
    msgs = req["messages"]
    mine = sum(m["role"] == "assistant" for m in msgs)
    return f"answer {mine + 1} to: {msgs[-1]['content'][:30]}"


def test_multi_turn_answered_turn_by_turn_and_cached(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    qs_path = shared_data / "fastchat/mt_bench/question.jsonl"
    out = tmp_path / "answers.jsonl"
    with ScriptedServer(echo) as server:
        cfg = AnswerConfig(
            endpoint={"model": "openai/tiny", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(qs_path),
            out=str(out),
            limit=10,
            model_id="tiny",
        )
        result = answer(cfg, progress=False)
        assert result.counts["asked"] == 20 and len(server.requests) == 20
        second = [r for r in server.requests if len(r["messages"]) == 3]
        assert len(second) == 10 and all(r["messages"][1]["content"].startswith("answer 1 to") for r in second)
        # a fresh output from the same requests costs nothing: the cache answers
        result = answer(cfg.model_copy(update={"out": str(tmp_path / "again.jsonl")}), progress=False)
        assert len(server.requests) == 20 and result.counts == {
            "questions": 10,
            "answered": 10,
            "kept": 0,
            "replaced": 0,
            "failed": 0,
            "asked": 0,
            "cached": 20,
            "turns": 20,
            "ended": 20,
            "cut": 0,
            "length": 0,
        }
    assert (tmp_path / "again.jsonl").read_text().count("\n") == 10
    qs = load_questions(qs_path)
    got = load_answers(out, qs)["tiny"]
    assert len(got) == 10 and got["81"].turns[1].startswith("answer 2 to: Rewrite your previous")


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "answers.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUARIZO_CACHE": str(tmp_path / "hc")}
    cmd = [
        sys.executable,
        "-c",
        "from huarizo.formats.cli import main; raise SystemExit(main())",
        "judge",
        "answer",
        "--endpoint-model",
        "openai/tiny",
        "--questions",
        str(vicuna["questions"]),
        "--out",
        str(out),
        "--concurrency",
        "4",
    ]
    with ScriptedServer(echo, latency=0.05) as server:
        proc = subprocess.Popen([*cmd, "--api-base", server.url], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (
            proc.poll() is None
            and time.monotonic() < deadline
            and (not out.exists() or out.read_text().count("\n") < 10)
        ):
            time.sleep(0.02)  # polling the output, not synchronising: we kill as soon as enough is written
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = out.read_text().count("\n")
        assert 10 <= before < 80, before
        with open(out, "a") as fh:  # a line cut off mid-write, as a crash can leave it
            fh.write('{"question_id": 77, "answer_id": "to')
        rc = subprocess.run([*cmd, "--api-base", server.url], env=env, stderr=subprocess.PIPE, text=True)
        assert rc.returncode == 0, rc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["question_id"] for r in rows]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 81)]  # every question once: none lost, none twice
    assert all(r["choices"][0]["turns"][0].startswith("answer 1 to") for r in rows)


def test_unknown_layout_is_a_clear_cli_error(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"prompt": "hello"}\n')
    from huarizo.formats.cli import main

    assert (
        main(["judge", "answer", "--model", "openai/x", "--questions", str(bad), "--out", str(tmp_path / "a.jsonl")])
        == 1
    )


def test_template_sends_plain_prompts_for_base_models(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    from huarizo.formats.templates import get_template

    with ScriptedServer(lambda req: " A plain answer.") as server:
        cfg = AnswerConfig(
            endpoint={"model": "openai/base", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(vicuna["questions"]),
            out=str(tmp_path / "a.jsonl"),
            limit=2,
            template="alpaca",
        )
        answer(cfg, progress=False)
        req = next(r for r in server.requests if "time management" in r["prompt"])
    assert "messages" not in req and "### Instruction:\nHow can I improve my time management skills?" in req["prompt"]
    assert req["prompt"].endswith("### Response:") and req["stop"] == get_template("alpaca").stop_strings()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").open()]
    assert [r["choices"][0]["turns"] for r in rows] == [["A plain answer."], ["A plain answer."]]


def test_failed_questions_are_reported_and_answered_on_rerun(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from huarizo.formats.testing import Reply
    from huarizo.judge import JudgeIncomplete

    broken = {"on": True}

    def flaky(req: dict[str, Any]) -> str | Reply:
        if broken["on"] and "Python and JavaScript" in req["messages"][-1]["content"]:
            return Reply(status=400)  # not retryable: fails at once
        return echo(req)

    out = tmp_path / "a.jsonl"
    with ScriptedServer(flaky) as server:
        cfg = AnswerConfig(
            endpoint={"model": "openai/m", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(vicuna["questions"]),
            out=str(out),
            limit=6,
        )
        with pytest.raises(JudgeIncomplete, match=r"1 questions failed \(rerun to retry them") as failed:
            answer(cfg, progress=False)
        assert failed.value.result.counts["failed"] == 1 and failed.value.result.counts["answered"] == 5  # type: ignore[attr-defined]
        assert sorted(json.loads(line)["question_id"] for line in out.open()) == ["1", "2", "4", "5", "6"]
        broken["on"] = False
        result = answer(cfg, progress=False)
        assert result.counts["asked"] == 1 and result.counts["kept"] == 5  # only the failed question is asked again
    assert sorted(json.loads(line)["question_id"] for line in out.open()) == ["1", "2", "3", "4", "5", "6"]


def test_answers_of_a_retrained_model_under_the_same_name_are_asked_again(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    """`huarizo serve` reports a fingerprint of its model: after a retrain served under the old name, the rerun
    answers every question again and moves the old answers aside instead of grading them."""
    out = tmp_path / "answers.jsonl"
    with ScriptedServer(lambda req: "old model", model="m", fingerprint="fp-old") as server:
        cfg = AnswerConfig(
            endpoint={"model": "openai/m", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(vicuna["questions"]),
            out=str(out),
            limit=3,
        )
        assert answer(cfg, progress=False).counts["answered"] == 3
        assert answer(cfg, progress=False).counts["kept"] == 3 and len(server.requests) == 3
        server.fingerprint, server.script = "fp-new", lambda req: "new model"  # retrained, same name
        result = answer(cfg, progress=False)
    assert result.fingerprint == "fp-new"
    assert (result.counts["answered"], result.counts["kept"], result.counts["replaced"]) == (3, 0, 3)
    rows = [json.loads(line) for line in out.open()]
    assert [r["choices"][0]["turns"][0] for r in rows] == ["new model"] * 3
    assert {r["fingerprint"] for r in rows} == {"fp-new"}
    aside = [json.loads(line) for line in (tmp_path / "answers.fp-old.jsonl").open()]
    assert [r["choices"][0]["turns"][0] for r in aside] == ["old model"] * 3  # nothing lost


def test_answers_record_why_each_turn_ended(tmp_path: Path, vicuna: dict[str, Any]) -> None:
    """A base model that writes the template's next section header is cut by a stop string: that is not an answer
    that ended by itself, and the counts (what the pipeline's stop rate reads) keep the two apart."""
    first, second, third = load_questions(vicuna["questions"]).questions[:3]
    replies = {
        first.turns[0]: Reply("a", stop_reason=None),  # the model's own end of turn
        second.turns[0]: Reply("b", stop_reason="### Response:"),  # a stop string cut it
        third.turns[0]: Reply("c", finish_reason="length"),
    }
    with ScriptedServer(lambda req: replies[req["messages"][-1]["content"]]) as server:
        cfg = AnswerConfig(
            endpoint={"model": "openai/m", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            questions=str(vicuna["questions"]),
            out=str(tmp_path / "a.jsonl"),
            limit=3,
        )
        result = answer(cfg, progress=False)
    counts = {k: result.counts[k] for k in ("turns", "ended", "cut", "length")}
    assert counts == {"turns": 3, "ended": 1, "cut": 1, "length": 1}
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    by_id = {str(r["question_id"]): r["choices"][0] for r in rows}
    assert by_id[first.question_id]["finish_reasons"] == ["stop"] and by_id[first.question_id]["stop_reasons"] == [None]
    assert by_id[second.question_id]["stop_reasons"] == ["### Response:"]
    assert by_id[third.question_id]["finish_reasons"] == ["length"]

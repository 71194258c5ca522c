"""`huarizo datagen run` against a scripted teacher on loopback, through the real litellm: both pipelines, both
modes, faults, resumption (including kill -9), provenance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.datagen import DatagenConfig, RoundFailed, run
from huarizo.datagen.generate import load_seeds
from huarizo.formats import HuarizoError, StageResult
from huarizo.formats.cli import main
from huarizo.formats.testing import PromptCounter, Reply, ScriptedServer, prompt_text, scripted_teacher


def _cfg(server: ScriptedServer, out: Path, *overrides: str) -> DatagenConfig:
    base = [
        f"output_dir={out}",
        "progress=false",
        "teacher.model=openai/teacher",
        f"teacher.api_base={server.url}",
        "teacher.max_retries=3",
    ]
    return DatagenConfig.load(None, [*base, *overrides])


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_alpaca_pipeline_writes_valid_records_with_provenance(
    mode: str, teacher: ScriptedServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = run(_cfg(teacher, out, "num_records=30", "requests_per_round=2", f"teacher.mode={mode}"))
    assert result.kept == 30 and result.requests == len(teacher.requests) == 2
    assert main(["validate", str(out / "records.jsonl"), "--format", "alpaca"]) == 0
    recs = _records(out)
    assert len({r["instruction"] for r in recs}) == 30
    prov = recs[0]["provenance"]
    assert prov["teacher"] == "openai/teacher" and prov["mode"] == mode and prov["stage"] == "alpaca-batch"
    assert prov["prompt_id"] == "alpaca/batch@2" and prov["params"]["temperature"] == 1.0
    hashes = {p.stem for p in (out / "cache").rglob("*.json")}
    assert prov["request_hash"] in hashes
    body = teacher.requests[0]
    if mode == "completion":
        assert body["prompt"].endswith("Task 4\nInstruction:")
    else:
        assert "Write 20 new tasks" in body["messages"][0]["content"]
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.cost is None  # the scripted model has no price: unknown, not free
    assert (out / "config.yaml").exists() and len((out / "rounds.jsonl").read_text().splitlines()) == result.rounds


def test_self_instruct_bootstraps_from_6_human_and_2_machine_instructions(
    teacher: ScriptedServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    seeds = {s.instruction for s in load_seeds(None)}
    result = run(
        _cfg(
            teacher, out, "pipeline=self-instruct", "num_records=60", "requests_per_round=2", "teacher.mode=completion"
        )
    )
    assert result.kept == 60 and result.rounds >= 2
    recs = _records(out)
    gen = [r["prompt"] for r in teacher.requests if r["prompt"].rstrip().endswith("Task 9:")]
    in_context = [re.findall(r"^Task \d+: (.+)$", p, re.MULTILINE) for p in gen]
    assert all(len(c) == 8 for c in in_context)
    assert all(all(t in seeds for t in c) for c in in_context[:2])  # round 0: only human seeds
    round0 = {r["instruction"] for r in recs if r["provenance"]["round"] == 0}
    for c in in_context[2:4]:  # round 1: 6 human + 2 machine
        assert sum(t in seeds for t in c) == 6 and sum(t in round0 for t in c) == 2
    stages = Counter(r["provenance"]["prompt_id"] for r in recs)
    assert stages["self-instruct/instances-input-first@2"] > 0 and stages["self-instruct/instances-output-first@2"] > 0
    for r in recs:
        first = r["provenance"]["prompt_id"].endswith("output-first@2")
        assert first == r["provenance"]["is_classification"]
        assert [s["stage"] for s in r["provenance"]["steps"]] == ["instructions", "classify", "instances"]
    assert any("Classification:" in r["prompt"] for r in teacher.requests)
    assert main(["validate", str(out / "records.jsonl"), "--format", "alpaca"]) == 0


def test_faults_are_retried_and_garbage_is_rejected(tmp_path: Path) -> None:
    counter = PromptCounter()

    def script(req: dict[str, Any]) -> str | Reply:
        k, order = counter(req)
        kind = order % 6
        if k == 0 and kind == 0:
            return Reply(status=429)
        if k == 0 and kind == 1:
            return Reply(status=500)
        if k == 0 and kind == 2:
            return Reply(raw_body="{not json")
        if kind == 3:
            return "I cannot do that. Here is a poem instead: roses are red."  # malformed for good
        if k == 0 and kind == 4:
            return Reply(text="late", delay=2.5)
        return scripted_teacher(req)

    with ScriptedServer(script) as server:
        out = tmp_path / "run"
        result = run(_cfg(server, out, "num_records=50", "requests_per_round=6", "teacher.request_timeout=1.5"))
    journal = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert sum(j["retries"] for j in journal) >= 3
    # completion mode: the poem continues "Instruction:", so it reads as an instruction with no output
    assert result.kept == 50 and result.reasons.get("no-output", 0) >= 1 and result.failed == 0
    assert main(["validate", str(out / "records.jsonl"), "--format", "alpaca"]) == 0


def test_a_reply_cut_by_the_length_limit_loses_only_its_last_task(tmp_path: Path) -> None:
    def script(req: dict[str, Any]) -> Reply:
        text = scripted_teacher(req)
        return Reply(text=text[: text.rindex("Output:") + 12], finish_reason="length")

    with ScriptedServer(script) as server:
        out = tmp_path / "run"
        result = run(
            _cfg(server, out, "num_records=100", "max_rounds=1", "requests_per_round=1", "filter.checks=[length]")
        )
    assert result.kept == 19  # 20 tasks asked, the cut one dropped, and rejected as such
    assert result.reasons == {"truncated": 1} and result.generated == 20


def test_resume_continues_and_a_finished_run_pays_nothing(teacher: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(_cfg(teacher, out, "num_records=25", "requests_per_round=1"))
    n = len(teacher.requests)
    again = run(_cfg(teacher, out, "num_records=25", "requests_per_round=1"))
    assert len(teacher.requests) == n and again.kept == 25
    first = _records(out)
    more = run(_cfg(teacher, out, "num_records=50", "requests_per_round=1"))
    assert more.kept == 50 and more.rounds > again.rounds
    recs = _records(out)
    assert recs[:25] == first and len({r["instruction"] for r in recs}) == 50


def test_changed_settings_refuse_to_resume(teacher: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(_cfg(teacher, out, "num_records=5", "requests_per_round=1"))
    with pytest.raises(HuarizoError, match="different settings"):
        run(_cfg(teacher, out, "num_records=5", "requests_per_round=1", "teacher.temperature=0.3"))
    run(_cfg(teacher, out, "num_records=5", "requests_per_round=1", "teacher.concurrency=2"))  # harmless change


def test_teacher_down_stops_with_a_clear_error_and_resumes(tmp_path: Path) -> None:
    down = True
    with ScriptedServer(lambda req: Reply(status=503) if down else scripted_teacher(req)) as server:
        out = tmp_path / "run"
        with pytest.raises(HuarizoError, match=r"every request.*rerun"):
            run(_cfg(server, out, "num_records=10", "teacher.max_retries=1"))
        assert (out / "records.jsonl").read_text() == ""
        down = False
        assert run(_cfg(server, out, "num_records=10", "teacher.max_retries=1")).kept == 10


def test_kill_9_resumes_without_loss_duplicates_or_paying_twice(tmp_path: Path) -> None:
    """A subprocess is killed with SIGKILL mid-run, then rerun; the result equals an uninterrupted run."""
    settings = {
        "num_records": 150,
        "requests_per_round": 2,
        "progress": False,
        "alpaca": {"tasks_per_request": 5},
        "teacher": {"model": "openai/teacher", "concurrency": 2},
    }

    def config(server: ScriptedServer, out: Path) -> Path:
        data = {**settings, "output_dir": str(out), "teacher": {**settings["teacher"], "api_base": server.url}}  # type: ignore[dict-item]
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(data))
        return path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "huarizo")]
    with ScriptedServer(scripted_teacher, latency=0.1) as ref_server:
        ref = tmp_path / "reference"
        assert run(DatagenConfig.load(config(ref_server, ref))).kept == 150
    with ScriptedServer(scripted_teacher, latency=0.1) as server:
        out = tmp_path / "killed"
        cfg_path = config(server, out)
        proc = subprocess.Popen([*cmd, "datagen", "run", str(cfg_path)], env=env)
        records = out / "records.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists() and records.read_text().count("\n") >= 30:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = records.read_text().count("\n")
        assert 30 <= written < 150
        resumed = subprocess.run([*cmd, "datagen", "run", str(cfg_path)], env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
    assert _records(out) == _records(ref)  # nothing lost, nothing duplicated, same order
    bodies = Counter(json.dumps(r, sort_keys=True) for r in server.requests)
    assert set(bodies) == {json.dumps(r, sort_keys=True) for r in ref_server.requests}
    assert sum(bodies.values()) - len(bodies) <= 2  # only requests in flight at the kill (concurrency 2) were resent


def test_any_seed_file_can_be_used(shared_data: Path, teacher: ScriptedServer, tmp_path: Path) -> None:
    seeds_file = shared_data / "stanford_alpaca/seed_tasks.jsonl"
    run(
        _cfg(
            teacher,
            tmp_path / "run",
            f"seeds={seeds_file}",
            "pipeline=self-instruct",
            "num_records=5",
            "requests_per_round=1",
            "teacher.mode=completion",
        )
    )
    alpaca = {" ".join(json.loads(line)["instruction"].split()) for line in seeds_file.read_text().splitlines()}
    in_context = re.findall(r"^Task \d+: (.+)$", teacher.requests[0]["prompt"], re.MULTILINE)
    assert len(in_context) == 8 and all(t in alpaca for t in in_context)


# -- honest failures: a request that fails for good keeps its round uncommitted; the rerun retries it ---------------


def _round_prompts(ref: Path, rnd: int, stage: str) -> set[str]:
    """The prompts of a reference run's `stage` requests in round `rnd` that led to kept records (from the cache)."""
    hashes = {
        step["request_hash"]
        for r in _records(ref)
        if r["provenance"]["round"] == rnd
        for step in r["provenance"]["steps"]
        if step["stage"] == stage
    }
    out = set()
    for h in hashes:
        entry = json.loads((ref / "cache" / h[:2] / f"{h}.json").read_text())
        out.add(prompt_text(entry["request"]))
    return out


@pytest.mark.parametrize(
    ("pipeline", "stage"), [("alpaca", "alpaca-batch"), ("self-instruct", "classify"), ("self-instruct", "instances")]
)
def test_requests_failing_for_good_stop_the_run_and_the_rerun_retries_only_them(
    pipeline: str, stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Some requests of round 1 get 500s beyond max_retries: the run exits 1 naming them, round 0 stays committed,
    round 1 does not; with the server healthy again, the rerun sends only those requests again (and what later
    rounds need) and its records equal a fault-free run's."""
    settings = [f"pipeline={pipeline}", "num_records=40", "requests_per_round=3", "alpaca.tasks_per_request=5",
                "self_instruct.instructions_per_request=2", "teacher.max_retries=1"]  # fmt: skip
    with ScriptedServer(scripted_teacher) as ref_server:
        ref = tmp_path / "reference"
        assert run(_cfg(ref_server, ref, *settings)).kept == 40
    assert {r["provenance"]["round"] for r in _records(ref)} >= {0, 1, 2}
    prompts = sorted(_round_prompts(ref, 1, stage))
    failing = set(prompts[: max(1, len(prompts) // 2)])
    healthy = False

    def script(req: dict[str, Any]) -> str | Reply:
        if not healthy and prompt_text(req) in failing:
            return Reply(status=500)
        return scripted_teacher(req)

    with ScriptedServer(script) as server:
        out = tmp_path / "run"
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(_cfg(server, out, *settings).to_yaml())
        assert main(["datagen", "run", str(cfg_path)]) == 1
        printed = capsys.readouterr()
        assert printed.err.count("\n") == 1 and "Traceback" not in printed.err
        assert f"round 1: {len(failing)} of " in printed.err and "rerun the same command" in printed.err
        with pytest.raises(RoundFailed) as info:  # the same, through the Python API: nothing new was committed
            run(_cfg(server, out, *settings))
        failed = info.value.result.failed_requests
        assert {f.stage for f in failed} == {stage} and len(failed) == len(failing)
        assert all(f"{stage} {f.request_hash[:12]}" in printed.err for f in failed[:5])
        assert {r["provenance"]["round"] for r in _records(out)} == {0}
        assert info.value.result.failed == len(failing) and info.value.result.kept == len(_records(out))
        journal = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        assert [j.get("incomplete") for j in journal if j["round"] is None] == [1, 1]
        sent_before = len(server.requests)
        answered = {prompt_text(r) for r in server.requests} - failing

        healthy = True
        result = run(_cfg(server, out, *settings))
        resent = [prompt_text(r) for r in server.requests[sent_before:]]
    assert _records(out) == _records(ref)  # the same records as a run that met no fault
    assert result.kept == 40 and result.failed == 0 and result.failed_requests == []
    assert failing <= set(resent) and not answered & set(resent)  # only what failed was asked again


# -- the data funnel: every task the teacher wrote is kept or rejected with a reason --------------------------------

_BATCH_REPLY = (
    " Add the two numbers.\nInput: 2, 3\nOutput: 5\n\n"
    "Task 5\nInstruction:\nInput: a list\nOutput: something\n\n"  # empty instruction
    "Task 6\nInstruction: Name a yellow fruit.\nInput: <no input>\n\n"  # no output
    "Task 7\nInstruction: Describe the picture of a cat.\nInput: <no input>\nOutput: A cat.\n\n"  # keywords
    "Task 8\nInstruction: Give a synonym of the word.\nInput: happy\nOutput: glad\n\n"
    "Task 9\nInstruction: Translate the word into French.\nInput: cat\nOutput: ch"  # cut by max_tokens
)


def test_every_dropped_task_is_in_the_rejects_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = threading.Event()

    def script(req: dict[str, Any]) -> Reply:
        if not first.is_set():  # whichever request comes first gets no task in the layout
            first.set()
            return Reply(text="Sorry, no.\n", finish_reason="stop")
        return Reply(text=_BATCH_REPLY, finish_reason="length")

    seen: list[tuple[int, int]] = []
    with ScriptedServer(script) as server:
        out = tmp_path / "run"
        cfg = _cfg(server, out, "num_records=1", "max_rounds=1", "requests_per_round=3", "alpaca.tasks_per_request=6")
        result = run(cfg, on_progress=lambda kept, total, info: seen.append((kept, total)))
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    kept = _records(out)
    assert result.generated == len(kept) + len(rejects) == result.kept + result.rejected
    assert result.counts["generated"] == result.generated and result.counts["kept"] == result.kept == 1
    assert sum(result.reasons.values()) == result.rejected == len(rejects)
    assert result.reasons == {"empty-instruction": 2, "no-output": 3, "keywords": 2, "truncated": 2, "duplicate": 2,
                              "surplus": 1}  # fmt: skip
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["truncated"]["instruction"] == "Translate the word into French."
    # in completion mode the reply continues "Instruction:", so "Sorry, no." is an instruction with no output
    assert sorted(r["instruction"] for r in rejects if r["reason"] == "no-output") == [
        "Name a yellow fruit.",
        "Name a yellow fruit.",
        "Sorry, no.",
    ]
    assert by_reason["surplus"]["instruction"] == "Give a synonym of the word."  # kept by the filter, beyond 1
    assert all(r["provenance"]["request_hash"] for r in rejects)
    assert seen[-1] == (1, 1) and len(seen) == 3 + 1  # each request, then the round


def test_result_is_a_stage_result_and_a_priced_teacher_has_a_cost(tmp_path: Path) -> None:
    with ScriptedServer(scripted_teacher, model="gpt-4o-mini") as server:
        out = tmp_path / "run"
        result = run(_cfg(server, out, "num_records=5", "requests_per_round=1", "teacher.model=openai/gpt-4o-mini"))
        again = run(_cfg(server, out, "num_records=5", "requests_per_round=1", "teacher.model=openai/gpt-4o-mini"))
    assert isinstance(result, StageResult) and result.cost is not None and result.cost > 0
    assert set(result.outputs) == {"records", "rejects", "rounds", "config"}
    assert all(p.exists() for p in result.outputs.values()) and result.records_path == result.outputs["records"]
    assert result.seconds > 0 and result.tokens == result.prompt_tokens + result.completion_tokens > 0
    assert again.model_dump(exclude={"seconds"}) == result.model_dump(exclude={"seconds"})  # finished: nothing to do
    assert json.loads(again.model_dump_json())["counts"]["kept"] == 5


def test_a_missing_key_is_one_clear_error_and_no_key_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, teacher: ScriptedServer
) -> None:
    out = tmp_path / "run"
    monkeypatch.delenv("HUARIZO_TEST_TEACHER_KEY", raising=False)
    with pytest.raises(HuarizoError, match="HUARIZO_TEST_TEACHER_KEY is not set"):
        run(_cfg(teacher, out, "num_records=2", "teacher.api_key_env=HUARIZO_TEST_TEACHER_KEY"))
    monkeypatch.setenv("HUARIZO_TEST_TEACHER_KEY", "sk-very-secret")
    run(_cfg(teacher, out, "num_records=2", "requests_per_round=1", "teacher.api_key_env=HUARIZO_TEST_TEACHER_KEY"))
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "sk-very-secret" not in written and "HUARIZO_TEST_TEACHER_KEY" in (out / "config.yaml").read_text()

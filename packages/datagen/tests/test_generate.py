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

from huarizo.datagen import DatagenConfig, run
from huarizo.datagen.generate import load_seeds
from huarizo.datagen.scripted import scripted_teacher
from huarizo.formats import HuarizoError
from huarizo.formats.cli import main
from huarizo.formats.testing import Reply, ScriptedServer, prompt_text


def _cfg(server: ScriptedServer, out: Path, *overrides: str) -> DatagenConfig:
    base = [
        f"output_dir={out}",
        "progress=false",
        "teacher.model=openai/teacher",
        f"teacher.api_base={server.url}",
        "teacher.backoff_base=0.01",
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
    assert prov["prompt_id"] == "alpaca/batch@1" and prov["params"]["temperature"] == 1.0
    hashes = {p.stem for p in (out / "cache").rglob("*.json")}
    assert prov["request_hash"] in hashes
    body = teacher.requests[0]
    if mode == "completion":
        assert body["prompt"].endswith("Task 4\nInstruction:")
    else:
        assert "Write 20 new tasks" in body["messages"][0]["content"]
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.cost == 0.0
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
    assert stages["self-instruct/instances-input-first@1"] > 0 and stages["self-instruct/instances-output-first@1"] > 0
    for r in recs:
        first = r["provenance"]["prompt_id"].endswith("output-first@1")
        assert first == r["provenance"]["is_classification"]
        assert [s["stage"] for s in r["provenance"]["steps"]] == ["instructions", "classify", "instances"]
    assert any("Classification:" in r["prompt"] for r in teacher.requests)
    assert main(["validate", str(out / "records.jsonl"), "--format", "alpaca"]) == 0


def test_faults_are_retried_and_garbage_is_rejected(tmp_path: Path) -> None:
    attempts: Counter[str] = Counter()
    order: dict[str, int] = {}
    lock = threading.Lock()

    def script(req: dict[str, Any]) -> str | Reply:
        p = prompt_text(req)
        with lock:
            k = attempts[p]
            attempts[p] += 1
            kind = order.setdefault(p, len(order)) % 6
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
        result = run(_cfg(server, out, "num_records=50", "requests_per_round=6", "teacher.timeout=1.5"))
    journal = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert sum(j["retries"] for j in journal) >= 3
    assert result.kept == 50 and result.reasons.get("unparsed", 0) >= 1
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
    assert result.kept == 19  # 20 tasks asked, the cut one dropped


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

"""Faults: each is one clear line naming the stage and the cause, exit 1, nothing finished lost, and the rerun
continues. A missing seed file, an unreachable teacher, a read-only and a full run folder, a trainer killed midway,
the run itself killed with -9 during training, a server that fails to start."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.formats.cli import main
from huarizo.pipeline import RecipeConfig, StageError, run_recipe

from .conftest import REPO

KILL_HOOK = REPO / "packages" / "trainer" / "tests" / "kill_hook"
"""The trainer tests' fault injection: a sitecustomize that SIGKILLs the trainer after a given step."""


def datagen_recipe(run: Path, teacher_url: str, **datagen: Any) -> dict[str, Any]:
    return {
        "run_dir": str(run),
        "include_seeds": True,
        "datagen": {
            "num_records": 20,
            "requests_per_round": 2,
            "max_rounds": 3,
            "teacher": {"model": "openai/teacher", "api_base": teacher_url, "max_tokens": 512, "max_retries": 0},
            "alpaca": {"tasks_per_request": 10},
            **datagen,
        },
        "filter": {"checks": ["all"]},
    }


def train_recipe(run: Path, base_model: Path, steps: int, save_steps: int = 2) -> dict[str, Any]:
    return {
        "run_dir": str(run),
        "base_model": str(base_model),
        "include_seeds": True,
        "filter": {"checks": ["all"]},
        "train": {
            "model": {"dtype": "float32"},
            "data": {"max_length": 128},
            "batching": {"micro_batch_size": 2},
            "optim": {"lr": 1e-3, "max_steps": steps, "warmup_ratio": 0.0},
            "output": {"save_steps": save_steps},
        },
    }


def run_cli(tmp_path: Path, recipe: dict[str, Any], capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["run", str(path), *args])
    return code, capsys.readouterr().err.strip()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_missing_seed_file(tmp_path: Path, teacher: Any, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-seeds.jsonl"
    code, err = run_cli(tmp_path, datagen_recipe(tmp_path / "run", teacher.url, seeds=str(missing)), capsys)
    assert code == 1
    assert err == f"error: stage datagen: input file {missing}: no such file"


def test_a_later_stages_missing_file_fails_before_the_first_stage(
    tmp_path: Path, teacher: Any, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart run from outside the repository: its relative questions path is missing, which must show
    before datagen and training spend their minutes, and say where relative paths are read from."""
    monkeypatch.chdir(tmp_path)
    recipe = datagen_recipe(tmp_path / "run", teacher.url)
    recipe["clean"] = {"files": ["data/sharegpt.json"]}
    asked = len(teacher.requests)
    code, err = run_cli(tmp_path, recipe, capsys)
    assert code == 1
    assert err == (
        "error: stage clean: input file data/sharegpt.json: no such file "
        f"(relative paths are read from the current folder, {tmp_path})"
    )
    assert not (tmp_path / "run" / "datagen").exists() and len(teacher.requests) == asked


def test_unreachable_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    code, err = run_cli(tmp_path, datagen_recipe(tmp_path / "run", url), capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: stage datagen: the teacher model at {url} is not reachable (ConnectError")
    assert not (tmp_path / "run" / "datagen" / "records.jsonl").exists()


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only: a read-only bind mount as root (root ignores permissions), else no write permission."""
    if os.geteuid() == 0:
        if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,bind,ro", str(folder))):
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
        try:
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


def test_read_only_run_folder(tmp_path: Path, teacher: Any, capsys: pytest.CaptureFixture) -> None:
    recipe = datagen_recipe(tmp_path / "run", teacher.url)
    assert run_cli(tmp_path, recipe, capsys)[0] == 0
    run = tmp_path / "run"
    datagen_manifest = (run / "datagen" / "manifest.json").read_bytes()
    changed = {**recipe, "include_seeds": False}  # changes the filter stage only
    with read_only(run / "filter"):
        code, err = run_cli(tmp_path, changed, capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: stage filter: ") and ("Read-only file system" in err or "Permission denied" in err)
    assert (run / "datagen" / "manifest.json").read_bytes() == datagen_manifest
    outcome = run_recipe(RecipeConfig.model_validate(changed))
    assert outcome.statuses["datagen"] == "skipped" and outcome.ran == ["filter"]


def test_full_run_folder(tmp_path: Path, teacher: Any, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("a small file system for the run folder needs root (tmpfs)")
    run = tmp_path / "run"
    (run / "datagen").mkdir(parents=True)
    if not _mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(run / "datagen")):
        pytest.skip("cannot mount a tmpfs here")
    try:
        recipe = datagen_recipe(run, teacher.url)
        code, err = run_cli(tmp_path, recipe, capsys)
        assert code == 1 and len(err.splitlines()) == 1
        assert err.startswith("error: stage datagen: No space left on device")
        assert _mount("-o", "remount,size=4m", str(run / "datagen"))
        outcome = run_recipe(RecipeConfig.model_validate(recipe))
        assert outcome.ran == ["datagen", "filter"]
        manifest = json.loads((run / "datagen" / "manifest.json").read_text())
        assert manifest["resumed"] is True  # continued in place, from the rounds that were committed
        assert len(lines(run / "datagen" / "records.jsonl")) == 20
    finally:
        subprocess.run(["umount", str(run / "datagen")], check=True)


def test_trainer_killed_midway_then_rerun_continues(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    recipe = RecipeConfig.model_validate(train_recipe(run, tiny_model_dir, steps=6))
    # the trainer's test-only hook (loaded from PYTHONPATH at startup) SIGKILLs it right after step 3
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(KILL_HOOK), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HUARIZO_TEST_KILL_AFTER_STEP", "3")
    with pytest.raises(StageError) as exc:
        run_recipe(recipe)
    assert str(exc.value).startswith(
        "stage train: the trainer was killed by SIGKILL after step 3; rerun to continue from its last checkpoint "
        "(step-2)"
    )
    assert (run / "filter" / "manifest.json").exists() and not (run / "train" / "manifest.json").exists()
    monkeypatch.delenv("HUARIZO_TEST_KILL_AFTER_STEP")
    outcome = run_recipe(recipe)
    assert outcome.statuses["filter"] == "skipped" and outcome.ran == ["train"]
    assert [m["step"] for m in lines(run / "train" / "metrics.jsonl")] == list(range(1, 7))
    assert outcome.summary["train"]["resumed_from"] == "step-2"


def _lock_free(run: Path) -> bool:
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _wait_for(condition: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_run_killed_with_sigkill_during_training_then_rerun_continues(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(train_recipe(run, tiny_model_dir, steps=60, save_steps=10)))
    cmd = [str(Path(sys.executable).with_name("huarizo")), "run", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        latest = run / "train" / "checkpoints" / "latest"
        _wait_for(lambda: (latest.exists() and latest.read_text().strip()) or proc.poll() is not None, "a checkpoint")
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the trainer dies with the run (it held the run's lock until it exited)
    _wait_for(lambda: _lock_free(run), "the trainer to exit")
    assert not (run / "train" / "manifest.json").exists()
    outcome = run_recipe(RecipeConfig.model_validate(yaml.safe_load(path.read_text())))
    assert outcome.ran == ["train"]
    steps = [m["step"] for m in lines(run / "train" / "metrics.jsonl")]
    assert steps == list(range(1, 61))  # no step lost or logged twice
    resumed = outcome.summary["train"]["resumed_from"]
    assert resumed is not None and int(resumed.removeprefix("step-")) >= 10


def test_server_that_fails_to_start(
    tmp_path: Path, tiny_model_dir: Path, questions: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "questions": str(questions),
        "serve": {"base": {"model": str(tiny_model_dir), "template": "no-such-template"}},
        "answer": {"base": {"endpoint": {"model": "openai/base", "api_base": "served"}, "max_tokens": 4, "limit": 3}},
    }
    code, err = run_cli(tmp_path, recipe, capsys)
    log = tmp_path / "run" / "serve" / "base.log"
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: stage answer: the server for 'base' (model {tiny_model_dir}) exited while starting")
    assert "unknown template 'no-such-template'" in err and err.endswith(f"log: {log}")
    code, err = run_cli(tmp_path, recipe, capsys, "--set", "serve.base.template=alpaca")
    assert code == 0
    assert len(lines(tmp_path / "run" / "answer" / "base.jsonl")) == 3

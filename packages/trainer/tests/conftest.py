"""Fixtures for the trainer's tests: run `huarizo train` as real processes (one DeepSpeed run per subprocess)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
TINY_CPU = REPO / "configs" / "train" / "tiny-cpu.yaml"
KILL_HOOK = Path(__file__).resolve().parent / "kill_hook"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    return env | extra


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def kill_after(step: int) -> dict[str, str]:
    """The environment that makes a training process SIGKILL itself right after step `step` (tests/kill_hook)."""
    path = os.pathsep.join(p for p in (str(KILL_HOOK), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "HUARIZO_TEST_KILL_AFTER_STEP": str(step)}


RunTrain = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_train(tmp_path: Path) -> RunTrain:
    """`run_train(config_dict, nproc=1, env=None, check=True)`: write the config, run it, return the process."""

    def run(
        config: dict[str, Any], *, nproc: int = 1, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cfg_file = tmp_path / f"cfg-{free_port()}.yaml"
        cfg_file.write_text(yaml.safe_dump(config))
        if nproc == 1:
            cmd = [sys.executable, "-m", "huarizo.trainer", str(cfg_file)]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
            cmd += ["--standalone", "-m", "huarizo.trainer", str(cfg_file)]  # torchrun picks a free port
        proc = subprocess.run(cmd, env=train_env(**(env or {})), capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc

    return run


@pytest.fixture
def base_config(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The tiny-cpu recipe with the session's tiny model, writing into tmp_path/out."""
    cfg = yaml.safe_load(TINY_CPU.read_text())
    cfg["model"]["ref"] = str(tiny_model_dir)
    cfg["data"]["files"] = [str(REPO / "configs" / "train" / "data" / "tiny-alpaca.json")]
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["output"] = {"progress": False, "save_steps": 0}
    return cfg

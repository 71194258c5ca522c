"""Every recipe in configs/recipes passes `huarizo run --dry-run`: resolved, inputs listed, endpoints reported
reachable or not, the trainer's memory per GPU estimated. The SkyPilot task file is checked against SkyPilot's own
schema where SkyPilot is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.formats.cli import main

RECIPES = Path(__file__).resolve().parents[3] / "configs" / "recipes"


def dry_run(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["run", *args, "--dry-run"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["alpaca-7b", "vicuna-7b", "alpaca-lora"])
def test_gpu_recipes_dry_run(name: str, capsys: pytest.CaptureFixture) -> None:
    out = dry_run(capsys, str(RECIPES / f"{name}.yaml"))
    gpus = {"alpaca-7b": 4, "vicuna-7b": 8, "alpaca-lora": 1}[name]
    assert f"on {gpus} GPU(s)" in out and "GiB per GPU for model states" in out
    assert "6.7" in out and "B parameters" in out  # LLaMA-7B, built on the meta device without weights
    assert "judge.judge: gpt-4o" in out and "not reachable: https://api.openai.com/v1" in out
    assert "key in $OPENAI_API_KEY" in out
    assert "served by this run: tuned = runs/" in out


def test_alpaca_recipe_uses_a_hosted_teacher_and_zero3_on_four_gpus(capsys: pytest.CaptureFixture) -> None:
    recipe = yaml.safe_load((RECIPES / "alpaca-7b.yaml").read_text())
    assert recipe["datagen"]["num_records"] == 52000 and recipe["train"]["deepspeed"]["stage"] == 3
    out = dry_run(capsys, str(RECIPES / "alpaca-7b.yaml"))
    assert "datagen.teacher: gpt-4o-mini" in out and "--nproc_per_node=4" in out


def test_judge_only_recipe_reports_a_reachable_judge(judge: Any, capsys: pytest.CaptureFixture) -> None:
    out = dry_run(capsys, str(RECIPES / "mt-bench.yaml"), "--set", f"judge.judge.api_base={judge.url}")
    assert f"reachable: {judge.url} (HTTP 200)" in out
    assert "stage     judge: would run" in out and "train" not in out


def test_quickstart_dry_run(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = dry_run(capsys, str(RECIPES / "quickstart.yaml"), "--set", f"base_model={tiny_model_dir}")
    for stage in ("datagen", "filter", "train", "answer", "metrics", "judge", "report"):
        assert f"stage     {stage}: would run" in out
    assert f"served by this run: base = {tiny_model_dir}" in out
    assert "answer    input configs/recipes/quickstart/questions.jsonl: found" in out
    assert "on 1 GPU(s)" in out


def test_skypilot_task_validates_against_skypilot_schema() -> None:
    sky = pytest.importorskip("sky", reason="SkyPilot is not installed (pip install skypilot)")
    from sky.utils import common_utils, schemas

    cfg = yaml.safe_load((RECIPES / "vicuna-7b.sky.yaml").read_text())
    common_utils.validate_schema(cfg, schemas.get_task_schema(), "Invalid task YAML: ")
    task = sky.Task.from_yaml_config(cfg, env_overrides=[("OPENAI_API_KEY", "unused")])
    assert "configs/recipes/vicuna-7b.yaml" in task.run and task.num_nodes == 1

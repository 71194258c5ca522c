"""Fixtures of the pipeline tests: a scripted teacher and judge on loopback, and a tiny-model recipe."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
for _k, _v in {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[3]
QUESTIONS = REPO / "configs" / "recipes" / "quickstart" / "questions.jsonl"


@pytest.fixture(scope="session")
def teacher() -> Iterator[Any]:
    """A scripted teacher answering datagen's prompts with well-formed task batches."""
    from huarizo.formats.testing import ScriptedServer, scripted_teacher

    with ScriptedServer(scripted_teacher, model="teacher") as server:
        yield server


@pytest.fixture(scope="session")
def judge() -> Iterator[Any]:
    """A scripted judge that prefers the longer answer (reads the answers out of the prompt as a judge would)."""
    from huarizo.formats.testing import ScriptedServer, prefer_longer

    with ScriptedServer(prefer_longer, model="judge") as server:
        yield server


@pytest.fixture(scope="session")
def questions() -> Path:
    """The quickstart's held-out questions (with short reference answers)."""
    return QUESTIONS


@pytest.fixture(scope="session")
def tiny_recipe() -> Any:
    """A function building the tiny-model recipe: `tiny_recipe(run_dir, base_model, teacher_url, judge_url)`."""
    return _tiny_recipe


def _tiny_recipe(run_dir: Path, base_model: Path, teacher_url: str, judge_url: str) -> dict[str, Any]:
    """The whole recipe on tiny models: scripted teacher, filter, a few training steps, base and tuned served by the
    run and answering the quickstart's questions, reference metrics, the scripted judge, the report."""
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "base_model": str(base_model),
        "include_seeds": True,
        "questions": str(QUESTIONS),
        "serve": {"base": {"model": "base"}, "tuned": {"model": "tuned"}},
        "datagen": {
            "pipeline": "alpaca",
            "num_records": 30,
            "requests_per_round": 2,
            "max_rounds": 4,
            "teacher": {"model": "openai/teacher", "api_base": teacher_url, "mode": "completion", "max_tokens": 512},
            "alpaca": {"tasks_per_request": 10},
        },
        "filter": {"checks": ["all"], "rouge_threshold": 0.7},
        "train": {
            "model": {"dtype": "float32"},
            "data": {"template": "alpaca", "max_length": 128},
            "batching": {"micro_batch_size": 4},
            "optim": {"lr": 2e-3, "max_steps": 6, "warmup_ratio": 0.0},
            "output": {"save_steps": 2},
        },
        "answer": {
            "base": {"endpoint": {"model": "openai/base", "api_base": "served"}, "max_tokens": 12},
            "tuned": {"endpoint": {"model": "openai/tuned", "api_base": "served"}, "max_tokens": 12},
        },
        "metrics": {"bootstrap": 200},
        "judge": {"judge": {"model": "openai/judge", "api_base": judge_url}, "baseline": "base"},
        "report": {"examples": 3},
    }

"""Slow: a few LoRA steps on the embedded model (Gemma 3 270M), end to end through `huarizo train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from huarizo.formats.templates import template_for_tokenizer

from .conftest import REPO, RunTrain, read_metrics


@pytest.mark.slow
def test_embedded_model_lora_steps(run_train: RunTrain, tmp_path: Path) -> None:
    cfg: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "model": {"ref": "embedded", "dtype": "float32"},
        "data": {"files": [str(REPO / "configs/train/data/tiny-alpaca.json")], "template": "alpaca", "max_length": 128},
        "batching": {"mode": "packed", "micro_batch_size": 1},
        "optim": {"lr": 2e-4, "max_steps": 4, "warmup_ratio": 0.0},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "deepspeed": {"stage": 2},
        "output": {"progress": False},
    }
    run_train(cfg)
    out = Path(cfg["output_dir"])
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert template_for_tokenizer(tok).name == "alpaca"
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type.startswith("gemma3")

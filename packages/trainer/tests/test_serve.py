"""A trained tiny model is served by `huarizo serve` and answers through the openai client, stopping at the
training template's end of turn (written last: the serve package is built beside this one)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.testing import huarizo_serve

from .conftest import RunTrain, train_env

ANSWER = "The capital of Peru is Lima."


@pytest.mark.skipif(importlib.util.find_spec("huarizo.serve") is None, reason="huarizo-serve is not installed")
def test_trained_model_is_served_and_stops_at_its_end_of_turn(
    run_train: RunTrain, base_config: dict[str, Any], tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"instruction": "What is the capital of Peru?", "input": "", "output": ANSWER}] * 32))
    cfg = dict(base_config)
    cfg["data"] = {"files": [str(data)], "template": "alpaca", "max_length": 128}
    cfg["optim"] = {"lr": 1e-2, "max_steps": 60, "warmup_ratio": 0.0}
    run_train(cfg)  # the model learns one answer and its EOS by heart
    final = Path(cfg["output_dir"]) / "final"

    with huarizo_serve(final, tmp_path / "serve.log", name="tiny-sft", env=train_env()) as url:
        client = openai.OpenAI(base_url=url, api_key="none")
        reply = client.chat.completions.create(
            model="tiny-sft",
            messages=[{"role": "user", "content": "What is the capital of Peru?"}],
            max_tokens=40,
            temperature=0,
        )
    choice = reply.choices[0]
    assert choice.message.content.strip() == ANSWER
    assert choice.finish_reason == "stop"  # it stopped at EOS, well before max_tokens

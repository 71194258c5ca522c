"""A trained tiny model is served by `huarizo serve` and answers through the openai client, stopping at the
training template's end of turn (written last: the serve package is built beside this one)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunTrain, free_port, train_env

ANSWER = "The capital of Peru is Lima."


@pytest.mark.skipif(importlib.util.find_spec("huarizo.serve") is None, reason="huarizo-serve is not installed")
def test_trained_model_is_served_and_stops_at_its_end_of_turn(
    run_train: RunTrain, base_config: dict[str, Any], tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"instruction": "What is the capital of Peru?", "input": "", "output": ANSWER}] * 32))
    cfg = dict(base_config)
    cfg["data"] = {"files": [str(data)], "template": "alpaca", "max_length": 128}
    cfg["optim"] = {"lr": 1e-2, "max_steps": 60, "warmup_ratio": 0.0}
    run_train(cfg)  # the model learns one answer and its EOS by heart
    final = Path(cfg["output_dir"]) / "final"

    port = free_port()
    huarizo = str(Path(sys.executable).parent / "huarizo")
    server = subprocess.Popen(
        [huarizo, "serve", "--model", str(final), "--port", str(port), "--model-name", "tiny-sft"],
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the server answers (or dies)
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="tiny-sft",
            messages=[{"role": "user", "content": "What is the capital of Peru?"}],
            max_tokens=40,
            temperature=0,
        )
        choice = reply.choices[0]
        assert choice.message.content.strip() == ANSWER
        assert choice.finish_reason == "stop"  # it stopped at EOS, well before max_tokens
    finally:
        server.terminate()
        server.wait(timeout=30)

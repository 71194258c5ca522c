"""End to end: `huarizo serve` (the serve package, run as a subprocess) is the teacher of `huarizo datagen run`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from huarizo.datagen import DatagenConfig, DatagenResult, run
from huarizo.formats.cli import main


def _serve_available() -> None:
    try:
        import huarizo.serve  # noqa: F401
    except ImportError:
        pytest.skip("huarizo-serve is not installed: the end-to-end test needs `huarizo serve` as the teacher")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _served(model: str, timeout: float) -> Iterator[str]:
    port = _free_port()
    cmd = [
        str(Path(sys.executable).parent / "huarizo"),
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--model-name",
        "teacher",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"huarizo serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("huarizo serve did not come up")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _generate(url: str, out: Path, mode: str, max_tokens: int, tasks: int, requests: int = 2) -> DatagenResult:
    cfg = DatagenConfig.load(
        None,
        [
            f"output_dir={out}",
            "progress=false",
            "max_rounds=1",
            f"requests_per_round={requests}",
            f"alpaca.tasks_per_request={tasks}",
            "teacher.model=openai/teacher",
            f"teacher.api_base={url}",
            f"teacher.mode={mode}",
            f"teacher.max_tokens={max_tokens}",
            "teacher.request_timeout=300",
            "teacher.temperature=0.7",
            "teacher.top_p=0.9",
        ],
    )
    result = run(cfg)
    journal = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert journal[0]["requests"] == requests and result.failed == 0
    assert result.completion_tokens > 0 and len(list((out / "cache").rglob("*.json"))) == requests
    # every task the model wrote is kept or rejected with a reason, and a reply with none is one `unparsed` reject
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert result.generated == result.kept + result.rejected == len(rejects) + result.kept >= requests
    if result.kept:
        assert main(["validate", str(out / "records.jsonl"), "--format", "alpaca"]) == 0
    return result


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir: Path) -> Iterator[str]:
    """`huarizo serve` running the tiny model; its OpenAI base URL."""
    _serve_available()
    with _served(str(tiny_model_dir), timeout=180) as url:
        yield url


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_generate_from_huarizo_serve_with_the_tiny_model(mode: str, tiny_teacher: str, tmp_path: Path) -> None:
    _generate(tiny_teacher, tmp_path / "run", mode, max_tokens=48, tasks=3)


@pytest.mark.slow
def test_generate_from_huarizo_serve_with_the_embedded_model(tmp_path: Path) -> None:
    """The embedded Gemma 3 270M is a base model: few-shot completion prompts that it continues for two tasks at a
    time (stopped at the third's heading), as the quickstart uses it."""
    _serve_available()
    with _served("embedded", timeout=600) as url:
        result = _generate(url, tmp_path / "run", "completion", max_tokens=512, tasks=2, requests=8)
    recs = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    print(f"\nembedded teacher: {result.kept} of {result.generated} kept, rejected {result.reasons}; first: {recs[:2]}")
    assert result.kept >= 1 and result.completion_tokens < 8 * 512 / 2  # stopped after two tasks, not at max_tokens

"""End to end: two tiny models served by `huarizo serve` answer Vicuna-80 questions, a judge grades them."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from huarizo.formats.testing import ScriptedServer
from huarizo.judge import AnswerConfig, GradeConfig, answer, grade
from huarizo.judge.testing import prefer_longer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("huarizo.serve") is None,
    reason="huarizo-serve is not installed (needed for `huarizo serve`)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(model: Path, name: str, log: Path) -> Iterator[str]:
    """`huarizo serve` in a subprocess; yields its OpenAI base URL once it answers."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-c",
        "from huarizo.formats.cli import main; raise SystemExit(main())",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--model-name",
        name,
        "--template",
        "alpaca",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the server answers (or died)
            if proc.poll() is not None:
                pytest.fail(f"huarizo serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"huarizo serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_served_tiny_models_answer_and_are_judged(tmp_path, vicuna, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from huarizo.formats.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "tiny-b", seed=1)
    files = {}
    for name, folder in (("tiny-a", tiny_model_dir), ("tiny-b", other)):
        with served(folder, name, tmp_path / f"{name}.log") as url:
            files[name] = tmp_path / f"{name}.jsonl"
            cfg = AnswerConfig(
                endpoint={"model": f"openai/{name}", "api_base": url, "cache_dir": str(tmp_path / "cache")},
                questions=str(vicuna["questions"]),
                out=str(files[name]),
                limit=4,
                max_tokens=12,
            )
            assert answer(cfg, progress=False).counts["asked"] == 4
    texts = {
        n: {(d := json.loads(line))["question_id"]: d["choices"][0]["turns"][0] for line in f.open()}
        for n, f in files.items()
    }
    assert all(len(t) == 4 for t in texts.values())
    with ScriptedServer(prefer_longer) as judge:
        s = grade(
            GradeConfig(
                questions=str(vicuna["questions"]),
                answers=[str(files["tiny-a"])],
                baseline=str(files["tiny-b"]),
                judge={"model": "openai/judge", "api_base": judge.url, "cache_dir": str(tmp_path / "cache")},
                verdict="text",
                out=str(tmp_path / "out"),
                bootstrap=100,
            ),
            progress=False,
        ).summary
    a, b = texts["tiny-a"], texts["tiny-b"]
    wins = sum(len(a[q]) > len(b[q]) for q in a)
    losses = sum(len(a[q]) < len(b[q]) for q in a)
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (4, wins, losses, 4 - wins - losses)
    assert (tmp_path / "out" / "report.md").exists()


@pytest.mark.slow
def test_embedded_model_answers_mt_bench_turn_by_turn(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    """The embedded Gemma 3 270M behind `huarizo serve` answers two MT-bench questions (two turns each); graded."""
    from huarizo.formats.models import resolve_model
    from huarizo.judge.testing import shown_answer

    qs = shared_data / "fastchat/mt_bench/question.jsonl"
    out = tmp_path / "embedded.jsonl"
    with served(Path(resolve_model("embedded")), "gemma", tmp_path / "serve.log") as url:
        cfg = AnswerConfig(
            endpoint={"model": "openai/gemma", "api_base": url, "cache_dir": str(tmp_path / "cache")},
            questions=str(qs),
            out=str(out),
            limit=2,
            max_tokens=24,
        )
        assert answer(cfg, progress=False).counts["asked"] == 4
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 2 and all(len(r["choices"][0]["turns"]) == 2 for r in rows)
    with ScriptedServer(lambda req: f"Rating: [[{1 + len(shown_answer(req)) % 10}]]") as judge:
        s = grade(
            GradeConfig(
                mode="single",
                questions=str(qs),
                answers=[str(out)],
                judge={"model": "openai/judge", "api_base": judge.url, "cache_dir": str(tmp_path / "cache")},
                verdict="text",
                out=str(tmp_path / "grade"),
            ),
            progress=False,
        ).summary
    assert s["models"]["gemma"]["n"] == 4 and set(s["models"]["gemma"]["by_turn"]) == {"1", "2"}

"""End to end: `huarizo serve` (the serve package, run as a subprocess) is the teacher of `huarizo datagen run`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from huarizo.datagen import DatagenConfig, DatagenResult, run
from huarizo.formats import main
from huarizo.formats.testing import huarizo_serve


def _serve_available() -> None:
    try:
        import huarizo.serve  # noqa: F401
    except ImportError:
        pytest.skip("huarizo-serve is not installed: the end-to-end test needs `huarizo serve` as the teacher")


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
def tiny_teacher(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`huarizo serve` running the tiny model; its OpenAI base URL."""
    _serve_available()
    with huarizo_serve(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log", name="teacher") as url:
        yield url


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_generate_from_huarizo_serve_with_the_tiny_model(mode: str, tiny_teacher: str, tmp_path: Path) -> None:
    _generate(tiny_teacher, tmp_path / "run", mode, max_tokens=48, tasks=3)


@pytest.mark.slow
def test_generate_from_huarizo_serve_with_the_embedded_model(tmp_path: Path) -> None:
    """The embedded Gemma 3 270M is a base model: few-shot completion prompts that it continues for two tasks at a
    time (stopped at the third's heading), as the quickstart uses it."""
    _serve_available()
    with huarizo_serve("embedded", tmp_path / "serve.log", name="teacher", timeout=600) as url:
        result = _generate(url, tmp_path / "run", "completion", max_tokens=512, tasks=2, requests=8)
    recs = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    print(f"\nembedded teacher: {result.kept} of {result.generated} kept, rejected {result.reasons}; first: {recs[:2]}")
    assert result.kept >= 1 and result.completion_tokens < 8 * 512 / 2  # stopped after two tasks, not at max_tokens

"""Judging throughput is the judge's latency: concurrency 16 vs one at a time against a scripted judge (in its own
process) with a fixed 200 ms latency (target: at least 8x the judgments/s), and a rerun that the cache answers
without a request.

    pytest benchmarks/judge -s -o python_files='bench_*.py'
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from huarizo.formats.testing import ScriptedServer, prefer_longer
from huarizo.judge import GradeConfig, grade

SHARED = Path(os.environ.get("HUARIZO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LEGACY = SHARED / "fastchat" / "vicuna80_legacy"
LATENCY = 0.2
QUESTIONS = 32  # 64 judge requests (both orders) per run: four waves at concurrency 16
RESULTS: dict[str, float] = {}


class RemoteJudge:
    """The scripted judge in its own process (as a real judge is: its threads do not share our interpreter lock);
    counts the requests it receives."""

    def __init__(self) -> None:
        ctx = mp.get_context("fork")
        self.count = ctx.Value("i", 0)
        urls = ctx.Queue()
        self.proc = ctx.Process(target=self._serve, args=(self.count, urls), daemon=True)
        self.proc.start()
        self.url: str = urls.get(timeout=60)

    @staticmethod
    def _serve(count: Any, urls: Any) -> None:
        def script(req: dict[str, Any]) -> str:
            with count.get_lock():
                count.value += 1
            return prefer_longer(req)

        with ScriptedServer(script, latency=LATENCY) as server:
            urls.put(server.url)
            threading.Event().wait()  # until terminated

    @property
    def requests(self) -> int:
        return int(self.count.value)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join()


def _run(server: RemoteJudge, tmp: Path, concurrency: int, tag: str) -> tuple[int, int]:
    """Grade once; returns (requests the judge received, comparisons graded). The server outlives the runs."""
    before = server.requests
    cfg = GradeConfig(
        questions=str(LEGACY / "question.jsonl"),
        answers=[str(LEGACY / "answer/answer_alpaca-13b.jsonl")],
        baseline=str(LEGACY / "answer/answer_vicuna-13b.jsonl"),
        judge={
            "model": "openai/judge",
            "api_base": server.url,
            "concurrency": concurrency,
            "cache_dir": str(tmp / f"cache-{tag}"),
        },
        verdict="text",  # the scripted judge writes text verdicts
        limit=QUESTIONS,
        out=str(tmp / f"out-{tag}"),
        plots=False,
        bootstrap=100,
    )
    result = grade(cfg, progress=False)
    return server.requests - before, result.summary["n"]


@pytest.fixture(scope="module")
def server() -> Iterator[RemoteJudge]:
    """The scripted judge: prefers the longer answer, after a fixed latency."""
    judge = RemoteJudge()
    yield judge
    judge.close()


@pytest.fixture(scope="module", autouse=True)
def _needs_data() -> None:
    if not LEGACY.is_dir():
        pytest.skip(f"real data not found at {LEGACY} (set HUARIZO_SHARED_DATA)")


@pytest.mark.parametrize("concurrency", [1, 16])
def test_judgments_per_second(benchmark, server, tmp_path, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    runs = iter(range(1000))  # a fresh cache each round: every request goes to the judge
    out = benchmark.pedantic(
        lambda: _run(server, tmp_path, concurrency, f"c{next(runs)}"), rounds=2 if concurrency == 1 else 5, iterations=1
    )
    requests, n = out
    assert requests == 2 * QUESTIONS and n == QUESTIONS
    RESULTS[f"c{concurrency}"] = requests / benchmark.stats.stats.min
    print(
        f"\nconcurrency {concurrency:2d}: {RESULTS[f'c{concurrency}']:.1f} judge requests/s ({requests} requests, "
        f"{LATENCY * 1000:.0f} ms latency)"
    )
    if {"c1", "c16"} <= RESULTS.keys():
        print(f"concurrency 16 vs 1: {RESULTS['c16'] / RESULTS['c1']:.1f}x the judgments/s (target >= 8x)")


def test_rerun_is_free(benchmark, server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    sent, _ = _run(server, tmp_path, 16, "rerun")
    first = time.perf_counter() - t
    again, n = benchmark.pedantic(lambda: _run(server, tmp_path, 16, "rerun"), rounds=3, iterations=1)
    assert sent == 2 * QUESTIONS and again == 0 and n == QUESTIONS
    print(f"\nrerun from cache: {again} requests, {benchmark.stats.stats.min:.2f} s (first run {first:.2f} s)")

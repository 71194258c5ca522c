"""Generation throughput: records/s at concurrency 16 vs 1, against a scripted teacher with a fixed 200 ms latency.

Same config, same prompts and same replies in both runs (fresh output folders, so nothing comes from the cache);
only `teacher.concurrency` differs. Target: at least 8x.

    pytest benchmarks/datagen/bench_generation.py -s -o python_files='bench_*.py'
"""

from __future__ import annotations

import time
from pathlib import Path

from huarizo.datagen import DatagenConfig, run
from huarizo.formats.testing import ScriptedServer, scripted_teacher

LATENCY = 0.2
ROUNDS = 3
REQUESTS = 16


def _run(server: ScriptedServer, out: Path, concurrency: int, pipeline: str) -> tuple[int, float]:
    rounds = ROUNDS if pipeline == "alpaca" else 1
    cfg = DatagenConfig.load(
        None,
        [
            f"output_dir={out}",
            f"pipeline={pipeline}",
            "progress=false",
            "num_records=100000",
            f"max_rounds={rounds}",
            f"requests_per_round={REQUESTS}",
            "teacher.model=openai/teacher",
            f"teacher.api_base={server.url}",
            f"teacher.concurrency={concurrency}",
        ],
    )
    t0 = time.perf_counter()
    result = run(cfg)
    return result.kept, time.perf_counter() - t0


def test_generation_concurrency(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(scripted_teacher, latency=LATENCY) as server:
        _run(server, tmp_path / "warmup", 16, "alpaca")  # imports litellm, warms the connection pool
        lines = []
        for pipeline in ("alpaca", "self-instruct"):
            kept1, t1 = _run(server, tmp_path / f"{pipeline}-c1", 1, pipeline)
            if pipeline == "alpaca":
                kept16, t16 = benchmark.pedantic(_run, args=(server, tmp_path / "alpaca-c16", 16, pipeline), rounds=1)
            else:
                kept16, t16 = _run(server, tmp_path / f"{pipeline}-c16", 16, pipeline)
            assert kept16 == kept1  # the same records either way
            ratio = (kept16 / t16) / (kept1 / t1)
            lines.append(
                f"[generation] {pipeline}: {kept1} records; concurrency 1: {kept1 / t1:.1f} records/s ({t1:.1f} s), "
                f"concurrency 16: {kept16 / t16:.1f} records/s ({t16:.1f} s) -> {ratio:.1f}x"
            )
            print(lines[-1])
            if pipeline == "alpaca":
                assert ratio >= 8

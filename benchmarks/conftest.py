"""Shared helpers of the benchmarks: where the real data is, and the figures each benchmark records.

`nox -s bench` writes every run's results (pytest-benchmark JSON) to `benchmarks/results/`; each benchmark puts its
figures, with their units, directions and baselines, into `extra_info["figures"]` through the `figures` fixture, and
`benchmarks/compare.py` sets them against the last committed run.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Literal

import pytest

SHARED_DATA = Path(os.environ.get("HUARIZO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; benchmarks using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set HUARIZO_SHARED_DATA)")
    return SHARED_DATA


class Figures:
    """What one benchmark measured, kept in its pytest-benchmark `extra_info`:
    `figures[name] = {"value", "unit", "better": "higher" | "lower", "what"}`, and the baselines by name."""

    def __init__(self, extra_info: dict[str, Any]) -> None:
        self.info = extra_info
        self.info.setdefault("figures", {})
        self.info.setdefault("baselines", {})

    def add(self, name: str, value: float, unit: str, better: Literal["higher", "lower"], what: str = "") -> None:
        """Record one figure (`better` says which way is an improvement)."""
        self.info["figures"][name] = {"value": float(value), "unit": unit, "better": better, "what": what}

    def baseline(self, key: str, name: str) -> None:
        """Name a baseline the figures are compared with (`key` is how the figures refer to it)."""
        self.info["baselines"][key] = name


@pytest.fixture
def figures(benchmark: Any) -> Figures:
    """The recorder of the current benchmark's figures."""
    return Figures(benchmark.extra_info)


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Say what the figures were taken on: cores, memory, the load when the run started, torch and the GPU."""
    machine_info["cpu_count"] = os.cpu_count()
    if hasattr(os, "getloadavg"):
        machine_info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if platform.system() == "Linux":
        meminfo = Path("/proc/meminfo").read_text().split()
        machine_info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    try:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    if os.environ.get("BENCH_NOTE"):
        machine_info["note"] = os.environ["BENCH_NOTE"]

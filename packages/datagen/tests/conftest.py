"""Fixtures of the datagen tests: real instructions from ../shared/data, and a scripted teacher server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


def real_instructions(shared: Path) -> list[str]:
    """Every instruction in ../shared/data: seed tasks, user-oriented, Alpaca-format samples, AlpacaEval (~2,200)."""
    out = []
    for name in ("stanford_alpaca/seed_tasks.jsonl", "self_instruct/human_eval/user_oriented_instructions.jsonl"):
        out += [json.loads(line)["instruction"] for line in (shared / name).read_text().splitlines()]
    out += [
        r["instruction"]
        for r in json.loads((shared / "alpaca_format_samples/llamafactory_alpaca_en_demo.json").read_text())
    ]
    out += [r["instruction"] for r in json.loads((shared / "alpaca_eval/example_outputs_805.json").read_text())]
    return out


@pytest.fixture(scope="session")
def instructions(shared_data: Path) -> list[str]:
    return real_instructions(shared_data)


@pytest.fixture
def teacher() -> Iterator[object]:
    """A ScriptedServer answering datagen prompts with plausible replies."""
    from huarizo.formats.testing import ScriptedServer, scripted_teacher

    with ScriptedServer(scripted_teacher) as server:
        yield server

"""Fixtures of the judge tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


@pytest.fixture
def vicuna(shared_data):  # type: ignore[no-untyped-def]
    """Paths of the legacy Vicuna-80 table."""
    root = shared_data / "fastchat" / "vicuna80_legacy"
    return {
        "questions": root / "question.jsonl",
        "answer": lambda name: root / "answer" / f"answer_{name}.jsonl",
        "review": lambda name: root / "review" / f"review_{name}_vicuna-13b.jsonl",
    }

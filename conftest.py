"""Fixtures shared by every package's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("HUARIZO_SHARED_DATA", Path(__file__).resolve().parent.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real data nobody here wrote); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set HUARIZO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a tokenizer trained on the spot, written once per test session (tests using it skip
    where torch is not installed: the torch-free sessions of datagen and judge)."""
    pytest.importorskip("torch", reason="torch is not installed (huarizo-formats[models])")
    from huarizo.formats.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model's fast tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def vicuna(shared_data: Path):  # type: ignore[no-untyped-def]
    """Paths of FastChat's legacy Vicuna-80 table in the real data: questions, answers and reviews by model name."""
    root = shared_data / "fastchat" / "vicuna80_legacy"
    return {
        "questions": root / "question.jsonl",
        "answer": lambda name: root / "answer" / f"answer_{name}.jsonl",
        "review": lambda name: root / "review" / f"review_{name}_vicuna-13b.jsonl",
    }

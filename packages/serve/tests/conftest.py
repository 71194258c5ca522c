"""Fixtures: a real server on a free loopback port serving the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from huarizo.serve import RunningServer, ServeConfig, start_server


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model behind `huarizo serve`'s app, no auth."""
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test", dtype="float32")
    with start_server(cfg) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model served with two accepted API keys."""
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, api_keys=["k1", "k2"], max_batch_size=4)
    with start_server(cfg) as running:
        yield running


NEWLINE_TOKENS = ["\n", "\n\n", "\n\n\n", "  ", "    "]
"""Added (not special) tokens, as Gemma 3 has thousands of: newlines and runs of spaces."""


@pytest.fixture(scope="session")
def newline_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has `"\\n"`, `"\\n\\n"` and runs of spaces as added tokens (like Gemma's);
    its weights are scaled up so that greedy answers vary (newlines included) instead of repeating one token."""
    import torch
    from tokenizers import AddedToken
    from transformers import LlamaConfig, LlamaForCausalLM

    from huarizo.formats.tiny import train_tokenizer

    folder = tmp_path_factory.mktemp("newline-model")
    tokenizer = train_tokenizer()
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in NEWLINE_TOKENS])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(5)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def newline_tokenizer(newline_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tokenizer of `newline_model_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(newline_model_dir)


@pytest.fixture(scope="session")
def newline_server(newline_model_dir: Path) -> Iterator[RunningServer]:
    """`newline_model_dir` behind `huarizo serve` (float32: compared with direct forward passes to 1e-4)."""
    cfg = ServeConfig(model=str(newline_model_dir), port=0, model_name="nl", dtype="float32")
    with start_server(cfg) as running:
        yield running

"""The chunked, trained-positions-only loss equals the full one: the loss and every gradient of a causal LM run over
all positions with full-vocabulary logits (fp32, 1e-5), on packed and padded rows, rows with nothing to train,
accumulated micro-batches, tied embeddings, LoRA, and real DeepSpeed engines at ZeRO 0, 2 and 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from huarizo.formats import IGNORE_INDEX
from huarizo.trainer import DataConfig, LoraConfig, SFTModel, collate, load_samples
from huarizo.trainer import model as model_module
from huarizo.trainer.model import add_lora, output_loss

from .conftest import train_env

DATA = Path(__file__).resolve().parents[3] / "configs" / "train" / "data" / "tiny-alpaca.json"
ZERO_CHECK = Path(__file__).resolve().parent / "zero_loss_check.py"
ROWS = 5  # trained positions per chunk in these tests (the tiny model's vocabulary is 512)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch, tiny_tokenizer: Any) -> None:
    """Chunks of a few rows, so every batch below spans many chunks and a last partial one."""
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 4 * len(tiny_tokenizer) * ROWS)


def full_loss(lm: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference: the model's own forward, logits at every position, cross-entropy over the targets."""
    kwargs = {k: v for k, v in batch.items() if k != "targets"}
    logits = lm(**kwargs, use_cache=False).logits.float()
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def batches(tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """Two packed micro-batches and a padded one, one of whose rows has no trained token."""
    samples, _, _ = load_samples(DataConfig(files=[DATA], max_length=256), tokenizer, seed=0)
    pad = tokenizer.pad_token_id
    packed = [collate([[0, 9, 17], [30, 4]], samples, pad, packed=True), collate([[5, 6, 7]], samples, pad, True)]
    padded = collate([[11], [12], [13]], samples, pad, packed=False)
    padded["targets"][1] = IGNORE_INDEX
    return [*packed, padded]


def grads_of(model: torch.nn.Module, loss_fn: Any, micro_batches: list[dict[str, torch.Tensor]]) -> list[Any]:
    """The summed losses of the micro-batches and every trainable parameter's accumulated gradient."""
    model.zero_grad()
    losses = []
    for batch in micro_batches:
        loss = loss_fn(batch)
        (loss * 0.37).backward()  # a loss scale, as the train loop divides by the step's trained tokens
        losses.append(loss.detach())
    return [torch.stack(losses), *[p.grad.clone() for p in model.parameters() if p.requires_grad]]


def assert_same(ours: list[Any], ref: list[Any]) -> None:
    assert len(ours) == len(ref) > 1
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_loss_and_gradients_equal_the_full_computation(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # tied, as Gemma's
    model = SFTModel(lm)
    micro = batches(tiny_tokenizer)
    counts = [int((b["targets"] != IGNORE_INDEX).sum()) for b in micro]
    assert all(n > 4 * ROWS for n in counts) and all(n % ROWS for n in counts)  # many chunks, a last partial one
    ours = grads_of(model, lambda b: model(**b), micro)
    ref = grads_of(model, lambda b: full_loss(lm, b), micro)
    assert_same(ours, ref)
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(model(**micro[0]), ref[0][0], rtol=1e-5, atol=1e-5)


def test_a_micro_batch_with_nothing_to_train_gives_zero_loss_and_gradients(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = SFTModel(lm)
    batch = batches(tiny_tokenizer)[0]
    batch["targets"][:] = IGNORE_INDEX
    loss = model(**batch)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_lora_gradients_equal_the_full_computation(
    tiny_model_dir: Path, tiny_tokenizer: Any, targets: list[str]
) -> None:
    """LoRA on the attention (the output layer frozen, tied to the frozen embedding), and LoRA on the output layer
    itself, which takes the checkpointed chunk path."""
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    lm = add_lora(lm, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=targets))
    for name, p in lm.named_parameters():  # B starts at zero; make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    head = lm.get_output_embeddings()
    assert (type(head) is torch.nn.Linear) == ("lm_head" not in targets)
    model = SFTModel(lm)
    micro = batches(tiny_tokenizer)
    ours = grads_of(model, lambda b: model(**b), micro)
    ref = grads_of(model, lambda b: full_loss(lm, b), micro)
    assert_same(ours, ref)


@pytest.mark.parametrize(("softcap", "scale"), [(30.0, None), (None, 0.25), (5.0, 2.0)])
def test_soft_capped_and_scaled_logits(softcap: float | None, scale: float | None) -> None:
    """Gemma 2's final soft-cap and Cohere's logit scale, with a bias, against autograd on full logits."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 512)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 512, (23,))
    config = type("Config", (), {"final_logit_softcapping": softcap, "logit_scale": scale, "vocab_size": 512})

    def reference(_: Any) -> torch.Tensor:
        z = head(hidden)
        z = torch.tanh(z / softcap) * softcap if softcap else z
        return F.cross_entropy(z * scale if scale else z, targets, reduction="sum")

    params = [hidden, *head.parameters()]

    def run(fn: Any) -> list[Any]:
        for p in params:
            p.grad = None
        loss = fn(None)
        (loss * 0.37).backward()
        return [loss.detach(), *[p.grad.clone() for p in params]]

    assert_same(run(lambda _: output_loss(head, hidden, targets, config)), run(reference))


def test_zero_stages_train_on_the_exact_gradients(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Real DeepSpeed engines (ZeRO 0, 2, 3; ZeRO-3 gathers the tied output layer itself), two accumulated
    micro-batches: the gradients they reduce equal those of the full loss on a plain model."""
    out = tmp_path / "diffs.json"
    cmd = [sys.executable, str(ZERO_CHECK), str(tiny_model_dir), str(DATA), str(out), str(ROWS)]
    proc = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    diffs = json.loads(out.read_text())
    assert set(diffs) == {"0", "2", "3"}
    for stage, got in diffs.items():
        assert got["params"] == got["compared"] > 0, stage
        assert got["max_abs"] < 1e-5 and got["max_rel"] < 1e-5, (stage, got)

"""Packing keeps every sample's loss what it is alone: positions restart and attention stays within the sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from huarizo.formats import IGNORE_INDEX
from huarizo.trainer import DataConfig, SFTModel, collate, load_samples
from huarizo.trainer.model import use_varlen_attention

DATA = Path(__file__).resolve().parents[3] / "configs" / "train" / "data" / "tiny-alpaca.json"


def _only(batch: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    """The batch with targets kept only in columns [a, b) of row 0."""
    out = dict(batch)
    t = torch.full_like(batch["targets"], IGNORE_INDEX)
    t[0, a:b] = batch["targets"][0, a:b]
    out["targets"] = t
    return out


@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_packed_per_sample_loss_equals_unpacked(tiny_model_dir: Path, tiny_tokenizer, attn: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert attn == "sdpa" or use_varlen_attention(lm)
    model = SFTModel(lm).eval()
    samples, _, _ = load_samples(DataConfig(files=[DATA], max_length=256), tiny_tokenizer, seed=0)
    picked = [0, 9, 17, 30]
    packed = collate([picked], samples, tiny_tokenizer.pad_token_id, packed=True)
    padded = collate([[i] for i in picked], samples, tiny_tokenizer.pad_token_id, packed=False)
    contiguous = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    with torch.no_grad():
        at = 0
        for r, i in enumerate(picked):
            n = len(samples[i])
            alone = model(**collate([[i]], samples, tiny_tokenizer.pad_token_id, packed=True))
            in_pack = model(**_only(packed, at, at + n))
            row = {k: v[r : r + 1] for k, v in padded.items()}
            in_padded_batch = model(**row)
            torch.testing.assert_close(in_pack, alone, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(in_padded_batch, alone, rtol=1e-4, atol=1e-4)
            if at:  # without the per-sample positions the later samples would see their neighbours
                leaked = model(**_only(contiguous, at, at + n))
                assert abs(float(leaked) - float(alone)) > 1e-3
            at += n
        # and the whole packed row's loss is the sum of the samples' losses
        total = sum(float(model(**collate([[i]], samples, tiny_tokenizer.pad_token_id, packed=True))) for i in picked)
        assert abs(float(model(**packed)) - total) < 1e-3 * total


def test_sliding_window_model_runs_sample_by_sample_when_no_sample_reaches_the_window(
    tiny_tokenizer,  # type: ignore[no-untyped-def]
) -> None:
    """Gemma 3's layout (sliding and full layers, query scaling, no soft-capping): when every sample fits in the
    window, `varlen_attention` gives the loss of sdpa with its sliding-window mask; when one may not, no switch."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=64,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    samples, _, _ = load_samples(DataConfig(files=[DATA], max_length=64), tiny_tokenizer, seed=0)
    packed = collate([[0, 1, 2, 3]], samples, tiny_tokenizer.pad_token_id, packed=True)
    base = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        expected = float(SFTModel(base).eval()(**packed))  # sdpa, with the block-diagonal sliding-window mask
    assert not use_varlen_attention(base, max_length=65)  # a sample could pass the window: stays on sdpa
    assert use_varlen_attention(base, max_length=64)
    with torch.no_grad():
        got = float(SFTModel(base).eval()(**packed))
    assert got == pytest.approx(expected, rel=1e-5)

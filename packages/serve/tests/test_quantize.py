"""Faster CPU serving (`ServeConfig.quantize`, decode-step attention) against the stock transformers model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from huarizo.formats.models import load_causal_lm
from huarizo.serve import Finished, SamplingParams, ServeConfig, ServedModel
from huarizo.serve.attention import NAME, use_decode_attention
from huarizo.serve.model import served_fingerprint
from huarizo.serve.quantize import Int4Linear, Int8Linear, PackedLinear, int4_groups, optimize_linears

PROMPTS = [
    "Give three tips for staying healthy.",
    "The capital of France is",
    "Write a poem about the sea.",
    "What is two plus two?",
    "Name a colour.",
    "Describe a cat.",
]
NEAR_TIE = 0.05
"""Where a quantised model's greedy answer leaves the unquantised one's, the unquantised model had its own choice and
the quantised model's within this many nats: a tie that any rounding may break, not a different answer."""


def _batch(tokenizer: Any) -> Any:
    return tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_none_repacks_without_changing_a_logit(tiny_model_dir: Path, dtype: str) -> None:
    stock, tokenizer = load_causal_lm(tiny_model_dir, dtype=dtype)
    fast, _ = load_causal_lm(tiny_model_dir, dtype=dtype)
    embedding = fast.get_input_embeddings().weight.detach().clone()
    optimize_linears(fast, "none")
    # oneDNN packs bfloat16 only where the CPU has bfloat16 instructions (AVX-512 BF16, AMX); on other CPUs (AVX2)
    # bfloat16 layers stay plain nn.Linear
    packs = dtype == "float32" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert type(fast.get_output_embeddings()) is (PackedLinear if packs else torch.nn.Linear)
    assert all(type(m) is not torch.nn.Linear for m in fast.modules()) == packs
    enc = _batch(tokenizer)
    with torch.inference_mode():
        assert torch.equal(fast(**enc).logits, stock(**enc).logits)
    assert torch.equal(fast.get_input_embeddings().weight, embedding)  # the tied embedding is left as it was


def test_decode_attention_matches_sdpa_with_and_without_padding(tiny_model_dir: Path) -> None:
    """Batched greedy decoding with left padding (a mask) and a single sequence (no mask), float32."""
    stock, tokenizer = load_causal_lm(tiny_model_dir)
    fast, _ = load_causal_lm(tiny_model_dir)
    assert use_decode_attention(fast) and fast.config._attn_implementation == NAME
    enc = _batch(tokenizer)
    for inputs in (dict(enc), {"input_ids": enc.input_ids[:1, -4:]}):
        kw = {"max_new_tokens": 12, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
        with torch.inference_mode():
            want, got = stock.generate(**inputs, **kw), fast.generate(**inputs, **kw)
        assert torch.equal(got.sequences, want.sequences)
        assert max(float((a - b).abs().max()) for a, b in zip(got.logits, want.logits, strict=True)) < 1e-5


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_weights_stay_close_and_leave_the_embedding_alone(tiny_model_dir: Path, quantize: str) -> None:
    stock, tokenizer = load_causal_lm(tiny_model_dir)
    fast, _ = load_causal_lm(tiny_model_dir)
    optimize_linears(fast, quantize)  # type: ignore[arg-type]
    head = Int4Linear if quantize == "int4" else Int8Linear
    assert type(fast.get_output_embeddings()) is head
    assert {type(m) for m in fast.get_decoder().modules()} >= {Int8Linear}
    assert torch.equal(fast.get_input_embeddings().weight, stock.get_input_embeddings().weight)
    enc = _batch(tokenizer)
    with torch.inference_mode():
        want = torch.log_softmax(stock(**enc).logits, -1)
        got = torch.log_softmax(fast(**enc).logits, -1)
    assert 0 < float((got - want).abs().max()) < (0.02 if quantize == "int8" else 0.2)


def test_int4_groups_reconstruct_a_q4_grid_exactly_and_bound_the_error() -> None:
    torch.manual_seed(0)
    q = torch.randint(0, 16, (8, 64))
    q[:, ::32], q[:, 1::32] = 0, 15  # every group spans the whole grid
    scale, low = torch.rand(8, 2, 1) + 0.1, torch.randn(8, 2, 1)
    w = (q.reshape(8, 2, 32) * scale + low).reshape(8, 64)
    got_q, got_scale, got_low = int4_groups(w)
    assert torch.equal(got_q, q.int())
    assert torch.allclose(got_scale, scale[..., 0]) and torch.allclose(got_low, low[..., 0], atol=1e-6)
    w = torch.randn(64, 128)
    got_q, got_scale, got_low = int4_groups(w)
    back = (got_q.reshape(64, 4, 32) * got_scale[..., None] + got_low[..., None]).reshape(64, 128)
    assert float((back - w).norm() / w.norm()) < 0.1


def _answers(served: ServedModel, logprobs: int) -> list[Finished]:
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=logprobs)
    return [served.engine.generate(served.tokenizer.encode(p), params) for p in PROMPTS]


def _divergences(ours: list[Finished], reference: list[Finished]) -> list[float]:
    """For each answer that leaves the reference's, how far below the reference's own choice (in the reference's
    logprobs) the quantised model's choice was at the first token where they differ."""
    gaps = []
    for a, b in zip(ours, reference, strict=True):
        got, want = [t.token for t in a.logprobs], [t.token for t in b.logprobs]
        first = next((i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y), None)
        if first is not None:
            top = dict(b.logprobs[first].top)
            gaps.append(b.logprobs[first].top[0][1] - top.get(got[first], float("-inf")))
    return gaps


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_serving_answers_like_bfloat16(tiny_model_dir: Path, quantize: str) -> None:
    """Greedy answers through the engine: the same as bfloat16's, or leaving them only at a near-tie."""
    ref = ServedModel.load(ServeConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    fast = ServedModel.load(ServeConfig(model=str(tiny_model_dir), dtype="bfloat16", quantize=quantize))  # type: ignore[arg-type]
    try:
        reference, ours = _answers(ref, logprobs=5), _answers(fast, logprobs=0)
    finally:
        ref.close()
        fast.close()
    gaps = _divergences(ours, reference)
    assert len(gaps) <= 1 and all(gap < NEAR_TIE for gap in gaps), gaps
    assert fast.fingerprint != ref.fingerprint


def test_quantize_is_a_cpu_engine_setting() -> None:
    assert ServeConfig(quantize="int8").quantize == "int8"
    assert ServeConfig().quantize == "none"
    with pytest.raises(ValidationError, match="quantize int8 is for Huarizo's engine on a CPU"):
        ServeConfig(quantize="int8", device="cuda")
    with pytest.raises(ValidationError, match="quantize int4"):
        ServeConfig(quantize="int4", backend="vllm")
    with pytest.raises(ValidationError):
        ServeConfig(quantize="int2")  # type: ignore[arg-type]


def test_fingerprint_changes_with_quantize_only_when_quantized(tiny_model_dir: Path) -> None:
    ref = str(tiny_model_dir)
    plain = served_fingerprint(ref, "bfloat16", "alpaca")
    assert served_fingerprint(ref, "bfloat16", "alpaca", "none") == plain
    quantized = {served_fingerprint(ref, "bfloat16", "alpaca", q) for q in ("int8", "int4")}
    assert len({plain, *quantized}) == 3


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_logprobs_are_the_served_models_own(tiny_model_dir: Path, quantize: str) -> None:
    """Prompt and generated-token logprobs of a quantised model equal its own forward pass (float32, 1e-4)."""
    served = ServedModel.load(ServeConfig(model=str(tiny_model_dir), dtype="float32", quantize=quantize))  # type: ignore[arg-type]
    try:
        ids = served.tokenizer.encode(PROMPTS[0])
        out = served.engine.generate(ids, SamplingParams(max_tokens=8, temperature=0, logprobs=2, prompt_logprobs=2))
        full = ids + [t.token for t in out.logprobs]
        with torch.inference_mode():
            want = torch.log_softmax(served.engine.model(torch.tensor([full])).logits[0].float(), -1)
    finally:
        served.close()
    assert out.prompt_logprobs is not None
    got = [*(t.logprob for t in out.prompt_logprobs[1:] if t is not None), *(t.logprob for t in out.logprobs)]
    assert len(got) == len(full) - 1
    assert max(abs(g - float(want[k, full[k + 1]])) for k, g in enumerate(got)) < 1e-4


HELDOUT = (
    "The night train left the capital a few minutes after ten. Most of the passengers were asleep before the "
    "suburbs ended, but in the dining car two old friends were still arguing about whether the river they had "
    "crossed as children was wider than it looked from the bridge. The waiter, who had heard the same argument on "
    "this line many times, brought them tea without being asked.\n\n"
    "To repot a houseplant, water it a day before so the roots hold together, then tip the pot and ease the plant "
    "out. Loosen roots that circle the bottom, set the plant in a pot one size larger on a layer of fresh soil, and "
    "fill around it without pressing too hard. Water it well and keep it out of strong sun for a week while the "
    "roots settle."
)
"""Text the embedded model's perplexity is measured on (written for this test)."""


def _perplexity(served: ServedModel) -> float:
    import math

    out = served.engine.generate(served.tokenizer.encode(HELDOUT), SamplingParams(max_tokens=0, prompt_logprobs=0))
    assert out.prompt_logprobs is not None
    lps = [t.logprob for t in out.prompt_logprobs[1:] if t is not None]
    return math.exp(-sum(lps) / len(lps))


@pytest.mark.slow
def test_embedded_quantized_answers_and_perplexity() -> None:
    """Gemma 3 270M: int8's greedy answers leave bfloat16's only where bfloat16's own logits are within a few
    bfloat16 steps (0.125-0.25 nats at this scale), and its perplexity stays within 2%; int4 (its output layer in
    4 bits) within 6% (measured +5.1% in float32 and +5.3% in bfloat16 on an AVX2 CPU for this short text; the
    serving benchmark's longer text gives +3.4%)."""
    models = {
        q: ServedModel.load(ServeConfig(model="embedded", dtype="bfloat16", quantize=q))
        for q in ("none", "int8", "int4")
    }  # type: ignore[arg-type]
    try:
        reference = _answers(models["none"], logprobs=5)
        gaps = _divergences(_answers(models["int8"], logprobs=0), reference)
        ppl = {q: _perplexity(s) for q, s in models.items()}
    finally:
        for s in models.values():
            s.close()
    assert all(gap <= 0.4 for gap in gaps), gaps
    assert abs(ppl["int8"] / ppl["none"] - 1) <= 0.02, ppl
    assert abs(ppl["int4"] / ppl["none"] - 1) <= 0.06, ppl


def test_quantize_flag_of_serve_and_chat(tiny_model_dir: Path) -> None:
    import subprocess
    import sys

    from huarizo.formats.cli import build_parser, config_from_args
    from huarizo.serve import ChatConfig

    assert config_from_args(ServeConfig, build_parser().parse_args(["serve", "--quantize", "int8"])).quantize == "int8"
    assert config_from_args(ChatConfig, build_parser().parse_args(["chat", "--quantize", "int4"])).quantize == "int4"
    cmd = [sys.executable, "-c", "from huarizo.formats.cli import main; raise SystemExit(main())"]
    out = subprocess.run(
        [*cmd, "serve", "--model", str(tiny_model_dir), "--quantize", "int8", "--device", "cuda"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "quantize int8 is for Huarizo's engine on a CPU" in out.stderr and len(out.stderr.strip().splitlines()) == 1

"""Delta weights streamed tensor by tensor: bit-identical to the in-memory method, make-delta then apply-delta
round-trips (tied weights, an extended vocabulary), peak memory bounded by one shard and two tensors (measured in a
subprocess on shards written here), unsafe or mismatched weights refused with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from huarizo.formats.cli import main
from huarizo.trainer.delta import DeltaError, apply_delta, make_delta
from huarizo.trainer.vocab import extend_vocab

from .conftest import train_env

CORPUS = Path(__file__).parent / "data" / "zh_corpus.txt"


def _llama_tensors(cfg: LlamaConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with a Llama's names and shapes (no model object: the test writes the shards itself)."""
    g = torch.Generator().manual_seed(seed)
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return {n: (torch.randn(s, generator=g) * 0.02).to(dtype) for n, s in shapes.items()}


def _write(folder: Path, cfg: LlamaConfig, tensors: dict[str, torch.Tensor], shard_bytes: int) -> Path:
    """A model folder with its weights cut into safetensors shards of about `shard_bytes` (and an index)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, t in tensors.items():
        if shards[-1] and sum(x.nbytes for x in shards[-1].values()) + t.nbytes > shard_bytes:
            shards.append({})
        shards[-1][name] = t
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _small(tie: bool = False, vocab: int = 512) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )


def _numel(shape: list[int]) -> int:
    return int(torch.Size(shape).numel())


def _read_all(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out |= load_file(file)
    return out


@pytest.mark.parametrize(("stored", "dtype"), [(torch.float32, "float32"), (torch.bfloat16, "auto")])
def test_apply_delta_streams_and_equals_the_in_memory_result_bit_for_bit(
    stored: torch.dtype, dtype: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = _small()
    base = _write(tmp_path / "base", cfg, _llama_tensors(cfg, 0, stored), shard_bytes=60_000)
    delta_tensors = dict(reversed(_llama_tensors(cfg, 1, stored).items()))  # another order, other shard borders
    delta = _write(tmp_path / "delta", cfg, delta_tensors, shard_bytes=150_000)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(delta)
    out = apply_delta(str(base), str(delta), tmp_path / "target", dtype, max_shard_size=100_000)  # type: ignore[arg-type]

    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    # the in-memory method (what FastChat and Huarizo's earlier apply_delta did): two models, param += base param
    torch_dtype = torch.float32 if dtype == "float32" else stored
    patched = AutoModelForCausalLM.from_pretrained(delta, dtype=torch_dtype)
    base_sd = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype).state_dict()
    with torch.no_grad():
        for name, param in patched.state_dict().items():
            param += base_sd[name]
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch_dtype).state_dict()
    expected = patched.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert all(t.dtype == torch_dtype for t in _read_all(out).values())
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()
    assert "huarizo apply-delta" in (out / "README.md").read_text(encoding="utf-8")


def _tuned(src: Path, folder: Path, *, seed: int, untie: bool = False) -> Path:
    """A copy of `src` with every weight moved (and its output layer untied from the input, if asked)."""
    model = AutoModelForCausalLM.from_pretrained(src)
    if untie:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def test_make_delta_then_apply_delta_round_trips_an_extended_vocabulary(tiny_model_dir: Path, tmp_path: Path) -> None:
    extended = extend_vocab(str(tiny_model_dir), [CORPUS], 300, tmp_path / "extended").folder
    tuned = _tuned(extended, tmp_path / "tuned", seed=3)  # tied, 812 rows over a 512-row base
    assert main(["make-delta", "--base", str(tiny_model_dir), "--target", str(tuned),
                 "--delta", str(tmp_path / "delta")]) == 0  # fmt: skip
    delta, want, base = _read_all(tmp_path / "delta"), _read_all(tuned), _read_all(tiny_model_dir)
    emb = "model.embed_tokens.weight"
    assert delta.keys() == want.keys() == base.keys()  # tied: one stored matrix everywhere
    assert delta[emb].shape[0] == 812 > base[emb].shape[0]
    assert torch.equal(delta[emb][512:], want[emb][512:])  # new rows are published as they are
    assert torch.equal(delta[emb][:512], want[emb][:512] - base[emb])

    assert main(["apply-delta", "--base", str(tiny_model_dir), "--delta", str(tmp_path / "delta"),
                 "--target", str(tmp_path / "back")]) == 0  # fmt: skip
    back = _read_all(tmp_path / "back")
    for name, t in want.items():
        torch.testing.assert_close(back[name], t, rtol=0, atol=1e-7)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert len(AutoTokenizer.from_pretrained(tmp_path / "back")) == 812


def test_an_untied_target_over_a_tied_base_finds_the_output_layer_through_the_tie(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tuned = _tuned(tiny_model_dir, tmp_path / "tuned", seed=4, untie=True)
    assert "lm_head.weight" in _read_all(tuned) and "lm_head.weight" not in _read_all(tiny_model_dir)
    delta = make_delta(str(tiny_model_dir), str(tuned), tmp_path / "delta")
    base, want = _read_all(tiny_model_dir), _read_all(tuned)
    assert torch.equal(_read_all(delta)["lm_head.weight"], want["lm_head.weight"] - base["model.embed_tokens.weight"])
    back = _read_all(apply_delta(str(tiny_model_dir), str(delta), tmp_path / "back"))
    for name, t in want.items():
        torch.testing.assert_close(back[name], t, rtol=0, atol=1e-7)


PEAK_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch, transformers, safetensors
from huarizo.trainer.delta import apply_delta

def status(key):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))

small_base, small_delta, base, delta, out, shard = sys.argv[1:]
apply_delta(small_base, small_delta, out + "-warmup")  # every import and code path, once
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
start = status("VmRSS:")
apply_delta(base, delta, out, max_shard_size=int(shard))
print(json.dumps({"start_kb": start, "peak_kb": status("VmHWM:")}))
"""


def test_apply_delta_peak_memory_is_one_shard_and_two_tensors(tmp_path: Path) -> None:
    cfg = LlamaConfig(
        vocab_size=8000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=8,
        tie_word_embeddings=False,
    )
    shard = 64_000_000
    base = _write(tmp_path / "base", cfg, _llama_tensors(cfg, 0), shard)
    delta = _write(tmp_path / "delta", cfg, _llama_tensors(cfg, 1), shard)
    small = _small()
    small_base = _write(tmp_path / "small-base", small, _llama_tensors(small, 0), 100_000)
    small_delta = _write(tmp_path / "small-delta", small, _llama_tensors(small, 1), 100_000)
    out = tmp_path / "target"
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *map(str, (small_base, small_delta, base, delta, out, shard))],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    files = [*base.glob("*.safetensors"), *delta.glob("*.safetensors"), *out.glob("*.safetensors")]
    largest_shard = max(f.stat().st_size for f in files)
    largest_tensor = 0
    for file in base.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            largest_tensor = max(largest_tensor, *(4 * _numel(f.get_slice(k).get_shape()) for k in f.keys()))  # noqa: SIM118
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    grown = (mem["peak_kb"] - mem["start_kb"]) * 1024
    print(
        f"model {model_bytes / 1e6:.0f} MB, largest shard {largest_shard / 1e6:.0f} MB, largest tensor "
        f"{largest_tensor / 1e6:.0f} MB; interpreter {mem['start_kb'] / 1e3:.0f} MB, peak growth {grown / 1e6:.0f} MB"
    )
    assert grown < largest_shard + 2 * largest_tensor, (grown, largest_shard, largest_tensor)
    assert grown < model_bytes / 2  # far from two models (the in-memory method's peak)
    with safe_open(sorted(out.glob("*.safetensors"))[-1], "pt") as f:
        name = next(iter(f.keys()))
        got = f.get_tensor(name)
    want = _read_all(base)[name] + _read_all(delta)[name]
    assert torch.equal(got, want)


def test_pickled_code_in_bin_weights_never_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    delta = tmp_path / "delta"
    shutil.copytree(tiny_model_dir, delta)
    (delta / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil()}, delta / "pytorch_model.bin")
    with pytest.raises(DeltaError, match=r"pytorch_model.bin: cannot read it as plain tensors"):
        apply_delta(str(tiny_model_dir), str(delta), tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()

    # plain tensors in a .bin (an older delta) are read, memory-mapped
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), delta / "pytorch_model.bin")
    out = apply_delta(str(tiny_model_dir), str(delta), tmp_path / "out")
    base = _read_all(tiny_model_dir)
    assert all(torch.equal(_read_all(out)[k], 2 * base[k]) for k in base)


def test_mismatched_weights_are_one_line_errors(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _write(tmp_path / "other", _small(vocab=400), _llama_tensors(_small(vocab=400), 0), 10**9)
    code = main(["apply-delta", "--base", str(tiny_model_dir), "--delta", str(other),
                 "--target", str(tmp_path / "t")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: ") and "does not fit the base model's" in err, err
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.tmp").exists()

    extra = _llama_tensors(_small(vocab=512), 0) | {"model.extra.weight": torch.zeros(2)}
    other = _write(tmp_path / "extra", _small(vocab=512), extra, 10**9)
    code = main(["apply-delta", "--base", str(tiny_model_dir), "--delta", str(other),
                 "--target", str(tmp_path / "t")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "tensor 'model.extra.weight' of the delta model has no counterpart in the base model" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    code = main(["make-delta", "--base", str(empty), "--target", str(tiny_model_dir),
                 "--delta", str(tmp_path / "d"), "--max-shard-size", "2GB"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and f"base model {empty}: no model.safetensors or pytorch_model.bin" in err
    code = main(["make-delta", "--base", str(tiny_model_dir), "--target", str(tiny_model_dir),
                 "--delta", str(tmp_path / "d"), "--max-shard-size", "lots"])  # fmt: skip
    assert code == 1 and "use a size like 500MB or 2GB" in capsys.readouterr().err

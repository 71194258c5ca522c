"""Delta weights: Huarizo's streamed `apply_delta` vs the in-memory method FastChat's `apply_delta` uses (both models
loaded with `from_pretrained`, `param += delta`), on the same ~1.1 GB Llama: peak resident memory above the
interpreter, and wall time, as ratios printed in one run. Huarizo writes 200 MB output shards (`--max-shard-size`),
as the input's.

    pytest benchmarks/trainer/bench_delta.py -s -o python_files='bench_*.py'

Each side runs in its own process; the peak is VmHWM reset after a warm-up run on a tiny model (so imports and
first-use allocations are not counted for either side). The weights are random, written here as 200 MB shards.
FastChat itself is not run: importing `fastchat.model` pulls its whole model zoo, and its `apply_delta` asks for a
slow (sentencepiece) tokenizer; the in-memory method below is its algorithm, in fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SHARD = 200_000_000
RUN = r"""
import json, sys, time
from pathlib import Path
import torch, transformers, safetensors
from huarizo.trainer.delta import apply_delta

def status(key):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))

def in_memory(base, delta, target):
    from transformers import AutoModelForCausalLM
    patched = AutoModelForCausalLM.from_pretrained(delta, dtype=torch.float32)
    base_sd = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    with torch.no_grad():
        for name, param in patched.state_dict().items():
            param += base_sd[name]
    patched.save_pretrained(target)

method, small_base, small_delta, base, delta, out = sys.argv[1:]
run = (lambda b, d, t: apply_delta(b, d, t, max_shard_size=200_000_000)) if method == "huarizo" else in_memory
run(small_base, small_delta, out + "-warmup")
Path("/proc/self/clear_refs").write_text("5")
start, t0 = status("VmRSS:"), time.perf_counter()
run(base, delta, out)
print(json.dumps({"seconds": time.perf_counter() - t0, "start_mb": start / 1024, "peak_mb": status("VmHWM:") / 1024}))
"""


def _write(folder: Path, cfg: Any, seed: int) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    cfg.save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    h, f, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes |= {p + f"self_attn.{k}_proj.weight": (h, h) for k in "qkvo"}
        shapes |= {
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        }
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    shard: dict[str, Any] = {}
    files: dict[str, str] = {}
    count = 0

    def flush() -> None:
        nonlocal shard, count
        count += 1
        name = f"model-{count:05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        files.update(dict.fromkeys(shard, name))
        shard = {}

    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g) * 0.02
        if shard and sum(x.nbytes for x in shard.values()) + t.nbytes > SHARD:
            flush()
        shard[name] = t
    flush()
    total = sum((folder / f).stat().st_size for f in set(files.values()))
    index = {"metadata": {"total_size": total}, "weight_map": files}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("delta-bench")
    big = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=8
    )
    small = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    return {
        "base": _write(root / "base", big, 0),
        "delta": _write(root / "delta", big, 1),
        "small_base": _write(root / "small-base", small, 0),
        "small_delta": _write(root / "small-delta", small, 1),
        "root": root,
    }


def _run(method: str, m: dict[str, Path]) -> dict[str, float]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    args = [m["small_base"], m["small_delta"], m["base"], m["delta"], m["root"] / f"out-{method}"]
    proc = subprocess.run(
        [sys.executable, "-c", RUN, method, *map(str, args)], env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_apply_delta_peak_memory_vs_in_memory(benchmark: Any, models: dict[str, Path]) -> None:
    model_mb = sum(f.stat().st_size for f in models["base"].glob("*.safetensors")) / 1e6
    results: dict[str, dict[str, float]] = {}

    def pair() -> None:
        results["huarizo"] = _run("huarizo", models)
        results["in_memory"] = _run("in_memory", models)

    benchmark.pedantic(pair, rounds=1, iterations=1)
    h, b = results["huarizo"], results["in_memory"]
    grow_h, grow_b = h["peak_mb"] - h["start_mb"], b["peak_mb"] - b["start_mb"]
    print(
        f"\napply-delta, {model_mb:.0f} MB fp32 model in {SHARD / 1e6:.0f} MB shards: peak memory above interpreter "
        f"{grow_h:.0f} MB (Huarizo, streamed) vs {grow_b:.0f} MB (in-memory, FastChat's method): "
        f"{grow_b / grow_h:.1f}x less; {h['seconds']:.1f} s vs {b['seconds']:.1f} s; "
        f"interpreter {h['start_mb']:.0f} / {b['start_mb']:.0f} MB"
    )
    benchmark.extra_info.update(model_mb=model_mb, huarizo=h, in_memory=b, memory_ratio=grow_b / grow_h)
    assert grow_h < model_mb / 4

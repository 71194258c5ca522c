"""Huarizo's trainer against the strongest peers, on the same machine, model, data, DeepSpeed stage and micro-batch
token budget: trained (unmasked) tokens per second and peak memory, as ratios measured in one run.

    pytest benchmarks/trainer -s -o python_files='bench_*.py'

Data: the 999 real Alpaca-format records in ../shared/data (skips when absent), Alpaca's template, max length 512,
tokenized once by Huarizo so every side trains the same tokens. Micro-batches: at most BUDGET tokens each. Huarizo
packs its samples into one row of BUDGET tokens; the HF Trainer runs on exactly those micro-batches (flattened
padding-free with `DataCollatorWithFlattening`, or padded, one row a sample); TRL's `SFTTrainer` packs the same
samples itself (`packing=True`, best-fit decreasing, padding-free) into sequences of BUDGET tokens. So every step of
every side carries about the same number of tokens, which fixed-sample batches do not.

Models: `llama-20m` (a 20.6M-parameter Llama, 8k vocabulary, tokenizer trained on the data on the spot, full
fine-tune) and `gemma3-270m-lora` (the embedded Gemma 3 270M, 262k vocabulary, LoRA r=16 on the attention
projections), fp32 on the CPU, ZeRO-2 (BENCH_TRAIN_STAGES="0,2,3" for more).

Each side runs as its own process, five or six optimiser steps, measured from the fourth on. The CPU is shared with
other work, so the ratios are taken on trained tokens per CPU-second of the process (one thread, BENCH_THREADS), which
other load does not skew; wall-clock rates (median per step) are printed beside them. Peak memory: the process's peak
RSS.
The GPU benchmark (bench_train_gpu.py) skips without CUDA.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HUARIZO_SHARED_DATA", HERE.parents[2] / "shared" / "data"))
ALPACA = SHARED / "alpaca_format_samples" / "llamafactory_alpaca_en_demo.json"
THREADS = os.environ.get("BENCH_THREADS", "1")
STAGES = [int(s) for s in os.environ.get("BENCH_TRAIN_STAGES", "2").split(",")]
MAX_LENGTH = 512
PEERS = {
    "hf-flatten": "HF Trainer + DataCollatorWithFlattening",
    "trl-packing": "TRL SFTTrainer, packing (padding-free)",
    "hf-padded": "HF Trainer, padded",
}
MODELS: dict[str, dict[str, Any]] = {
    "llama-20m": {"budget": 2048, "accum": 4, "steps": 6, "lr": 2e-5, "lora": None},
    "gemma3-270m-lora": {
        "budget": 1024,
        "accum": 2,
        "steps": 5,
        "lr": 2e-4,
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    },
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return env | {"OMP_NUM_THREADS": THREADS, "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def _llama(folder: Path) -> Path:
    """The 20.6M-parameter Llama with a byte-level BPE of 8k tokens trained on the data."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from huarizo.formats import read_records, to_conversations
    from huarizo.formats.models import train_tokenizer

    convs = [c for r in read_records(ALPACA).records for c in to_conversations(r)]
    tok = train_tokenizer([m.text for c in convs for m in c.messages], vocab_size=8000)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1344,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _huarizo_config(setup: dict[str, Any], stage: int, out: Path) -> dict[str, Any]:
    m = setup["spec"]
    lora = m["lora"]
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"ref": str(setup["model"]), "dtype": "float32"},
        "data": {"files": [str(ALPACA)], "template": "alpaca", "max_length": MAX_LENGTH},
        "batching": {"mode": "packed", "micro_batch_size": 1, "pack_length": m["budget"]},
        "optim": {"lr": m["lr"], "max_steps": m["steps"], "warmup_ratio": 0.03, "grad_accum": m["accum"]},
        "deepspeed": {"stage": stage},
        "output": {"progress": False, "save_steps": 0, "tensorboard": False},
    }
    if lora:
        cfg["lora"] = {
            "enabled": True,
            "r": lora["r"],
            "alpha": lora["lora_alpha"],
            "dropout": 0.0,
            "target_modules": lora["target_modules"],
            "merge": False,
        }
    return cfg


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, and the samples and micro-batches every side trains on (Huarizo's, written to samples.json)."""
    if not ALPACA.exists():
        pytest.skip(f"real Alpaca-format data not found at {ALPACA} (set HUARIZO_SHARED_DATA)")
    from safetensors import safe_open

    from huarizo.formats.models import load_tokenizer, resolve_model
    from huarizo.trainer import Schedule, TrainConfig, load_samples

    name = request.param
    root = tmp_path_factory.mktemp(f"bench-train-{name}")
    model = _llama(root / "model") if name == "llama-20m" else Path(resolve_model("embedded"))
    setup = {"name": name, "root": root, "model": model, "spec": MODELS[name]}
    cfg = TrainConfig.model_validate(_huarizo_config(setup, 2, root / "probe"))
    tok = load_tokenizer(str(model))
    samples, _, _ = load_samples(cfg.data, tok, cfg.optim.seed)
    schedule = Schedule.build(
        [len(s) for s in samples],
        cfg.batching,
        cfg.data.max_length,
        world_size=1,
        grad_accum=cfg.optim.grad_accum,
        epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps,
        seed=cfg.optim.seed,
    )
    groups = [rows[0] for step in schedule.steps for rows in step[0]]  # one row a micro-batch
    data = {
        "pad_id": tok.pad_token_id,
        "samples": [[s.input_ids.tolist(), s.labels.tolist()] for s in samples],
        "groups": groups,
    }
    (root / "samples.json").write_text(json.dumps(data))
    params = 0
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            params += sum(_numel(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (not iterable)
    return setup | {"samples": root / "samples.json", "params": params}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _huarizo(setup: dict[str, Any], stage: int) -> dict[str, Any]:
    out = setup["root"] / f"huarizo-z{stage}"
    cfg_file = setup["root"] / f"huarizo-z{stage}.yaml"
    cfg_file.write_text(yaml.safe_dump(_huarizo_config(setup, stage, out)))
    proc = subprocess.run(
        [sys.executable, "-m", "huarizo.trainer", str(cfg_file)], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "trained_tokens" in r]
    rates = [b["trained_tokens"] / (b["elapsed_s"] - a["elapsed_s"]) for a, b in itertools.pairwise(rows[2:])]
    return {
        "trained_tokens_per_s": statistics.median(rates),
        "trained_tokens_per_cpu_s": sum(r["trained_tokens"] for r in rows[3:]) / (rows[-1]["cpu_s"] - rows[2]["cpu_s"]),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows),
        "trained_tokens": [r["trained_tokens"] for r in rows],
        "grad_norm": [r["grad_norm"] for r in rows],
    }


def _peer(setup: dict[str, Any], stage: int, peer: str) -> dict[str, Any]:
    from huarizo.trainer import TrainConfig, ds_config

    m = setup["spec"]
    conf = ds_config(TrainConfig.load(None, [f"deepspeed.stage={stage}", "model.dtype=float32"]), 1)
    out = setup["root"] / f"{peer}-z{stage}.json"
    spec = {
        "peer": peer,
        "model": str(setup["model"]),
        "lora": m["lora"],
        "ds_config": conf,
        "data": str(setup["samples"]),
        "accum": m["accum"],
        "steps": m["steps"],
        "budget": m["budget"],
        "out": str(out),
    }
    spec_file = out.with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(HERE / "peers.py"), str(spec_file)], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_trained_tokens_per_s_vs_peers(benchmark: Any, figures: Any, setup: dict[str, Any], stage: int) -> None:
    result: dict[str, dict[str, Any]] = {}

    def run_all() -> None:
        for peer in PEERS:
            result[peer] = _peer(setup, stage, peer)
        result["huarizo"] = _huarizo(setup, stage)

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    h = result["huarizo"]
    best = max(PEERS, key=lambda p: result[p]["trained_tokens_per_cpu_s"])
    lines = []
    for key in ["huarizo", *PEERS]:
        r = result[key]
        per_step = sum(r["trained_tokens"][3:]) / max(1, len(r["trained_tokens"][3:]))
        figures.add(f"{key}_trained_tokens_per_cpu_s", r["trained_tokens_per_cpu_s"], "tokens/CPU-s", "higher")
        figures.add(f"{key}_trained_tokens_per_s", r["trained_tokens_per_s"], "tokens/s", "higher", "wall clock")
        figures.add(f"{key}_peak_mem_mb", r["peak_mem_mb"], "MB", "lower")
        lines.append(
            f"  {PEERS.get(key, 'Huarizo'):<42} {r['trained_tokens_per_cpu_s']:>8.0f} trained tok/CPU-s "
            f"({r['trained_tokens_per_s']:>6.0f}/s wall), peak {r['peak_mem_mb']:>6.0f} MB, "
            f"{per_step:>6.0f} trained tokens a step"
        )
        if key != "huarizo":
            figures.baseline(key, PEERS[key])
            figures.add(f"speed_vs_{key}", h["trained_tokens_per_cpu_s"] / r["trained_tokens_per_cpu_s"], "x", "higher")
            figures.add(f"memory_vs_{key}", h["peak_mem_mb"] / r["peak_mem_mb"], "x", "lower")
    speed = h["trained_tokens_per_cpu_s"] / result[best]["trained_tokens_per_cpu_s"]
    wall = h["trained_tokens_per_s"] / result[best]["trained_tokens_per_s"]
    mem = h["peak_mem_mb"] / result[best]["peak_mem_mb"]
    figures.add("speed_vs_best_peer", speed, "x", "higher", PEERS[best])
    figures.add("memory_vs_best_peer", mem, "x", "lower", PEERS[best])
    benchmark.extra_info.update(model=setup["name"], params=setup["params"], stage=stage, best_peer=PEERS[best])
    target = " (target on the embedded model: >= 1.3x at <= 0.7x memory)" if "gemma" in setup["name"] else ""
    print(
        f"\n[trainer] {setup['name']} ({setup['params'] / 1e6:.1f}M parameters), ZeRO-{stage}, {THREADS} thread(s), "
        f"micro-batches of at most {setup['spec']['budget']} tokens x {setup['spec']['accum']}:\n"
        + "\n".join(lines)
        + f"\n  vs the best peer ({PEERS[best]}): speed x{speed:.2f} (wall x{wall:.2f}), memory x{mem:.2f}{target}"
    )

"""GPU throughput of `huarizo train` on a 1.1B-parameter Llama (TinyLlama's shape, random weights), bf16, ZeRO-2,
packed 2048-token rows: tokens/s, trained tokens/s, MFU and peak GPU memory. Skips without CUDA.

    pytest benchmarks/trainer/bench_train_gpu.py -s -o python_files='bench_*.py'

MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (attention FLOPs left out; peak from BENCH_PEAK_TFLOPS, default
989, an H100 SXM's dense bf16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HUARIZO_SHARED_DATA", HERE.parents[2] / "shared" / "data"))
ALPACA = SHARED / "alpaca_format_samples" / "llamafactory_alpaca_en_demo.json"
STEPS = 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_1b_throughput(benchmark: Any, tmp_path: Path) -> None:
    if not ALPACA.exists():
        pytest.skip(f"real Alpaca-format data not found at {ALPACA}")
    from transformers import LlamaConfig, LlamaForCausalLM

    from huarizo.formats import read_records, to_conversations
    from huarizo.formats.models import train_tokenizer

    convs = [c for r in read_records(ALPACA).records for c in to_conversations(r)]
    tok = train_tokenizer([m.text for c in convs for m in c.messages], vocab_size=32000)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_dir = tmp_path / "model"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    out = tmp_path / "run"
    run_cfg = {
        "output_dir": str(out),
        "model": {"ref": str(model_dir), "dtype": "bfloat16"},
        "data": {"files": [str(ALPACA)], "template": "alpaca", "max_length": 2048},
        "batching": {"mode": "packed", "micro_batch_size": 4},
        "optim": {"lr": 2e-5, "max_steps": STEPS},
        "deepspeed": {"stage": 2},
        "output": {"progress": False, "save_steps": 0, "tensorboard": False},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(run_cfg))
    cmd = [sys.executable, "-m", "huarizo.trainer", str(tmp_path / "cfg.yaml")]
    benchmark.pedantic(lambda: subprocess.run(cmd, check=True, timeout=1200), rounds=1, iterations=1)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "tokens" in r]
    span = rows[-1]["elapsed_s"] - rows[2]["elapsed_s"]
    tps = sum(r["tokens"] for r in rows[3:]) / span
    trained = sum(r["trained_tokens"] for r in rows[3:]) / span
    peak_tflops = float(os.environ.get("BENCH_PEAK_TFLOPS", "989"))
    mfu = 6 * params * tps / (peak_tflops * 1e12)
    print(
        f"\n{torch.cuda.get_device_name()}: {params / 1e9:.2f}B Llama, bf16, ZeRO-2, packed 2048: {tps:.0f} tok/s, "
        f"{trained:.0f} trained tok/s, MFU {mfu:.1%}, peak {max(r['peak_mem_mb'] for r in rows) / 1024:.1f} GiB"
    )
    benchmark.extra_info.update(tokens_per_s=tps, trained_tokens_per_s=trained, mfu=mfu)

"""Run by test_loss.py in its own process: `python zero_loss_check.py MODEL DATA OUT.json ROWS`.

For ZeRO 0, 2 and 3, a DeepSpeed engine on `SFTModel` (fp32, two accumulated micro-batches, the train loop's own
calls) reduces its gradients; they are compared with those of the full-logits loss on a plain copy of the model.
Writes `{stage: {"params", "compared", "max_abs", "max_rel"}}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from huarizo.formats import IGNORE_INDEX
from huarizo.formats.models import load_tokenizer
from huarizo.trainer import DataConfig, SFTModel, collate, load_samples
from huarizo.trainer import model as model_module
from huarizo.trainer.train import setup_distributed


def load(folder: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")


def main() -> None:
    folder, data, out, rows = sys.argv[1:5]
    setup_distributed()
    import deepspeed
    from deepspeed.utils import safe_get_full_grad
    from transformers.integrations import HfDeepSpeedConfig

    tok = load_tokenizer(folder)
    model_module.LOSS_CHUNK_BYTES = 4 * len(tok) * int(rows)
    samples, _, _ = load_samples(DataConfig(files=[Path(data)], max_length=256), tok, seed=0)
    micro = [collate(r, samples, tok.pad_token_id, packed=True) for r in ([[0, 9, 17], [30, 4]], [[5, 6], [7, 8]])]

    ref_lm = load(folder)
    for batch in micro:
        logits = ref_lm(**{k: v for k, v in batch.items() if k != "targets"}, use_cache=False).logits.float()
        targets = batch["targets"].flatten()
        loss = F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        (loss * 0.37).backward()
    ref = {n: p.grad for n, p in ref_lm.named_parameters()}

    result: dict[str, Any] = {}
    for stage in (0, 2, 3):
        conf = {
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 2,
            "train_batch_size": 4,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
        }
        hf_ds = HfDeepSpeedConfig(conf) if stage == 3 else None
        model = SFTModel(load(folder))
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=0.0)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params, config=conf)
        for k, batch in enumerate(micro):
            engine.backward(engine(**batch) * 0.37, scale_wrt_gas=False)
            if k < len(micro) - 1:
                engine.step()  # not a boundary yet: counts the micro-step
        max_abs = max_rel = 0.0
        compared = 0
        for name, p in engine.module.lm.named_parameters():
            grad = safe_get_full_grad(p)
            want = ref[name]
            diff = (grad.float() - want).abs()
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / (want.abs() + 1.0)).max()))
            compared += 1
        result[str(stage)] = {
            "params": len(list(ref_lm.parameters())),
            "compared": compared,
            "max_abs": max_abs,
            "max_rel": max_rel,
        }
        engine.destroy()
        del engine, hf_ds
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The peers of `bench_train.py`, one run per process: `python peers.py SPEC.json`.

SPEC: `{"peer", "model", "lora", "ds_config", "data", "accum", "steps", "budget", "out"}`; `data` holds the pad id, the
tokenized samples (`[input_ids, labels]`, Huarizo's, so every side trains the same tokens) and the micro-batches
Huarizo's schedule makes of them (lists of sample indices of at most `budget` tokens).

- `hf-flatten`: the HF Trainer with `DataCollatorWithFlattening` (padding-free: one row, position ids restarting per
  sample), each micro-batch one of Huarizo's groups, in Huarizo's order.
- `hf-padded`: the HF Trainer, the same groups with each sample a row padded to the longest (the Alpaca recipe).
- `trl-packing`: TRL's `SFTTrainer` with `packing=True` (best-fit decreasing, padding-free) into sequences of
  `budget` tokens, one a micro-batch, from the same samples.

Writes `{"trained_tokens_per_s", "trained_tokens_per_cpu_s", "peak_mem_mb", "trained_tokens", "wall_s"}` to `out`, the
rates from the third optimiser step on.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
    os.environ.setdefault(key, value)

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def padded(pad: int, samples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad)
    labels = torch.full((len(samples), width), -100)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(s["input_ids"]), torch.tensor(s["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    data = json.loads(Path(spec["data"]).read_text())
    samples = [{"input_ids": ids, "labels": labels} for ids, labels in data["samples"]]
    ds = dict(spec["ds_config"])
    ds.update(train_micro_batch_size_per_gpu="auto", train_batch_size="auto", gradient_accumulation_steps="auto")
    ds.pop("zero_allow_untested_optimizer", None)

    trained: list[int] = []
    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    def count(trainer: Any, inputs: dict[str, Any]) -> None:
        if trainer.state.global_step == len(trained):
            trained.append(0)
        trained[-1] += int((inputs["labels"][:, 1:] != -100).sum())

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    lora = None
    if spec["lora"]:
        from peft import LoraConfig

        lora = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **spec["lora"])
    common: dict[str, Any] = {
        "output_dir": str(Path(spec["out"]).with_suffix(".run")),
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": spec["accum"],
        "max_steps": spec["steps"],
        "learning_rate": 2e-4 if lora else 2e-5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 1,
        "weight_decay": 0.0,
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": [],
        "deepspeed": ds,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 42,
    }
    start = time.perf_counter()
    if spec["peer"] == "trl-packing":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        class CountingSFT(SFTTrainer):
            def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
                count(self, inputs)
                return super().training_step(model, inputs, num_items_in_batch)

        args = SFTConfig(**common, bf16=False, packing=True, packing_strategy="bfd", max_length=spec["budget"])
        CountingSFT(
            model=model, args=args, train_dataset=Dataset.from_list(samples), peft_config=lora, callbacks=[Clock()]
        ).train()
    else:
        if lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, lora)
        groups = [[samples[i] for i in row] for row in data["groups"]]
        flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

        def collate(batch: list[list[dict[str, list[int]]]]) -> dict[str, torch.Tensor]:
            (group,) = batch
            return flatten(group) if spec["peer"] == "hf-flatten" else padded(data["pad_id"], group)

        class CountingTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
                return torch.utils.data.SequentialSampler(self.train_dataset)  # Huarizo's order

            def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
                count(self, inputs)
                return super().training_step(model, inputs, num_items_in_batch)

        args = TrainingArguments(**common)
        CountingTrainer(
            model=model, args=args, train_dataset=groups, data_collator=collate, callbacks=[Clock()]
        ).train()
    wall = time.perf_counter() - start
    rate = statistics.median(n / (b - a) for n, a, b in zip(trained[3:], times[2:], times[3:], strict=False))
    result = {
        "trained_tokens_per_s": rate,
        "trained_tokens_per_cpu_s": sum(trained[3:]) / (cpu[-1] - cpu[2]),
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trained_tokens": trained,
        "wall_s": wall,
    }
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()

"""The baseline: the HF Trainer with the Alpaca / FastChat recipe (random order, each micro-batch padded to its
longest sample, full-vocabulary logits), on the same DeepSpeed config, model and tokenized samples as Huarizo.

`python hf_baseline.py MODEL_DIR SAMPLES.json DS_CONFIG.json OUT.json MICRO_BATCH GRAD_ACCUM MAX_STEPS` writes
`{"trained_tokens_per_s", "trained_tokens_per_cpu_s", "peak_mem_mb"}` (from the third step on).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
    os.environ.setdefault(key, value)

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main() -> None:
    model_dir, samples_file, ds_file, out_file, micro, accum, max_steps = sys.argv[1:8]
    samples = json.loads(Path(samples_file).read_text())
    ds = json.loads(Path(ds_file).read_text())
    ds.update(train_micro_batch_size_per_gpu="auto", train_batch_size="auto", gradient_accumulation_steps="auto")
    ds.pop("zero_allow_untested_optimizer", None)
    pad = samples["pad_id"]
    data = [{"input_ids": s[0], "labels": s[1]} for s in samples["samples"]]

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    trained: list[int] = []
    times: list[float] = []
    cpu: list[float] = []

    class Count(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            count = int((inputs["labels"][:, 1:] != -100).sum())
            if self.state.global_step == len(trained):
                trained.append(0)
            trained[-1] += count
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=os.path.dirname(out_file) + "/hf-run",
        per_device_train_batch_size=int(micro),
        gradient_accumulation_steps=int(accum),
        max_steps=int(max_steps),
        learning_rate=2e-5,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(0.03 * int(max_steps))),
        weight_decay=0.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        deepspeed=ds,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=42,
    )
    Count(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    # the median of per-step rates from the third step on: robust to other processes sharing the CPU
    rate = statistics.median(n / (b - a) for n, a, b in zip(trained[3:], times[2:], times[3:], strict=False))
    per_cpu = sum(trained[3:]) / (cpu[-1] - cpu[2])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out_file, "w") as fh:
        json.dump({"trained_tokens_per_s": rate, "trained_tokens_per_cpu_s": per_cpu, "peak_mem_mb": peak}, fh)


if __name__ == "__main__":
    main()

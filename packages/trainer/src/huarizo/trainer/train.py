"""The SFT recipe: `SFTRecipe`, one readable class on a DeepSpeed engine, driven by one `TrainConfig`.

Run it as `huarizo train CONFIG.yaml` (one process), or under `torchrun` / the `deepspeed` launcher with
`python -m huarizo.trainer CONFIG.yaml` (several processes and nodes). Each optimiser step takes `grad_accum`
micro-batches per process; the loss is the summed token cross-entropy of all of them divided by the number of
trained tokens of the whole step (all processes), so every trained token weighs the same whatever the batch shape.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from huarizo.formats import IGNORE_INDEX, HuarizoError, JsonlAppender, ProgressBar, get_template, write_records
from huarizo.formats.models import load_tokenizer
from huarizo.trainer.config import TrainConfig
from huarizo.trainer.data import Sample, Schedule, check_files, collate, load_samples
from huarizo.trainer.model import (
    TEMPLATES_RECORD,
    SFTModel,
    add_lora,
    check_config_overrides,
    export_template,
    load_model,
    merge_lora,
    save_hf_folder,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a run left its outputs."""

    output_dir: Path
    final_dir: Path
    steps: int
    resumed_from: int
    loss: float | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU); a single process gets a one-rank group."""
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    # The shared-memory allreduce op JIT-compiles for a minute on every start; gloo does the reductions.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    elif "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


class TrainError(HuarizoError):
    """A run that cannot start: an output folder it cannot write, a ds_config file it cannot read, ..."""


def preflight(cfg: TrainConfig) -> None:
    """What can be checked before any process group, model or output file exists: the data files and their
    templates, the output folder, the user's ds_config and the model's config overrides."""
    check_files(cfg.data)
    _check_output_dir(cfg.output_dir)
    ds_config(cfg, 1)
    check_config_overrides(cfg.model)


def _check_output_dir(out: Path) -> None:
    """`output_dir` must be a folder (or not exist yet) in a place this process can write into."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"output_dir: {out}: is a file, not a folder")
    base = out
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise TrainError(f"output_dir: {out}: {base} is a file, not a folder")
    try:  # the only sure test of writability (permissions, read-only mounts, root): write, then remove
        fd, probe = tempfile.mkstemp(prefix=".huarizo-write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrainError(f"output_dir: {out}: cannot write into {base} ({exc.strerror or exc})") from None


def _user_ds_config(path: Path) -> dict[str, Any]:
    where = f"deepspeed.config_file: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainError(f"{where}: line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise TrainError(f"{where}: JSON nested too deeply") from None
    if not isinstance(conf, dict):
        raise TrainError(f"{where}: the top level must be a JSON object")
    return conf


def ds_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for a run: the user's file (if any) with batch, accumulation and clipping set from
    `cfg`; else one generated from `cfg.deepspeed`."""
    ds = cfg.deepspeed
    conf: dict[str, Any] = _user_ds_config(ds.config_file) if ds.config_file else {}
    if "zero_optimization" not in conf:
        zero: dict[str, Any] = {"stage": ds.stage}
        if ds.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds.stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        conf["zero_optimization"] = zero
    mb, gas = cfg.batching.micro_batch_size, cfg.optim.grad_accum
    conf.update(
        train_micro_batch_size_per_gpu=mb,
        gradient_accumulation_steps=gas,
        train_batch_size=mb * gas * world_size,
        gradient_clipping=cfg.optim.clip,
    )
    conf.setdefault("bf16", {"enabled": cfg.model.dtype == "bfloat16"})
    conf.setdefault("fp16", {"enabled": cfg.model.dtype == "float16"})
    conf.setdefault("zero_allow_untested_optimizer", True)
    conf.setdefault("zero_force_ds_cpu_optimizer", False)  # our torch AdamW also runs with optimizer offload
    conf.setdefault("steps_per_print", 10**9)
    conf.setdefault("wall_clock_breakdown", False)
    return conf


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


class _Logger:
    """metrics.jsonl (+ TensorBoard) on rank 0; on resume the rows after the checkpoint are dropped first."""

    def __init__(self, cfg: TrainConfig, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.tb: Any = None
        self.path = cfg.output_dir / "metrics.jsonl"
        if not enabled:
            return
        kept = []
        if start and self.path.exists():
            kept = [r for r in JsonlAppender(self.path).existing() if r.get("step", 0) <= start]
        write_records(self.path, kept)
        self.out = JsonlAppender(self.path)
        if cfg.output.tensorboard and importlib.util.find_spec("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(cfg.output_dir / "tensorboard"), purge_step=start + 1)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.out.append([row])
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.out.close()
            if self.tb is not None:
                self.tb.close()


def _peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch on CUDA; peak resident memory of the process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _to(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _grad_norm(engine: Any) -> float | None:
    """The 2-norm of the step's gradients, before clipping, where DeepSpeed keeps none: its ZeRO, bf16 and fp16
    optimisers record it as they step, a plain torch optimiser (ZeRO-0 in fp32) does not. Called after the step's
    last backward, when the gradients are reduced across processes, and before `engine.step()` clips and clears
    them; None where the engine will know it."""
    if hasattr(engine.optimizer, "_global_grad_norm"):
        return None
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def evaluate(engine: Any, samples: list[Sample], cfg: TrainConfig, pad_id: int) -> float:
    """Mean token loss over the eval samples; every rank runs the same number of forwards (ZeRO-3 gathers)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mb = cfg.batching.micro_batch_size
    batches = [[[i] for i in range(j, min(j + mb, len(samples)))] for j in range(0, len(samples), mb)]
    per_rank = math.ceil(len(batches) / world)
    loss = tokens = 0.0
    engine.eval()
    with torch.no_grad():
        for k in range(per_rank):
            idx = k * world + rank
            real = idx < len(batches)
            batch = _to(collate(batches[idx if real else 0], samples, pad_id, packed=False), engine.device)
            out = engine(**batch)
            if real:
                loss += float(out.detach())
                tokens += float((batch["targets"] != IGNORE_INDEX).sum())
    engine.train()
    loss, tokens = _all_sum([loss, tokens])
    return loss / max(tokens, 1.0)


@dataclass
class StepResult:
    """One optimiser step, summed over every process."""

    loss: float
    trained_tokens: float
    tokens: float
    grad_norm: float | None


class SFTRecipe:
    """One fine-tuning run, driven by its `TrainConfig`: `setup()` builds the process group, data, model, DeepSpeed
    engine and resume point; `train()` runs the remaining steps (`train_step` each, `save` every `save_steps`);
    `save_final()` writes the model folder. `run()` does all three; `train(cfg)` is `SFTRecipe(cfg).run()`.

    After each step (logged, evaluated, checkpointed) the recipe logs `step N/TOTAL: loss L` at INFO on the
    `huarizo.trainer` logger, the record carrying `step`: a handler there follows the run from inside the process.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = cfg.output_dir
        self.ckpt_dir = cfg.output_dir / "checkpoints"
        self.start = 0
        self.loss: float | None = None

    def run(self) -> TrainResult:
        """Set up, train, save the final folder; nothing is written into `output_dir` before the model is built."""
        self.setup()
        self.train()
        final = self.save_final()
        dist.barrier()
        self._hf_ds = None
        return TrainResult(self.out, final, self.total, self.start, self.loss)

    def setup(self) -> None:
        """Everything before the first step, in the order the random streams depend on: seeds, tokenizer and
        data, model (LoRA initialised from the seeded stream), engine, then the checkpoint to resume from."""
        preflight(self.cfg)
        self.rank, self.world = setup_distributed()
        random.seed(self.cfg.optim.seed)
        torch.manual_seed(self.cfg.optim.seed)
        self._setup_data()
        self._setup_engine()
        self._resume()
        self.metrics = _Logger(self.cfg, self.start, self.rank == 0)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.tokenizer = tok = load_tokenizer(cfg.model.tokenizer or cfg.model.ref)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.train_samples, self.eval_samples, self.stats = load_samples(cfg.data, tok, cfg.optim.seed)
        self.schedule = Schedule.build(
            [len(s) for s in self.train_samples],
            cfg.batching,
            cfg.data.max_length,
            world_size=self.world,
            grad_accum=cfg.optim.grad_accum,
            epochs=cfg.optim.epochs,
            max_steps=cfg.optim.max_steps,
            seed=cfg.optim.seed,
        )
        self.total = len(self.schedule.steps)
        self.data_order = hashlib.sha256(json.dumps(self.schedule.steps).encode()).hexdigest()

    def _setup_engine(self) -> None:
        import deepspeed
        from transformers import get_scheduler
        from transformers.integrations import HfDeepSpeedConfig

        cfg = self.cfg
        conf = ds_config(cfg, self.world)
        # ZeRO-3: transformers loads the weights straight into partitions while this object is alive.
        self._hf_ds = HfDeepSpeedConfig(conf) if conf["zero_optimization"].get("stage") == 3 else None
        lm = load_model(cfg.model, cfg.data.max_length)
        if cfg.lora.enabled:
            lm = add_lora(lm, cfg.lora)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
            (self.out / "ds_config.json").write_text(json.dumps(conf, indent=2))
            (self.out / "data_stats.json").write_text(json.dumps(self.stats.__dict__, indent=2))
        model = SFTModel(lm)
        params = [p for p in model.parameters() if p.requires_grad]
        optim = cfg.optim
        optimizer = (
            None
            if "optimizer" in conf
            else torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        )
        scheduler = None
        if optimizer is not None and "scheduler" not in conf:
            warmup = math.ceil(optim.warmup_ratio * self.total)
            scheduler = get_scheduler(optim.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=self.total)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=params, config=conf
        )

    def _resume(self) -> None:
        """Continue from `checkpoints/latest` (weights-only loading), if any and `output.resume`: the same data order
        is required, and torch's RNG stream (dropout, e.g. LoRA's) continues where it was."""
        from huarizo.trainer import checkpoint  # imports deepspeed, which must come after setup_distributed

        tag = checkpoint.latest_tag(self.ckpt_dir) if self.cfg.output.resume else None
        if tag is None:
            return
        client = checkpoint.load(self.engine, self.ckpt_dir, tag)
        if client.get("data_order") != self.data_order:
            raise checkpoint.ResumeError(
                f"{self.ckpt_dir}: the checkpoint was written with other data, batching or seed, so resuming would "
                "not continue the same run; use another output_dir or --set output.resume=false"
            )
        if not isinstance(client.get("step"), int):
            raise checkpoint.ResumeError(
                f"{self.ckpt_dir / tag}: the checkpoint does not say which step it was saved at"
            )
        self.start = client["step"]
        if isinstance(client.get("rng"), torch.Tensor):
            torch.set_rng_state(client["rng"])

    def train(self) -> None:
        """Run the steps from `start` to the end of the schedule: log, evaluate and checkpoint as configured."""
        out = self.cfg.output
        progress = ProgressBar(
            "train", self.total, enabled=self.rank == 0 and out.progress, completed=self.start, unit="steps"
        )
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        for step in range(self.start, self.total):
            done = step + 1
            logged = done % out.log_steps == 0 or done == self.total
            result = self.train_step(self.batches(step), grad_norm=logged)
            self.loss = result.loss
            self._log_metrics(done, result, logged)
            progress.update(completed=done, info=f"loss {result.loss:.4f}")
            if out.save_steps and done % out.save_steps == 0:
                self.save(done)
            log.info("step %d/%d: loss %.4f", done, self.total, result.loss, extra={"step": done})
        progress.close()
        if out.save_steps and self.start < self.total and self.total % out.save_steps:
            self.save(self.total)
        self.metrics.close()

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process's micro-batches of step `step` (from 0), as the schedule fixed them."""
        packed = self.cfg.batching.mode == "packed"
        return [collate(rows, self.train_samples, self.pad_id, packed) for rows in self.schedule.steps[step][self.rank]]

    def train_step(self, batches: list[dict[str, torch.Tensor]], grad_norm: bool = False) -> StepResult:
        """One optimiser step over this process's micro-batches: each micro-batch's summed token loss is scaled by
        the step's trained tokens (all processes) before its backward, so the step's loss is their token mean.
        `grad_norm`: measure the gradients' norm before `engine.step()` clips them where DeepSpeed keeps none."""
        engine = self.engine
        mine = sum(float((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
        tokens = float(sum(b["position_ids"].numel() for b in batches))
        trained, tokens = _all_sum([mine, tokens])
        loss_sum, norm = 0.0, None
        for k, batch in enumerate(batches):
            summed = engine(**_to(batch, engine.device))
            engine.backward(summed * (self.world / trained), scale_wrt_gas=False)
            if grad_norm and k == len(batches) - 1:
                norm = _grad_norm(engine)
            engine.step()
            loss_sum += float(summed.detach())
        (loss_sum,) = _all_sum([loss_sum])
        return StepResult(loss_sum / trained, trained, tokens, norm)

    def _log_metrics(self, done: int, result: StepResult, logged: bool) -> None:
        """The step's row of metrics.jsonl: every `log_steps` steps, at each evaluation and at the end."""
        row: dict[str, Any] = {"step": done, "loss": result.loss}
        if logged:
            norm = result.grad_norm if result.grad_norm is not None else self.engine.get_global_grad_norm()
            row |= {
                "lr": float(self.engine.get_lr()[0]),
                "grad_norm": float(norm or 0.0),
                "epoch": done / self.schedule.steps_per_epoch,
                "trained_tokens": int(result.trained_tokens),
                "tokens": int(result.tokens),
                "elapsed_s": round(time.perf_counter() - self._t0, 3),
                "cpu_s": round(time.process_time() - self._c0, 3),
                "peak_mem_mb": round(_peak_memory_mb(), 1),
            }
        every = self.cfg.output.eval_steps
        if self.eval_samples and (done == self.total or (every and done % every == 0)):
            row["eval_loss"] = evaluate(self.engine, self.eval_samples, self.cfg, self.pad_id)
        if len(row) > 2:
            self.metrics.log(row)

    def save(self, step: int) -> None:
        """Checkpoint `step-N` (then `latest`, atomically), keeping the last `keep_checkpoints`."""
        from huarizo.trainer import checkpoint

        state = {"step": step, "data_order": self.data_order, "rng": torch.get_rng_state()}
        checkpoint.save(self.engine, self.ckpt_dir, step, state, rank=self.rank)
        if self.rank == 0:
            for old in _checkpoints(self.ckpt_dir)[: -self.cfg.output.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def save_final(self) -> Path:
        """The final HF folder (ZeRO-3 partitions consolidated; LoRA: `adapter/`, merged into `final/` when asked),
        whose tokenizer carries the training template and whose `huarizo_templates.json` says which template every
        data file was rendered with; then the loss curve and the model cards."""
        cfg, engine, stats, tokenizer = self.cfg, self.engine, self.stats, self.tokenizer
        if engine.zero_optimization_partition_weights():
            state = engine._zero3_consolidated_16bit_state_dict()
        else:
            state = engine.module.state_dict() if self.rank == 0 else None
        final = self.out / "final"
        if self.rank == 0:
            assert state is not None
            state = {k.removeprefix("lm."): v for k, v in state.items()}
            lm = engine.module.lm
            template = get_template(stats.template, tokenizer)
            record = {"chat_template": stats.template, "files": stats.templates, "records": stats.records}
            if cfg.lora.enabled:
                adapter = self.out / "adapter"
                export_template(lm, tokenizer, template)
                lm.save_pretrained(adapter, state_dict=state)
                tokenizer.save_pretrained(adapter)
                (adapter / TEMPLATES_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
                if cfg.lora.merge:
                    merge_lora(cfg.model.ref, adapter, final, dtype=cfg.model.dtype)
            else:
                save_hf_folder(lm, state, tokenizer, final, template, record)
        dist.barrier()
        if self.rank == 0:
            plot_loss(self.out / "metrics.jsonl", self.out / "loss_curve.png")
            from huarizo.trainer.card import write_train_cards

            write_train_cards(cfg, final)
        return final


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` and write `cfg.output_dir` (checkpoints/, metrics.jsonl, final/, ...).

    Nothing is written into `output_dir` until the data is read and the model is built: a bad file or setting fails
    without touching a run folder.
    """
    return SFTRecipe(cfg).run()


def plot_loss(metrics: Path, png: Path) -> Path | None:
    """Draw the loss curve (and eval loss) of a metrics.jsonl into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = JsonlAppender(metrics).existing() if metrics.exists() else []
    train_rows = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    eval_rows = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train_rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train_rows, strict=True), label="train loss")
    if eval_rows:
        ax.plot(*zip(*eval_rows, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token cross-entropy")
    ax.set_title("huarizo train")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png

"""Data: read any huarizo format, mix files by weight, tokenize+mask (huarizo.formats), pack, and schedule.

The whole run's order is a pure function of the config and the seed (`Schedule`), so a resumed run sees exactly the
micro-batches an uninterrupted one would have seen from the same step on.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass, field
from typing import Any

import torch

from huarizo.formats import (
    IGNORE_INDEX,
    HuarizoError,
    get_template,
    read_records,
    to_conversations,
    tokenize_conversations,
)
from huarizo.trainer.config import BatchingConfig, DataConfig


class DataError(HuarizoError, ValueError):
    """Training data that cannot be used (no file, nothing left after masking, ...)."""


@dataclass
class Sample:
    """One tokenized record: `targets[i]` is the token to predict after `input_ids[i]` (IGNORE_INDEX: no loss).

    Targets are shifted inside the sample, so no position ever predicts across a sample border.
    """

    input_ids: array[int]
    targets: array[int]
    labels: array[int]
    id: str | None = None

    @property
    def num_trained(self) -> int:
        """Tokens that carry a loss."""
        return len(self.targets) - self.targets.count(IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataStats:
    """What loading the data did."""

    template: str = ""
    """The template the model folder is saved with (see `served_template`)."""
    templates: dict[str, str] = field(default_factory=dict)
    """The template every file's records were rendered with."""
    records: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    eval_samples: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0


def _weighted(items: list[Any], weight: float, rng: random.Random) -> list[Any]:
    whole, frac = int(weight), weight - int(weight)
    extra = rng.sample(items, round(frac * len(items))) if frac else []
    return items * whole + extra


def _shifted(labels: array[int]) -> array[int]:
    targets = labels[1:]
    targets.append(IGNORE_INDEX)
    return targets


def file_templates(cfg: DataConfig) -> dict[str, str]:
    """The template each file's records are rendered with: its own `template`, else `data.template`."""
    return {str(spec.path): spec.template or cfg.template for spec in cfg.files}


def served_template(cfg: DataConfig) -> str:
    """The template the model folder is saved with, which serving and other tools will prompt it with.

    When every file uses one template, that one. When files use several, `data.template` if some file's records
    were rendered with it (the others are augmentation, such as `mixed` layouts); else the run is refused, since a
    model folder carries one chat template and no file was trained with the one it would carry.
    """
    used = file_templates(cfg)
    names = sorted(set(used.values()))
    if len(names) == 1:
        return names[0]
    if cfg.template in names:
        return cfg.template
    listed = ", ".join(f"{path}: {name}" for path, name in used.items())
    raise DataError(
        f"data.files use several templates ({listed}) and data.template={cfg.template} is none of them: a model "
        "folder is served with one chat template; set data.template to the one to serve it with (one of "
        f"{', '.join(names)}), or train every file with one template"
    )


def check_files(cfg: DataConfig) -> None:
    """Fail fast (before any model or process group is set up) on a missing data file or a template mix that
    leaves no template to save the model with."""
    if not cfg.files:
        raise DataError("data.files is empty: give at least one data file (--set data.files=[PATH])")
    for spec in cfg.files:
        if spec.path.is_dir():
            raise DataError(f"data.files: {spec.path}: is a folder, not a data file")
        if not spec.path.is_file():
            raise DataError(f"data.files: {spec.path}: no such file")
    for name in set(file_templates(cfg).values()) - {"hf"}:  # an unknown name fails here (`hf` needs the tokenizer)
        get_template(name)
    served_template(cfg)


def load_samples(cfg: DataConfig, tokenizer: Any, seed: int) -> tuple[list[Sample], list[Sample], DataStats]:
    """Read, mix, tokenize and mask every file; returns `(train, eval, stats)`."""
    check_files(cfg)
    rng = random.Random(seed)
    stats = DataStats(template=served_template(cfg), templates=file_templates(cfg))
    samples: list[Sample] = []
    for spec in cfg.files:
        convs = [c for r in read_records(spec.path, spec.format).records for c in to_conversations(r)]
        stats.records[str(spec.path)] = len(convs)
        template = get_template(stats.templates[str(spec.path)], tokenizer)
        tokenized, tstats = tokenize_conversations(convs, template, tokenizer, cfg.max_length)
        for reason, n in tstats.dropped.items():
            stats.dropped[reason] = stats.dropped.get(reason, 0) + n
        stats.truncated += tstats.truncated
        part = [Sample(t.input_ids, _shifted(t.labels), t.labels, t.id) for t in tokenized if len(t.input_ids) > 1]
        samples += _weighted(part, spec.weight, rng)
    if not samples:
        raise DataError(f"no sample has a trained token within data.max_length={cfg.max_length}")
    n_eval = int(len(samples) * cfg.eval_fraction)
    order = list(range(len(samples)))
    rng.shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [s for i, s in enumerate(samples) if i not in eval_idx]
    evals = [s for i, s in enumerate(samples) if i in eval_idx]
    if not train:
        raise DataError("data.eval_fraction leaves no training sample")
    stats.samples, stats.eval_samples = len(train), len(evals)
    stats.tokens = sum(len(s) for s in train)
    stats.trained_tokens = sum(s.num_trained for s in train)
    return train, evals, stats


Row = list[int]
"""Indices of the samples placed in one row of a micro-batch."""


def pack(lengths: list[int], order: list[int], capacity: int, window: int = 512) -> list[Row]:
    """First-fit-decreasing packing of samples into rows of at most `capacity` tokens, window by window of the
    given order (so a shuffled order stays shuffled beyond one window)."""
    rows: list[Row] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: -lengths[i])
        free: list[int] = []
        start = len(rows)
        for i in chunk:
            n = lengths[i]
            for k, space in enumerate(free):
                if n <= space:
                    rows[start + k].append(i)
                    free[k] -= n
                    break
            else:
                rows.append([i])
                free.append(capacity - n)
    return rows


def epoch_micro_batches(lengths: list[int], cfg: BatchingConfig, max_length: int, seed: int) -> list[list[Row]]:
    """One epoch's micro-batches (each a list of rows) for the batching mode, seeded."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mb = cfg.micro_batch_size
    if cfg.mode == "packed":
        rows = pack(lengths, order, cfg.pack_length or max_length)
        rng.shuffle(rows)
        return [rows[i : i + mb] for i in range(0, len(rows), mb)]
    if cfg.mode == "grouped":
        batches: list[list[Row]] = []
        mega = mb * 32
        for w in range(0, len(order), mega):
            chunk = sorted(order[w : w + mega], key=lambda i: -lengths[i])
            batches += [[[i] for i in chunk[j : j + mb]] for j in range(0, len(chunk), mb)]
        rng.shuffle(batches)
        return batches
    return [[[i] for i in order[j : j + mb]] for j in range(0, len(order), mb)]


@dataclass
class Schedule:
    """Every optimiser step's micro-batches: `steps[s][rank]` is the list of `grad_accum` micro-batches."""

    steps: list[list[list[list[Row]]]]
    steps_per_epoch: int

    @classmethod
    def build(
        cls,
        lengths: list[int],
        cfg: BatchingConfig,
        max_length: int,
        *,
        world_size: int,
        grad_accum: int,
        epochs: float,
        max_steps: int | None,
        seed: int,
    ) -> Schedule:
        """The run's whole order, a pure function of its arguments."""
        per_step = world_size * grad_accum
        first = epoch_micro_batches(lengths, cfg, max_length, seed)
        steps_per_epoch = len(first) // per_step
        if steps_per_epoch == 0:
            raise DataError(
                f"one optimiser step needs {per_step} micro-batches (world size {world_size} x grad_accum "
                f"{grad_accum}) but an epoch has only {len(first)}: add data or lower micro_batch_size / grad_accum"
            )
        total = max_steps or max(1, math.floor(epochs * steps_per_epoch))
        steps: list[list[list[list[Row]]]] = []
        epoch, mbs = 0, first
        while len(steps) < total:
            for s in range(steps_per_epoch):
                if len(steps) == total:
                    break
                chunk = mbs[s * per_step : (s + 1) * per_step]
                steps.append([chunk[r * grad_accum : (r + 1) * grad_accum] for r in range(world_size)])
            epoch += 1
            mbs = epoch_micro_batches(lengths, cfg, max_length, seed + epoch)
        return cls(steps, steps_per_epoch)


def collate(rows: list[Row], samples: list[Sample], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch. Packed rows carry position ids that restart at 0 for every sample and no
    attention mask (transformers then keeps attention within each sample); padded rows carry an attention mask."""
    width = max(sum(len(samples[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            s = samples[i]
            n = len(s)
            ids[r, at : at + n] = torch.tensor(s.input_ids)
            targets[r, at : at + n] = torch.tensor(s.targets)
            pos[r, at : at + n] = torch.arange(n)
            at += n
        mask[r, :at] = 1
        pos[r, at:] = torch.arange(width - at)
    batch = {"input_ids": ids, "targets": targets, "position_ids": pos}
    if not packed:
        batch["attention_mask"] = mask
    return batch

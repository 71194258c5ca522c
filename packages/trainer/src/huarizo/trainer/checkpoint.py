"""Checkpoints: DeepSpeed writes them; resuming loads them back without ever running code found in the run folder.

DeepSpeed's own loader unpickles checkpoint files with `torch.load(weights_only=False)`, which runs whatever a file
names: anyone who can write into `output_dir/checkpoints` would run code as the trainer's user. Resume goes through
`SafeCheckpointEngine` instead: `torch.load(weights_only=True)`, which builds tensors and plain values (dicts, lists,
numbers, strings) and nothing else, plus the three small DeepSpeed types its ZeRO optimiser state holds
(`ALLOWED_GLOBALS`). A file naming anything else is refused before any of it is built, with the file's name.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from huarizo.formats import HuarizoError, write_text_atomic

TAG = re.compile(r"step-\d+")
"""The only checkpoint names `save` writes (and `latest` may name)."""


class ResumeError(HuarizoError):
    """A checkpoint that cannot be resumed from: written for another run, incomplete, or holding more than tensors
    and plain values."""


def allowed_globals() -> list[Any]:
    """The classes (besides tensors and plain values) a DeepSpeed checkpoint may hold: the ZeRO optimiser state's
    loss scaler, stage enum and fragment addresses. Each is rebuilt from plain attributes; none runs code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load` of a checkpoint file that builds tensors, plain values and `allowed_globals()` only; raises
    `ResumeError` naming the file for anything else (the file is not unpickled)."""
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"a reference to {named.group(1)}" if named else "something other than tensors and plain values"
        raise ResumeError(
            f"{path}: refused to load this checkpoint file: it holds {what}, which a checkpoint Huarizo writes never "
            "holds (resume loads tensors and plain values only); remove the checkpoint or --set output.resume=false"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResumeError(f"{path}: cannot read this checkpoint file ({reason})") from None


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading through `safe_load`."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location)


def use_safe_loading(engine: Any) -> None:
    """Make a DeepSpeed engine load checkpoints through `safe_load`."""
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise ResumeError(
            f"checkpoint engine {type(engine.checkpoint_engine).__name__}: resume loads checkpoints with DeepSpeed's "
            "default torch engine only; remove the checkpoint settings of the ds_config, or --set output.resume=false"
        )
    engine.checkpoint_engine = SafeCheckpointEngine(engine._config)


def latest_tag(folder: Path) -> str | None:
    """The checkpoint `folder/latest` names, or None when there is none; a name `save` would not write is refused."""
    latest = folder / "latest"
    if not latest.exists():
        return None
    try:
        tag = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{latest}: cannot read it ({exc})") from None
    if not TAG.fullmatch(tag) or not (folder / tag).is_dir() or (folder / tag).is_symlink():
        raise ResumeError(f"{latest}: names {tag[:80]!r}, which is not a checkpoint folder of this run")
    return tag


def save(engine: Any, folder: Path, step: int, client_state: dict[str, Any], *, rank: int) -> None:
    """Save checkpoint `step-N`, then point `latest` at it atomically (written beside and renamed: a kill at any
    moment leaves `latest` naming the last complete checkpoint, never an empty file). Frozen parameters (the base
    model under LoRA) are left out: resume loads them from the model itself, as the first start did."""
    tag = f"step-{step}"
    engine.save_checkpoint(
        str(folder), tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True
    )
    if rank == 0:
        write_text_atomic(folder / "latest", tag)


def load(engine: Any, folder: Path, tag: str) -> dict[str, Any]:
    """Load checkpoint `tag` into the engine (model, optimiser, scheduler) safely; returns its client state."""
    use_safe_loading(engine)
    frozen = any(not p.requires_grad for p in engine.module.parameters())
    # a checkpoint saved without the frozen weights holds the trained ones only: load it non-strictly
    path, client = engine.load_checkpoint(str(folder), tag=tag, load_module_strict=not frozen)
    if path is None or not isinstance(client, dict):
        raise ResumeError(f"{folder / tag}: the checkpoint is incomplete; remove it or --set output.resume=false")
    return client

"""huarizo-trainer: supervised fine-tuning on DeepSpeed with response-only loss, packing, LoRA and resume."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huarizo.trainer.config import (
        BatchingConfig,
        DataConfig,
        DataFile,
        DeepSpeedConfig,
        LoraConfig,
        ModelConfig,
        OptimConfig,
        OutputConfig,
        TrainConfig,
    )
    from huarizo.trainer.data import DataError, Sample, Schedule, collate, load_samples, pack
    from huarizo.trainer.dryrun import KNOWN_ARCHITECTURES, DryRunReport, dry_run
    from huarizo.trainer.model import ModelBuildError, SFTModel, apply_delta, merge_lora
    from huarizo.trainer.train import TrainResult, ds_config, plot_loss, train

__version__ = "0.1.0"
# Loaded on first use: `huarizo --help` and the config registry must not pay for importing torch.
_EXPORTS = {
    "BatchingConfig": "config",
    "DataConfig": "config",
    "DataFile": "config",
    "DeepSpeedConfig": "config",
    "LoraConfig": "config",
    "ModelConfig": "config",
    "OptimConfig": "config",
    "OutputConfig": "config",
    "TrainConfig": "config",
    "DataError": "data",
    "Sample": "data",
    "Schedule": "data",
    "collate": "data",
    "load_samples": "data",
    "pack": "data",
    "KNOWN_ARCHITECTURES": "dryrun",
    "DryRunReport": "dryrun",
    "dry_run": "dryrun",
    "ModelBuildError": "model",
    "SFTModel": "model",
    "apply_delta": "model",
    "merge_lora": "model",
    "TrainResult": "train",
    "ds_config": "train",
    "plot_loss": "train",
    "train": "train",
}
__all__ = [
    "KNOWN_ARCHITECTURES",
    "BatchingConfig",
    "DataConfig",
    "DataError",
    "DataFile",
    "DeepSpeedConfig",
    "DryRunReport",
    "LoraConfig",
    "ModelBuildError",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SFTModel",
    "Sample",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "apply_delta",
    "collate",
    "dry_run",
    "ds_config",
    "load_samples",
    "merge_lora",
    "pack",
    "plot_loss",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'huarizo.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"huarizo.trainer.{_EXPORTS[name]}"), name)

"""huarizo-trainer: supervised fine-tuning on DeepSpeed with response-only loss, packing, LoRA and resume; vocabulary
extension, delta weights and GGUF export."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huarizo.trainer.card import ModelCard, write_card
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
    from huarizo.trainer.delta import DeltaError, apply_delta, make_delta
    from huarizo.trainer.dryrun import KNOWN_ARCHITECTURES, DryRunReport, dry_run
    from huarizo.trainer.export import ExportError, ExportResult, export_gguf
    from huarizo.trainer.model import ModelBuildError, SFTModel, merge_lora
    from huarizo.trainer.train import TrainResult, ds_config, plot_loss, train
    from huarizo.trainer.vocab import VocabError, VocabResult, extend_vocab

__version__ = "0.1.0"
# Loaded on first use: `huarizo --help` and the config registry must not pay for importing torch.
_EXPORTS = {
    "ModelCard": "card",
    "write_card": "card",
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
    "DeltaError": "delta",
    "apply_delta": "delta",
    "make_delta": "delta",
    "KNOWN_ARCHITECTURES": "dryrun",
    "DryRunReport": "dryrun",
    "dry_run": "dryrun",
    "ExportError": "export",
    "ExportResult": "export",
    "export_gguf": "export",
    "ModelBuildError": "model",
    "SFTModel": "model",
    "merge_lora": "model",
    "TrainResult": "train",
    "ds_config": "train",
    "plot_loss": "train",
    "train": "train",
    "VocabError": "vocab",
    "VocabResult": "vocab",
    "extend_vocab": "vocab",
}
__all__ = [
    "KNOWN_ARCHITECTURES",
    "BatchingConfig",
    "DataConfig",
    "DataError",
    "DataFile",
    "DeepSpeedConfig",
    "DeltaError",
    "DryRunReport",
    "ExportError",
    "ExportResult",
    "LoraConfig",
    "ModelBuildError",
    "ModelCard",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SFTModel",
    "Sample",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "VocabError",
    "VocabResult",
    "apply_delta",
    "collate",
    "dry_run",
    "ds_config",
    "export_gguf",
    "extend_vocab",
    "load_samples",
    "make_delta",
    "merge_lora",
    "pack",
    "plot_loss",
    "train",
    "write_card",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'huarizo.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"huarizo.trainer.{_EXPORTS[name]}"), name)

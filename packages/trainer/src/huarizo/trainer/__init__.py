"""huarizo-trainer: supervised fine-tuning on DeepSpeed with response-only loss, packing, LoRA and resume."""

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

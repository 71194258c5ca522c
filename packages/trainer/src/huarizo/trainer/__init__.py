"""huarizo-trainer: supervised fine-tuning on DeepSpeed with response-only loss."""

__version__ = "0.1.0"

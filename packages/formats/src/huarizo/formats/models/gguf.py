"""GGUF files as Hugging Face folders: dequantized into safetensors, and the quantization marker that transformers
leaves on a model loaded from GGUF cleared (extra `huarizo-formats[models]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def clear_quantizer(model: Any) -> None:
    """Drop the GGUF quantization marker of a model loaded from GGUF (or from a folder converted from one): its
    weights are dequantized plain tensors, but the marker stays behind and makes `save_pretrained` and the HF Trainer
    refuse the model."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into a safetensors Hugging Face folder (model and tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    clear_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

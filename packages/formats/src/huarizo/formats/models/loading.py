"""Loading a model and its tokenizer from a model reference (extra `huarizo-formats[models]`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huarizo.formats.models.gguf import clear_quantizer
from huarizo.formats.models.references import Announce, ModelError, resolve_model


def _cannot_load(ref: str | os.PathLike[str], exc: Exception) -> ModelError:
    hint = " (a hub id needs a reachable model hub; use a local folder, a .gguf file, embedded or tiny)"
    return ModelError(f"cannot load model {str(ref)!r}: {exc}" + ("" if Path(ref).exists() else hint))


def load_tokenizer(ref: str | os.PathLike[str]) -> Any:
    """Load the tokenizer of a model reference."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(ref))
    except OSError as exc:
        raise _cannot_load(ref, exc) from None


def load_causal_lm(
    ref: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    announce: Announce | None = None,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for a model reference, in eval mode on `device` (a first-use conversion is
    announced through `announce`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(ref, announce=announce)
    try:
        torch_dtype = getattr(torch, dtype)
    except AttributeError as exc:
        raise ModelError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is visible to torch; use --device cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
    except OSError as exc:
        raise _cannot_load(ref, exc) from None
    clear_quantizer(model)
    model.to(device)  # type: ignore[arg-type]
    return model.eval(), tokenizer

"""The serve config: one pydantic model for `huarizo serve`, `huarizo chat` and the Python API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from huarizo.formats.config import HuarizoConfig

DEFAULT_TEMPLATE = "alpaca"
"""The template used for a model whose tokenizer has no chat template (e.g. the embedded base model)."""


class ServeConfig(HuarizoConfig):
    """How to load, serve and sample a model (`huarizo config schema serve`)."""

    model: str = Field("embedded", description="embedded, tiny, a HF model folder, a .gguf file or a hub id")
    template: str | None = Field(
        None,
        description="prompt template name; default: the template the model was trained with (its chat_template), "
        f"else `{DEFAULT_TEMPLATE}` for a model without one",
    )
    model_name: str | None = Field(None, description="the name /v1/models reports (default: derived from `model`)")
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(8000, ge=0, le=65535, description="port; 0 picks a free one")
    api_keys: list[str] = Field(default_factory=list, description="accepted bearer keys; empty: no auth")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_batch_size: int = Field(16, ge=1, description="most sequences decoded together in one forward pass")
    max_model_len: int | None = Field(None, ge=16, description="context length (default: the model's)")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that sets none")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 400")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: Huarizo's batching engine; vllm: run vLLM's server")
    log_level: str = "warning"

"""The serve config: one pydantic model for `huarizo serve` and the Python API; `huarizo chat` adds its own keys."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from huarizo.formats.config import HuarizoConfig

DEFAULT_TEMPLATE = "alpaca"
"""The template used for a model whose tokenizer has no chat template (e.g. the embedded base model)."""

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "int8", "int4"]


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
    dtype: Dtype = Field(
        "auto", description="weights' dtype; auto: bfloat16 on CPU and on GPUs that support it, else float16"
    )
    quantize: Quantize = Field(
        "none",
        description="linear layers on CPU: none (the weights as loaded, repacked for oneDNN: exact), int8 or int4 "
        "(weight-only quantisation: faster decoding, slightly different outputs; CPU and backend hf only)",
    )
    max_batch_size: int = Field(16, ge=1, description="most sequences decoded together in one forward pass")
    max_model_len: int | None = Field(None, ge=16, description="context length (default: the model's)")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that sets none")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 400")
    max_sequences_per_request: int = Field(
        256, ge=1, description="most sequences (prompts x n) one request may ask for; more get 400"
    )
    max_waiting_sequences: int = Field(
        1024,
        ge=1,
        description="most sequences waiting for a batch slot; a request that would queue more gets 429 (Retry-After)",
    )
    read_timeout: float = Field(
        30.0, gt=0, description="seconds a client has to send a request's headers, and then its body (else closed)"
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: Huarizo's batching engine; vllm: run vLLM's server")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "warning", description="uvicorn's log level"
    )

    @model_validator(mode="after")
    def _quantize_on_cpu(self) -> Self:
        if self.quantize != "none" and (self.backend != "hf" or not self.device.startswith("cpu")):
            raise ValueError(
                f"quantize {self.quantize} is for Huarizo's engine on a CPU (device {self.device}, backend "
                f"{self.backend}); on a GPU use quantize none, or vLLM's own quantisation"
            )
        return self

    @model_validator(mode="after")
    def _one_request_fits_the_queue(self) -> Self:
        if self.max_sequences_per_request > self.max_waiting_sequences:
            raise ValueError(
                f"max_sequences_per_request ({self.max_sequences_per_request}) is more than max_waiting_sequences "
                f"({self.max_waiting_sequences}): such a request could never be queued"
            )
        return self


class ChatConfig(ServeConfig):
    """`huarizo chat`: the model keys of `serve` (a serve config file works), and how to answer."""

    max_tokens: int = Field(256, ge=1, description="longest answer, in tokens")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature; 0: greedy")
    system: str | None = Field(None, description="a system prompt")


def resolve_dtype(dtype: Dtype, device: str) -> str:
    """`auto`: the fastest correct dtype on `device` (bfloat16 on CPU and on GPUs with bfloat16, else float16)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"

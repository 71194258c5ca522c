"""The serve config: one pydantic model for `huarizo serve` and the Python API; `huarizo chat` adds its own keys."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from huarizo.formats import EndpointConfig, HuarizoConfig

DEFAULT_TEMPLATE = "alpaca"
"""The template used for a model whose tokenizer has no chat template (e.g. the embedded base model)."""

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "int8", "int4"]


SERVED = "served"
"""An arena side named `served` is the model this server serves."""


class ArenaConfig(HuarizoConfig):
    """`/arena`: blind pairwise votes on two models' answers, from answer files or live (off unless `answers` or
    `models` is set)."""

    out: str | None = Field(
        default=None,
        description="folder of the arena: votes.jsonl (append-only), and for live answers questions and answers",
    )
    questions: str | None = Field(
        default=None,
        description="question file (Vicuna-80, MT-bench, AlpacaEval or Self-Instruct layout, as the judge reads)",
    )
    answers: list[str] = Field(
        default_factory=list, description="from files: the two models' answer files (model first, baseline second)"
    )
    models: list[EndpointConfig] = Field(
        default_factory=list,
        description=f"live: the two models that answer (`{SERVED}`: this server's model; else a litellm endpoint)",
    )
    max_tokens: int = Field(default=512, ge=1, description="live: longest answer, in tokens")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="live: sampling temperature of the answers")

    @field_validator("models", mode="before")
    @classmethod
    def _endpoints(cls, v: Any) -> Any:
        return [{"model": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @property
    def enabled(self) -> bool:
        """Whether the server has an arena."""
        return bool(self.answers or self.models)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.answers and self.models:
            raise ValueError("answers (from files) and models (live) exclude each other: set one of them")
        if len(self.answers) > 2:
            raise ValueError(f"answers: at most two answer files (got {len(self.answers)})")
        if self.models and len(self.models) != 2:
            raise ValueError(f"models: two models answer in the arena (got {len(self.models)})")
        if self.answers and not self.questions:
            raise ValueError("questions: the question file the answer files answer is needed")
        if self.enabled and not self.out:
            raise ValueError("out: the folder the votes are written to is needed")
        return self


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
        "auto",
        description="weights' dtype; auto: bfloat16 on GPUs and CPUs that compute it natively (AVX-512, AMX), "
        "else float16 on a GPU and float32 on a CPU",
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
    web: bool = Field(True, description="serve the web pages: /ui (chat) and /arena (blind votes)")
    arena: ArenaConfig = Field(default_factory=ArenaConfig, description="the arena's sources and votes folder")
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
        if self.arena.enabled and (self.backend == "vllm" or not self.web):
            raise ValueError("arena: the arena is a page of the built-in server (backend: hf, web: true)")
        return self


class ChatConfig(ServeConfig):
    """`huarizo chat`: the model keys of `serve` (a serve config file works), and how to answer."""

    max_tokens: int = Field(256, ge=1, description="longest answer, in tokens")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature; 0: greedy")
    system: str | None = Field(None, description="a system prompt")


def resolve_dtype(dtype: Dtype, device: str) -> str:
    """`auto`: the fastest correct dtype on `device`: bfloat16 on GPUs that support it, else float16; bfloat16 on
    CPUs where oneDNN computes it (AVX-512, AMX), else float32 (on an AVX2-only CPU bfloat16 is emulated: 5x slower
    to read a prompt, no faster to decode)."""
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if bf16_on_cpu() else "float32"


def bf16_on_cpu() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively through oneDNN (AVX-512 or AMX; not AVX2)."""
    import torch

    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

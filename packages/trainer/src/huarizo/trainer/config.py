"""The configs of the trainer's commands, loaded from YAML, `--set` and flags (in that order of precedence):
`TrainConfig` (everything one fine-tuning run needs), and one per weights command: `MergeConfig` (`huarizo
merge-lora`), `ApplyDeltaConfig` / `MakeDeltaConfig` (`huarizo apply-delta` / `make-delta`), `VocabConfig` (`huarizo
extend-vocab`) and `ExportConfig` (`huarizo export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator, model_validator

from huarizo.formats import HuarizoConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(_Section):
    """What to fine-tune."""

    ref: str = "tiny"
    """The model to fine-tune: `embedded`, `tiny`, a local Hugging Face folder, a `.gguf` file, or a hub id."""
    tokenizer: str | None = None
    """Where the tokenizer comes from (default: `ref`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Weights' dtype during training; `bfloat16` turns on DeepSpeed's bf16 mode (fp32 master weights)."""
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2"] = "auto"
    """`auto`: flash_attention_2 when installed and on CUDA; else `varlen` (sdpa run sample by sample within each
    packed row) for plain causal models; else sdpa (with a block-diagonal mask for packed rows)."""
    gradient_checkpointing: bool = False
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Fields set on the model's config before it is built (e.g. `max_position_embeddings`)."""
    architecture: str | None = None
    """For `--dry-run` without hub access: a name from `huarizo.trainer.dryrun.KNOWN_ARCHITECTURES`
    (default: looked up from `ref`)."""
    new_tokens_only: bool = Field(
        default=False,
        description="train only the input and output embedding rows of the tokens `huarizo extend-vocab` "
        "added (read from the model folder's huarizo_vocab.json); every other weight stays frozen",
    )


class DataFile(_Section):
    """One training file and its mixing weight."""

    path: Path
    weight: float = Field(default=1.0, gt=0)
    """Sampling weight: 2.0 repeats every record twice per epoch, 0.5 keeps a seeded half."""
    format: str = "auto"
    template: str | None = None
    """Template for this file only (default: `data.template`)."""


class DataConfig(_Section):
    """Training data."""

    files: list[DataFile] = Field(default_factory=list)
    """Files in any huarizo format (Alpaca, ShareGPT, OpenAI messages, ...); a plain path means weight 1."""
    template: str = "alpaca"
    """Prompt template (`huarizo.formats.list_templates()`); `mixed` / `mixed:SEED` is Self-Instruct style layout
    augmentation (one seeded layout per record)."""
    max_length: int = Field(default=512, ge=8)
    """Longest sample in tokens (longer records are cut; a record with no trained token left is dropped)."""
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Share of the records held out for eval loss."""

    @field_validator("files", mode="before")
    @classmethod
    def _plain_paths(cls, v: Any) -> Any:
        if isinstance(v, str | Path):
            v = [v]
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, str | Path) else x for x in v]
        return v


class BatchingConfig(_Section):
    """How samples become micro-batches."""

    mode: Literal["packed", "grouped", "padded"] = "packed"
    """`packed`: several samples per row, positions reset per sample and attention kept within each sample;
    `grouped`: rows of similar length, padded; `padded`: random order, padded to the longest (the Alpaca recipe)."""
    micro_batch_size: int = Field(default=4, ge=1)
    """Rows per micro-batch per process."""
    pack_length: int | None = None
    """Tokens per packed row (default: `data.max_length`)."""


class OptimConfig(_Section):
    """Optimiser and schedule (defaults: the Alpaca recipe)."""

    lr: float = Field(default=2e-5, gt=0)
    """Peak learning rate (AdamW)."""
    epochs: float = Field(default=3.0, gt=0)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimiser steps (overrides `epochs`)."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimiser step; the loss is normalised by the trained tokens of all of them."""
    clip: float = Field(default=1.0, ge=0)
    seed: int = 42


class DeepSpeedConfig(_Section):
    """DeepSpeed settings used to generate a ds_config (or a user's file)."""

    stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimiser states sharded), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: bool = False
    offload_params: bool = False
    config_file: FilePath | None = None
    """A ds_config JSON of your own; batch sizes, accumulation and clipping are still set from this config."""
    num_gpus: int | None = Field(default=None, ge=1)
    """GPUs per node for `--dry-run`'s memory estimate (default: the world size, or 1)."""
    num_nodes: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeedConfig:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs stage 3")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer needs stage 1, 2 or 3")
        return self


class LoraConfig(_Section):
    """LoRA via peft; `final/` gets the merged model, `final/adapter/` the adapter."""

    enabled: bool = False
    """Train a LoRA adapter instead of every weight."""
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = True
    """Write the merged model into `final/` (else only the adapter)."""
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="modules trained in full beside the adapter and saved with it (peft's modules_to_save), e.g. "
        "[embed_tokens, lm_head] for a model with an extended vocabulary",
    )


class OutputConfig(_Section):
    """Checkpoints, logs and the final model."""

    save_steps: int = Field(default=0, ge=0)
    """Checkpoint every N optimiser steps (0: only at the end of training); resume picks up the latest."""
    keep_checkpoints: int = Field(default=2, ge=1)
    log_steps: int = Field(default=1, ge=1)
    eval_steps: int = Field(default=0, ge=0)
    """Eval loss every N steps and at the last step (0: the last step only), when there is an eval split."""
    resume: bool = True
    """Continue from the latest checkpoint in `output_dir/checkpoints` when there is one."""
    tensorboard: bool = True
    """Write TensorBoard events to `output_dir/tensorboard` when tensorboard is installed."""
    progress: bool = True


class TrainConfig(HuarizoConfig):
    """A supervised fine-tuning run: `huarizo train CONFIG.yaml` or `huarizo.trainer.train(cfg)`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    output_dir: Path = Path("runs/train")
    """The run folder: checkpoints, metrics.jsonl, the loss plot and the final model (`final/`)."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    batching: BatchingConfig = Field(default_factory=lambda: BatchingConfig())
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig())
    deepspeed: DeepSpeedConfig = Field(default_factory=lambda: DeepSpeedConfig())
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig())
    output: OutputConfig = Field(default_factory=lambda: OutputConfig())

    @model_validator(mode="after")
    def _new_tokens_only(self) -> TrainConfig:
        if self.model.new_tokens_only and self.lora.enabled:
            raise ValueError("model.new_tokens_only trains the new embedding rows alone: set lora.enabled=false")
        if self.model.new_tokens_only and self.deepspeed.stage == 3:
            raise ValueError("model.new_tokens_only needs deepspeed.stage 0, 1 or 2 (ZeRO-3 partitions the gradients)")
        if self.model.new_tokens_only and self.optim.weight_decay:
            raise ValueError("model.new_tokens_only needs optim.weight_decay=0 (decay would change the old rows)")
        return self

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.batching.pack_length is not None and self.batching.pack_length < self.data.max_length:
            raise ValueError(
                f"batching.pack_length ({self.batching.pack_length}) must be at least data.max_length "
                f"({self.data.max_length})"
            )
        return self


QuantType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
QUANT_TYPES: tuple[str, ...] = get_args(QuantType)
"""GGUF tensor types `huarizo export` writes."""
DType = Literal["float32", "bfloat16", "float16"]


class MergeConfig(HuarizoConfig):
    """`huarizo merge-lora`: merge a LoRA adapter into its base model and write a model folder."""

    base: str = Field(description="base model reference (folder, hub id, tiny, embedded)")
    adapter: str = Field(description="the LoRA adapter folder (output_dir/final/adapter)")
    target: str = Field(description="folder to write the merged model into")
    dtype: DType = Field("float32", description="dtype of the merged weights")


class ApplyDeltaConfig(HuarizoConfig):
    """`huarizo apply-delta`: Vicuna-style delta weights, target = base + delta, streamed tensor by tensor (peak
    memory about one output shard and two tensors)."""

    base: str = Field(description="base model reference")
    delta: str = Field(description="delta weights (folder or hub id)")
    target: str = Field(description="folder to write the patched model into")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the result (auto: each tensor's own)"
    )
    max_shard_size: str = Field("1GB", description="largest output shard, e.g. 500MB, 2GB")


class MakeDeltaConfig(HuarizoConfig):
    """`huarizo make-delta`: publish delta weights, delta = target - base, streamed tensor by tensor."""

    base: str = Field(description="base model reference")
    target: str = Field(description="the tuned model")
    delta: str = Field(description="folder to write the delta weights into")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the result (auto: each tensor's own)"
    )
    max_shard_size: str = Field("1GB", description="largest output shard, e.g. 500MB, 2GB")


class VocabConfig(HuarizoConfig):
    """`huarizo extend-vocab`: learn new tokens on a corpus (BPE), add them to the base tokenizer without changing any
    existing id, resize the embeddings (new rows: the mean of the rows they replace), write a model folder."""

    base: str = Field(description="base model reference (folder, tiny, embedded, hub id)")
    corpus: list[str] = Field(min_length=1, description="UTF-8 text files to learn tokens on")
    add: int = Field(ge=1, description="most tokens to add")
    out: str = Field(description="folder to write the extended model into")
    min_frequency: int = Field(2, ge=1, description="a new piece occurs at least this many times in the corpus")
    eval: list[str] = Field(default_factory=list, description="also report tokens per Han character on these files")

    @field_validator("corpus", "eval", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | Path) else v


class ExportConfig(HuarizoConfig):
    """`huarizo export`: write a model folder as GGUF (llama.cpp, Ollama) with its chat template and end-of-turn
    token, and an Ollama Modelfile beside it."""

    model: str = Field(description="the model folder (e.g. runs/x/final)")
    out: str = Field(description="the GGUF file to write")
    format: Literal["gguf"] = Field("gguf", description="output format")
    type: QuantType = Field("f16", description="tensor type of the matrices")
    template: str | None = Field(None, description="chat template to embed (none: the folder's own, else alpaca)")
    modelfile: bool = Field(True, description="write the Ollama Modelfile beside the GGUF file")

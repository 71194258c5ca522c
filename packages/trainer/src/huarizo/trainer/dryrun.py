"""`huarizo train --dry-run`: resolve the config, build the model on the meta device (no weights), count its
parameters and estimate DeepSpeed's per-GPU memory for the model states of the chosen ZeRO stage.

The architecture comes from the model folder's `config.json` (local folders, `tiny`, `embedded`, or a hub id
already in the local Hugging Face cache). A hub id that is not cached is looked up in `KNOWN_ARCHITECTURES`
(no network); `model.architecture` names an entry explicitly, and `model.config_overrides` changes any field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from huarizo.formats import HuarizoError
from huarizo.formats.models import EMBEDDED, TINY, resolve_model
from huarizo.trainer.config import TrainConfig

_LLAMA = {
    "model_type": "llama",
    "vocab_size": 32000,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40}
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-7b": {**_LLAMA, **_7B, "max_position_embeddings": 2048},
    "llama-13b": {**_LLAMA, **_13B, "max_position_embeddings": 2048},
    "llama-2-7b": {**_LLAMA, **_7B, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "llama-2-13b": {**_LLAMA, **_13B, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
}
"""Model configs `--dry-run` can build without a hub (the published config.json values of these models)."""
_ALIASES = {
    "huggyllama/llama-7b": "llama-7b",
    "huggyllama/llama-13b": "llama-13b",
    "lmsys/vicuna-7b-v1.3": "llama-7b",
    "lmsys/vicuna-13b-v1.3": "llama-13b",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "lmsys/vicuna-7b-v1.5": "llama-2-7b",
    "lmsys/vicuna-13b-v1.5": "llama-2-13b",
}
GiB = 1024**3


class DryRunError(HuarizoError):
    """The model's architecture cannot be found without downloading it."""


@dataclass
class DryRunReport:
    """What `--dry-run` found."""

    architecture: str
    params: int
    trainable: int
    largest_layer: int
    stage: int
    gpus: int
    gpu_bytes: int
    cpu_bytes: int

    def __str__(self) -> str:
        return "\n".join(
            [
                f"model      : {self.architecture}",
                f"parameters : {self.params:,} ({self.params / 1e9:.2f} B), trainable {self.trainable:,}",
                f"ZeRO stage : {self.stage} on {self.gpus} GPU(s)",
                f"per GPU    : {self.gpu_bytes / GiB:.2f} GiB for model states (weights, grads, optimizer; "
                "activations come on top)",
                f"CPU memory : {self.cpu_bytes / GiB:.2f} GiB for offloaded states",
            ]
        )


def model_config(cfg: TrainConfig) -> tuple[Any, str]:
    """The transformers config of `cfg.model` without loading (or downloading) weights, and where it came from."""
    from transformers import AutoConfig, PretrainedConfig

    m = cfg.model
    ref = m.ref
    name = m.architecture or _ALIASES.get(ref) or (ref if ref in KNOWN_ARCHITECTURES else None)
    config: PretrainedConfig | None = None
    source = ref
    if m.architecture is None:
        if ref in (TINY, EMBEDDED) or os.path.isdir(os.path.expanduser(ref)):
            config = AutoConfig.from_pretrained(resolve_model(ref))
        elif name is None:
            try:
                config = AutoConfig.from_pretrained(ref, local_files_only=True)
            except OSError:
                raise DryRunError(
                    f"model.ref={ref!r}: no local config and no hub access; set model.architecture to one of "
                    f"{', '.join(KNOWN_ARCHITECTURES)} (and model.config_overrides for any difference)"
                ) from None
    if config is None:
        if name not in KNOWN_ARCHITECTURES:
            raise DryRunError(f"model.architecture={name!r}: choose one of {', '.join(KNOWN_ARCHITECTURES)}")
        fields = dict(KNOWN_ARCHITECTURES[name])
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        source = f"{ref} (architecture {name})"
    for key, value in m.config_overrides.items():
        setattr(config, key, value)
    return config, source


def model_states_bytes(
    params: int,
    trainable: int,
    largest: int,
    stage: int,
    gpus: int,
    *,
    weight_bytes: int,
    offload_opt: bool,
    offload_params: bool,
) -> tuple[int, int]:
    """`(gpu, cpu)` bytes of model states per GPU, DeepSpeed's accounting generalised to frozen weights (LoRA).

    Full fine-tuning in 16-bit: 2 bytes of weights per parameter, 18 per trained one (16-bit and fp32 grads, fp32
    master weights, Adam's two moments): stage 0 = 20P, 1 = 4P + 16P/N, 2 = 2P + 18P/N, 3 = 4L + 18P/N (as
    `deepspeed.runtime.zero.*.estimate_zero*_model_states_mem_needs`).
    """
    mixed = 4 if weight_bytes == 2 else 0
    w, t = weight_bytes * params, trainable
    opt = (mixed + 8) * t  # fp32 master weights + Adam moments
    grads = (weight_bytes + mixed) * t
    frozen = weight_bytes * (params - trainable)
    n = max(gpus, 1)
    gpu: float
    cpu: float
    if stage == 0:
        gpu, cpu = w + grads + opt, 0
    elif stage in (1, 2):
        shard = (mixed * t + opt) / n if stage == 1 else (grads + opt) / n
        full = w + (weight_bytes * t if stage == 1 else 0)
        gpu, cpu = (w, shard) if offload_opt else (full + shard, 0)
    else:
        states = (frozen + grads + opt) / n
        gather = 4 * largest
        if offload_params:
            gpu, cpu = gather, states + w / n
        elif offload_opt:
            gpu, cpu = gather + w / n, states
        else:
            gpu, cpu = gather + states, 0
    return int(gpu), int(cpu)


def dry_run(cfg: TrainConfig) -> DryRunReport:
    """Build the model on the meta device and estimate per-GPU memory; loads no weights."""
    from transformers import AutoModelForCausalLM

    config, source = model_config(cfg)
    dtype = getattr(torch, cfg.model.dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if cfg.lora.enabled:
            from huarizo.trainer.model import add_lora

            model = add_lora(model, cfg.lora)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in mod.parameters(recurse=False)) for mod in model.modules())
    ds = cfg.deepspeed
    gpus = ds.num_gpus or int(os.environ.get("WORLD_SIZE", 1))
    gpu, cpu = model_states_bytes(
        params,
        trainable,
        largest,
        ds.stage,
        gpus * ds.num_nodes,
        weight_bytes=dtype.itemsize,
        offload_opt=ds.offload_optimizer,
        offload_params=ds.offload_params,
    )
    arch = f"{type(model).__name__} from {source}"
    return DryRunReport(arch, params, trainable, largest, ds.stage, gpus * ds.num_nodes, gpu, cpu)

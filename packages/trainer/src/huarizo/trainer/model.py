"""The model side: load for training, the response-only loss, the final HF folder, merge-lora."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from huarizo.formats import (
    IGNORE_INDEX,
    HuarizoError,
    Template,
    chat_template_for,
    end_of_turn_ids,
    template_for_tokenizer,
)
from huarizo.formats.models import resolve_model
from huarizo.trainer.config import LoraConfig, ModelConfig


class ModelBuildError(HuarizoError):
    """A model that cannot be built, merged or patched."""


def attn_implementation(cfg: ModelConfig) -> str:
    """`auto` means flash_attention_2 when it is installed and CUDA is there, else sdpa (then varlen where the
    architecture allows, see `load_model`)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


VARLEN = "huarizo_varlen"


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention computed sample by sample within each row: a sample starts where its position id is 0.

    The padding-free counterpart of flash-attention's varlen kernels for any device: packed samples never see each
    other, and each costs its own length squared instead of the row's. Right padding starts its own segment, so it
    is exact for padded rows too (their pad positions carry no loss).
    """
    b, _, length, _ = query.shape
    pos = position_ids if position_ids is not None else torch.arange(length, device=query.device).expand(b, -1)
    gqa = key.shape[1] != query.shape[1]
    rows = []
    for r in range(b):
        starts = (pos[r] == 0).nonzero().flatten().tolist()
        bounds = sorted({0, *starts, length})
        pieces = [
            F.scaled_dot_product_attention(
                query[r : r + 1, :, s:e],
                key[r : r + 1, :, s:e],
                value[r : r + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for s, e in itertools.pairwise(bounds)
        ]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


_LAYER_KINDS = {"full_attention", "sliding_attention"}


def use_varlen_attention(model: Any, max_length: int | None = None) -> bool:
    """Switch a model from sdpa to `varlen_attention` when that is exact: causal attention without soft-capping,
    and either no sliding window or one no sample reaches (every sample at most `max_length` tokens, at most the
    window: then a sliding layer sees what a full one sees, as with Gemma 3's 512-token window at a max_length of
    512 or less). Returns whether it switched."""
    from transformers import AttentionInterface

    config = model.config
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or ())
    plain = (
        not getattr(config, "attn_logit_softcapping", None)
        and kinds <= _LAYER_KINDS
        and (not window or (max_length is not None and max_length <= window))
    )
    if config._attn_implementation != "sdpa" or not plain:
        return False
    AttentionInterface.register(VARLEN, varlen_attention)
    model.set_attn_implementation(VARLEN)
    return True


def check_config_overrides(cfg: ModelConfig) -> None:
    """Fail fast on `model.config_overrides` that name no setting of the model, or with which it cannot be built
    (checked on the meta device: no memory, no weights)."""
    if not cfg.config_overrides:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model(cfg.ref))
    for key, value in cfg.config_overrides.items():
        if not hasattr(config, key):
            raise ModelBuildError(f"model.config_overrides: {key!r} is not a setting of {config.model_type} models")
        try:
            setattr(config, key, value)
        except Exception as exc:  # transformers validates some settings as they are set
            raise ModelBuildError(f"model.config_overrides: {key}={value!r}: {_first_line(exc)}") from None
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # any error of the model's own constructor
        raise ModelBuildError(
            f"model.config_overrides {cfg.config_overrides}: the model cannot be built with them ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    """An exception as one line (its lines joined), at most 300 characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_model(cfg: ModelConfig, max_length: int | None = None) -> Any:
    """Load the causal LM to train (call under `HfDeepSpeedConfig` for ZeRO-3 so weights load partitioned);
    `max_length` (the longest sample) decides whether sliding-window attention can run sample by sample exactly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(cfg.ref)
    impl = attn_implementation(cfg)
    try:
        config = AutoConfig.from_pretrained(path)
        for key, value in cfg.config_overrides.items():
            setattr(config, key, value)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=getattr(torch, cfg.dtype),
            attn_implementation="sdpa" if impl == "varlen" else impl,
        )
    except OSError as exc:
        raise ModelBuildError(f"model.ref={cfg.ref}: cannot load the model ({_first_line(exc)})") from None
    for attr in ("hf_quantizer", "quantization_method"):  # GGUF-converted folders keep a stale marker
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    varlen = cfg.attn_implementation in ("auto", "varlen") and use_varlen_attention(model, max_length)
    if impl == "varlen" and not varlen:
        raise ModelBuildError(
            "model.attn_implementation=varlen: this model's attention is not plain causal (soft-capping, or a "
            "sliding window shorter than data.max_length); use sdpa"
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.new_tokens_only:
        from huarizo.trainer.vocab import new_token_ids, train_new_rows_only

        train_new_rows_only(model, new_token_ids(path))
    return model


def add_lora(model: Any, cfg: LoraConfig) -> Any:
    """Wrap the model in a peft LoRA adapter; only the adapter's weights train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=list(cfg.modules_to_save) or None,  # a copy: peft edits the list it is given
        ensure_weight_tying=bool(cfg.modules_to_save and getattr(model.config, "tie_word_embeddings", False)),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ModelBuildError(f"lora.target_modules={cfg.target_modules!r}: {exc}") from None


LOSS_CHUNK_BYTES = 2**27
"""The fp32 logits of one chunk of trained positions in the chunked loss (128 MiB): how many rows a chunk holds is
this divided by the vocabulary's size, so the loss's memory does not grow with the vocabulary."""


def _chunked_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
    scale: float | None,
    grads: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Summed cross-entropy of `linear(hidden, weight, bias)` (soft-capped, then scaled, as the model does) against
    `targets`, and the gradients asked for in `grads` (hidden, weight, bias), a chunk of rows at a time."""
    rows = max(1, LOSS_CHUNK_BYTES // (4 * weight.shape[0]))
    d_h = torch.empty_like(hidden) if grads[0] else None
    d_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads[1] else None
    d_b = (
        torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        if grads[2] and bias is not None
        else None
    )
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.shape[0], rows):
        h, t = hidden[lo : lo + rows], targets[lo : lo + rows]
        z = F.linear(h, weight, bias).float()
        slope = None
        if softcap:
            z = z.div_(softcap).tanh_()
            slope = 1 - z * z
            z.mul_(softcap)
        if scale:
            z.mul_(scale)
        picked = z.gather(1, t[:, None])
        top = z.amax(dim=1, keepdim=True)
        z = z.sub_(top).exp_()  # from here on in the logits' memory: exp, then the softmax and its gradient
        total = z.sum(dim=1, keepdim=True)
        loss += (total.log() + top - picked).sum()
        if not any(grads):
            continue
        g = z.div_(total)
        g[torch.arange(len(t), device=g.device), t] -= 1
        if slope is not None:
            g.mul_(slope)
        if scale:
            g.mul_(scale)
        g = g.to(h.dtype)
        if d_h is not None:
            d_h[lo : lo + rows] = g @ weight
        if d_w is not None:
            if g.dtype == d_w.dtype:
                d_w.addmm_(g.t(), h)
            else:
                d_w += (g.t() @ h).float()
        if d_b is not None:
            d_b += g.sum(0).float()
    return loss, d_h, d_w, d_b


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The output layer and the summed cross-entropy, chunk by chunk; the gradients are taken in the forward (where
    each chunk's logits are at hand) and scaled by the loss's gradient in the backward (the liger-kernel idea)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        softcap: float | None,
        scale: float | None,
    ) -> torch.Tensor:
        loss, d_h, d_w, d_b = _chunked_ce(
            hidden,
            weight,
            bias,
            targets,
            softcap,
            scale,
            tuple(ctx.needs_input_grad[:3]),
        )
        ctx.grads = d_h, d_w, d_b
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        d_h, d_w, d_b = ctx.grads
        ctx.grads = None
        w_dtype, b_dtype = ctx.dtypes
        return (
            None if d_h is None else d_h.mul_(grad.to(d_h.dtype)),
            None if d_w is None else d_w.mul_(grad).to(w_dtype),
            None if d_b is None else d_b.mul_(grad).to(b_dtype),
            None,
            None,
            None,
        )


def _liger_loss(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: float | None) -> Any:
    """liger-kernel's fused output layer and loss (CUDA, Triton), when it is installed."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, head.weight, targets, head.bias, reduction="sum", softcap=softcap, accum_dtype=torch.float32
    )


def _checkpointed_ce(
    head: nn.Module, h: torch.Tensor, t: torch.Tensor, softcap: float | None, scale: float | None
) -> torch.Tensor:
    z = head(h).float()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    if scale:
        z = z * scale
    return F.cross_entropy(z, t, reduction="sum")


def output_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, config: Any) -> torch.Tensor:
    """The summed cross-entropy of the output layer `head` on `hidden` (one row per trained position) against
    `targets`, without ever holding more than one chunk of logits (`LOSS_CHUNK_BYTES`) or their gradient.

    A plain `nn.Linear` head (tied to the input embedding or not) goes through `_ChunkedLinearCrossEntropy`, or
    liger-kernel on CUDA when it is installed; any other head (one carrying a LoRA adapter, say) runs chunk by chunk
    under activation checkpointing. Exact: the loss and gradients are the full computation's.
    """
    softcap = getattr(config, "final_logit_softcapping", None) or None
    scale = getattr(config, "logit_scale", None) or None
    if type(head) is nn.Linear:
        if hidden.is_cuda and scale is None and importlib.util.find_spec("liger_kernel"):
            return _liger_loss(hidden, head, targets, softcap)
        grad = torch.is_grad_enabled()
        if grad and (hidden.requires_grad or head.weight.requires_grad):
            loss: torch.Tensor = _ChunkedLinearCrossEntropy.apply(
                hidden, head.weight, head.bias, targets, softcap, scale
            )
            return loss
        return _chunked_ce(hidden, head.weight, head.bias, targets, softcap, scale, (False, False, False))[0]
    from torch.utils.checkpoint import checkpoint

    rows = max(1, LOSS_CHUNK_BYTES // (4 * int(config.vocab_size)))
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.shape[0], rows):
        h, t = hidden[lo : lo + rows], targets[lo : lo + rows]
        total = total + checkpoint(_checkpointed_ce, head, h, t, softcap, scale, use_reentrant=False)
    return total


class SFTModel(nn.Module):
    """Wraps a causal LM; `forward(batch)` returns the summed cross-entropy over the trained tokens only.

    The output layer runs only on positions that carry a target (the response tokens), which saves the vocabulary
    projection for every prompt and padding token, and in chunks with the gradient taken per chunk
    (`output_loss`), so the `[trained tokens, vocabulary]` logits never exist at once.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lm: Any = self.lm
        out = lm.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        )
        keep = targets != IGNORE_INDEX
        return output_loss(lm.get_output_embeddings(), out[0][keep], targets[keep], lm.config)


def export_template(lm: Any, tokenizer: Any, template: Template) -> None:
    """Make the training template the tokenizer's chat template (with `{% generation %}` marks around the trained
    text), and every token that ends a turn in it the model's `eos_token_id`, so `generate()` stops by itself."""
    jinja = chat_template_for(template, tokenizer)
    if jinja is not None:
        tokenizer.chat_template = jinja
    ids = end_of_turn_ids(template, tokenizer)
    gen = getattr(lm, "generation_config", None) if lm is not None else None
    if gen is not None and ids:
        gen.eos_token_id = ids
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]


def save_hf_folder(
    lm: Any,
    state_dict: dict[str, torch.Tensor] | None,
    tokenizer: Any,
    folder: Path,
    template: Template,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write an HF model folder atomically (a temporary folder, then a rename); `record` goes to
    `huarizo_templates.json` (which template every data file was rendered with)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if lm.config._attn_implementation == VARLEN:  # a training-time kernel; the saved model uses sdpa
        lm.set_attn_implementation("sdpa")
    export_template(lm, tokenizer, template)
    lm.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if record is not None:
        (tmp / TEMPLATES_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


TEMPLATES_RECORD = "huarizo_templates.json"


def merge_lora(
    base: str, adapter: str | os.PathLike[str], target: str | os.PathLike[str], dtype: str = "float32"
) -> Path:
    """Merge a LoRA adapter into its base model and write an HF folder (with the adapter folder's tokenizer, if any)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from huarizo.trainer.vocab import fit_vocab_to_adapter

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise ModelBuildError(f"{adapter}: no adapter_config.json, not a LoRA adapter folder")
    path = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    fit_vocab_to_adapter(model, adapter)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok_src = adapter if (adapter / "tokenizer_config.json").exists() else path
    tokenizer = AutoTokenizer.from_pretrained(tok_src)
    if getattr(tokenizer, "chat_template", None):  # stop where the adapter's template ends a turn
        export_template(merged, tokenizer, template_for_tokenizer(tokenizer))
    extra = [adapter / TEMPLATES_RECORD] if (adapter / TEMPLATES_RECORD).exists() else []
    return _save_folder(merged, tokenizer, target, extra)


def _save_folder(model: Any, tokenizer: Any, target: str | os.PathLike[str], extra: Sequence[Path] = ()) -> Path:
    """Write a model folder (and copies of the `extra` files) next to `target`, then rename it into place (a crash
    leaves no half folder)."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for path in extra:
        shutil.copyfile(path, tmp / path.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target

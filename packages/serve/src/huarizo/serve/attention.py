"""Decode-step attention for CPU serving: one query token per sequence, as two small matmuls.

PyTorch's fused CPU attention is built for long queries. For a decode step (one query token per sequence) it takes
about 15x longer than the plain computation once no padding forces a mask (2.1 ms against 0.13 ms per layer for 16
sequences of 100 tokens with Gemma 3's 4 query heads on 1 key/value head, 14 ms against 0.45 ms at 512 tokens).
`use_decode_attention` registers an attention implementation for transformers' models that computes a decode step
as `softmax(q k^T * scale + mask) v` with each key/value head's query heads stacked (no copies of the keys), in
float32 like the fused kernel, and hands every other call (prefill) to transformers' SDPA attention unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "huarizo_decode"
"""The attention implementation's name in transformers' registry (its masks are SDPA's)."""


def decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: `query` is `[batch, heads, q_len, dim]`, `key` and `value` are
    `[batch, kv_heads, kv_len, dim]`; returns `[batch, q_len, heads, dim]`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    if q_len != 1 or module.training or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(q, key.float().transpose(-1, -2))  # [batch, kv_heads, group, kv_len]
    scores *= dim**-0.5 if scaling is None else scaling
    if attention_mask is not None:  # [batch, 1, 1, kv_len]: True (or 0.0) where a key is seen
        mask = attention_mask
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, value.float()).to(query.dtype)  # [batch, kv_heads, group, dim]
    return out.reshape(batch, 1, heads, dim), None


def use_decode_attention(model: Any) -> bool:
    """Switch a CPU model that uses SDPA attention to `decode_attention_forward` for its decode steps; returns
    whether it did (models with other attention implementations, or on other devices, are left alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation != "sdpa" or next(model.parameters()).device.type != "cpu":
        return False
    AttentionInterface.register(NAME, decode_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True

"""Faster linear layers for serving on a CPU: weights repacked for oneDNN, or quantised to int8 or int4.

Decoding reads every linear layer's weights once per step, so on a CPU a small model's step is bound by those reads
and by how well the matmul kernel uses them (for Gemma 3 270M, 62% of the weights are the 262,144-row output layer
it ties to its embedding). `ServeConfig.quantize` picks one of:

- `none`: the weights as loaded, repacked once into oneDNN's blocked layout (`mkldnn._linear_pointwise`): the same
  results as `nn.Linear` to the bit in bfloat16, and about twice as fast as PyTorch's default matmul at batch 1.
- `int8`: weight-only int8, one symmetric scale per output row (`torch._weight_int8pack_mm`): half the bytes.
- `int4`: the output layer in weight-only int4 (`torch._weight_int4pack_mm_for_cpu`: an affine scale and zero per
  group of 32 inputs, each group's range clipped where that lowers its error), the decoder's layers in int8. The
  output layer is most of the bytes; int4 in the decoder's layers costs far more quality (on Gemma 3 270M: +33%
  perplexity on held-out text, against +2-5% for this mix).

Activations stay in the model's dtype; only the weights are stored differently. The quantised kernels beat oneDNN's
bfloat16 one at small batches only (up to about 8 rows on AVX-512 CPUs): `none` serves many clients fastest. The
input embedding is left as loaded: a tied output layer gets its own copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from huarizo.serve.config import Quantize, bf16_on_cpu

INT4_GROUP = 32
"""Inputs per int4 group (each group has its own scale and zero)."""

INT4_CLIP = (1.0, 0.95, 0.9, 0.85, 0.8)
"""Shares of a group's range tried around its centre; each group keeps the one with the smallest squared error."""


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 16)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


class Int8Linear(nn.Module):
    """Weight-only int8 linear: `x @ (q * scale).T + bias`, one symmetric scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = [], []
        for rows in linear.weight.detach().split(4096):  # bounds the float32 temporaries of a large layer
            w = rows.float()
            s = w.abs().amax(1).clamp(min=1e-12) / 127
            weight.append((w / s[:, None]).round_().to(torch.int8))
            scale.append(s)
        self.weight = torch.cat(weight)
        self.scale = torch.cat(scale).to(linear.weight.dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch._weight_int8pack_mm(rows, self.weight, self.scale).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int4_groups(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise `w` (`[n, k]`, k a multiple of `INT4_GROUP`) by groups of `INT4_GROUP` inputs: `(q, scale, low)` with
    `w ~ q * scale + low`, q in 0..15 (`[n, k]` int32; scale and low `[n, k / INT4_GROUP]` float32)."""
    n, k = w.shape
    groups = w.float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    top, bottom = groups.amax(-1), groups.amin(-1)
    centre, half = (top + bottom) / 2, (top - bottom) / 2
    best_err = torch.full_like(centre, float("inf"))
    scale, low = torch.ones_like(centre), centre.clone()
    for share in INT4_CLIP:
        s, lo = (2 * half * share / 15).clamp(min=1e-12)[..., None], (centre - half * share)[..., None]
        err = (groups - lo).div_(s).round_().clamp_(0, 15).mul_(s).add_(lo).sub_(groups).square_().sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale, low = torch.where(better, s[..., 0], scale), torch.where(better, lo[..., 0], low)
    q = (groups - low[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)
    return q.to(torch.int32).reshape(n, k), scale, low


class Int4Linear(nn.Module):
    """Weight-only int4 linear: per group of `INT4_GROUP` inputs, `w = q * scale + low` with q in 0..15."""

    def __init__(self, linear: nn.Linear, rows_at_a_time: int = 4096) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed, scale_zero = [], []
        for a in range(0, self.out_features, rows_at_a_time):  # bounds the float32 temporaries of a large layer
            q, scale, low = int4_groups(linear.weight.detach()[a : a + rows_at_a_time])
            packed.append(torch._convert_weight_to_int4pack_for_cpu(q, 1))
            # the kernel computes (q - 8) * scale + zero
            scale_zero.append(torch.stack([scale, low + 8 * scale], -1).transpose(0, 1))
        self.weight = torch.cat(packed)
        self.scale_zero = torch.cat(scale_zero, 1).contiguous().to(linear.weight.dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch._weight_int4pack_mm_for_cpu(rows, self.weight, INT4_GROUP, self.scale_zero)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 (groups of {INT4_GROUP})"


def _packable(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return bf16_on_cpu()
    return dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _replacement(linear: nn.Linear, quantize: Quantize, head: bool) -> nn.Module | None:
    if quantize == "int4" and head and linear.in_features % INT4_GROUP == 0:
        return Int4Linear(linear)
    if quantize in ("int8", "int4"):
        return Int8Linear(linear)
    return PackedLinear(linear) if _packable(linear.weight.dtype) else None


def optimize_linears(model: Any, quantize: Quantize = "none") -> Any:
    """Replace the linear layers of a causal LM on the CPU (its decoder's and its output layer) with the faster ones
    `quantize` asks for, in place; returns the model. Models on other devices are returned unchanged."""
    if next(model.parameters()).device.type != "cpu":
        return model
    for module in list(model.get_decoder().modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and (new := _replacement(child, quantize, head=False)) is not None:
                setattr(module, name, new)
    head = model.get_output_embeddings()
    if type(head) is nn.Linear and (new := _replacement(head, quantize, head=True)) is not None:
        model.set_output_embeddings(new)
    return model

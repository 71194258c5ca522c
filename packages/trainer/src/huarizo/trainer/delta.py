"""Vicuna-style delta weights at bounded memory: `make_delta` (tuned - base) and `apply_delta` (base + delta).

Both stream the weight files tensor by tensor (`safetensors.safe_open`; `.bin` shards through
`torch.load(mmap=True, weights_only=True)`, which never runs pickled code) and write sharded safetensors: a tensor
is read, combined with its counterpart and kept until its output shard is full, so peak memory is about one output
shard plus two tensors, not two models (FastChat's `apply_delta` needs both models in memory: about 30 GB for 7B).

- The result is computed in `dtype` (default: each tensor's own dtype in the delta / tuned model), exactly as the
  in-memory method does: both tensors cast to `dtype`, then added (or subtracted).
- Tied weights stay tied: the output has the tensors the delta (tuned) folder stores, and a name the base does not
  store (an output layer tied to the input embeddings there) is looked up through the base's tied weights.
- An extended vocabulary is handled: rows past the base's (new tokens) are taken as they are.
- Everything but the weights (config, tokenizer, templates) comes from the delta (tuned) folder, plus a model card.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from huarizo.formats import HuarizoError, ProgressBar, atomic_folder
from huarizo.formats.models import resolve_model

DType = Literal["auto", "float32", "bfloat16", "float16"]
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = "1GB"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)


class DeltaError(HuarizoError):
    """Weights that cannot be read, combined or written as deltas."""


def parse_size(size: str | int) -> int:
    """`"500MB"`, `"2GB"`, `"1GiB"` or a number of bytes, as bytes."""
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.match(size)
        if not m:
            raise DeltaError(f"--max-shard-size {size!r}: use a size like 500MB or 2GB")
        unit = (m.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
        value = int(float(m.group(1)) * scale)
    if value < 1:
        raise DeltaError(f"--max-shard-size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightFiles:
    """The weights of a model folder, listed from the file headers and read one tensor at a time."""

    def __init__(self, ref: str, role: str) -> None:
        self.ref, self.role = ref, role
        self.folder = _local_folder(ref, role)
        self.entries: dict[str, _Entry] = {}
        files = self._weight_files()
        for file in files:
            if file.suffix == ".safetensors":
                self._list_safetensors(file)
            else:
                self._list_bin(file)

    def _weight_files(self) -> list[Path]:
        folder = self.folder
        for index_name, suffix in ((INDEX, ".safetensors"), ("pytorch_model.bin.index.json", ".bin")):
            index = folder / index_name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DeltaError(f"{index}: not a weight index ({exc})") from None
                return [folder / f for f in dict.fromkeys(weight_map.values())]
            single = folder / f"model{suffix}" if suffix == ".safetensors" else folder / "pytorch_model.bin"
            if single.exists():
                return [single]
        raise DeltaError(f"{self.role} model {self.ref}: no model.safetensors or pytorch_model.bin in {folder}")

    def _list_safetensors(self, file: Path) -> None:
        from safetensors import SafetensorError, safe_open

        if not file.exists():
            raise DeltaError(f"{self.role} model {self.ref}: the weight index names {file.name}, which is missing")
        try:
            with safe_open(file, "pt") as f:
                for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    piece = f.get_slice(name)
                    dtype = _ST_DTYPES.get(piece.get_dtype())
                    if dtype is None:
                        raise DeltaError(f"{file}: tensor {name!r} has dtype {piece.get_dtype()}, not supported")
                    self.entries[name] = _Entry(file, dtype, tuple(piece.get_shape()))
        except SafetensorError as exc:
            raise DeltaError(f"{file}: not a readable safetensors file ({exc})") from None

    def _list_bin(self, file: Path) -> None:
        for name, tensor in self._load_bin(file).items():
            self.entries[name] = _Entry(file, tensor.dtype, tuple(tensor.shape))

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        if not file.exists():
            raise DeltaError(f"{self.role} model {self.ref}: the weight index names {file.name}, which is missing")
        try:  # weights_only: plain tensors only, no pickled code runs; mmap: nothing is read until used
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad or unsafe file
            raise DeltaError(f"{file}: cannot read it as plain tensors ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise DeltaError(f"{file}: not a state dict")
        return state

    def read(self, name: str) -> torch.Tensor:
        """One tensor (memory-mapped until written to)."""
        entry = self.entries[name]
        if entry.file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(entry.file, "pt") as f:
                return f.get_tensor(name)
        return self._load_bin(entry.file)[name]

    def tied_names(self) -> dict[str, str]:
        """For each parameter name this folder does not store, the stored name it is tied to (from the config)."""
        try:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(self.folder)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception:  # an architecture transformers cannot build: exact names only
            return {}
        groups: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), []).append(name)
        aliases = {}
        for names in groups.values():
            stored = [n for n in names if n in self.entries]
            for n in names:
                if stored and n not in self.entries:
                    aliases[n] = stored[0]
        return aliases

    def other_files(self) -> list[Path]:
        """Everything in the folder but weights, weight indexes and model cards (config, tokenizer, templates)."""
        out = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.endswith(".index.json") or path.name == "README.md":
                continue
            if path.suffix in _WEIGHT_SUFFIXES or path.name.startswith("."):
                continue
            out.append(path)
        return out


def _local_folder(ref: str, role: str) -> Path:
    path = resolve_model(ref)
    if Path(path).is_dir():
        return Path(path)
    try:  # a hub id: fetch only what streaming needs
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(path, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, ...
        raise DeltaError(f"{role} model {ref!r}: not a local folder and not downloadable ({exc})") from None


Combine = Callable[..., torch.Tensor]
"""`torch.add` or `torch.sub`: `(x, b)` or `(x, b, out=...)`."""


def _stream(
    source: WeightFiles,
    base: WeightFiles,
    target: Path,
    combine: Combine,
    dtype: DType,
    max_shard_size: str | int,
    progress: bool,
) -> tuple[int, int]:
    """Write `combine(source[name], base[name])` for every tensor of `source`; returns (tensors, bytes)."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    aliases = base.tied_names()
    out_dtype = {
        n: (e.dtype if dtype == "auto" or not e.dtype.is_floating_point else getattr(torch, dtype))
        for n, e in source.entries.items()
    }
    pairs = {n: _counterpart(n, source, base, aliases) for n in source.entries}  # every mismatch before any work
    sizes = {n: out_dtype[n].itemsize * _numel(e.shape) for n, e in source.entries.items()}
    shards: list[list[str]] = [[]]
    filled = 0
    for name in source.entries:
        if shards[-1] and filled + sizes[name] > limit:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += sizes[name]
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    bar = ProgressBar("tensors", sum(sizes.values()), enabled=progress, unit="bytes")
    weight_map = {}
    for file, names in zip(files, shards, strict=True):
        shard: dict[str, torch.Tensor] = {}
        for name in names:
            shard[name] = _combine(name, source, base, pairs[name], out_dtype[name], combine)
            weight_map[name] = file
            bar.advance(sizes[name])
        save_file(shard, target / file, metadata={"format": "pt"})
        del shard
    bar.close()
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (target / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(weight_map), sum(sizes.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _counterpart(name: str, source: WeightFiles, base: WeightFiles, aliases: dict[str, str]) -> str:
    """The base tensor `name` combines with (itself, or the tensor it is tied to in the base), checked to fit."""
    base_name = name if name in base.entries else aliases.get(name)
    if base_name is None:
        raise DeltaError(f"tensor {name!r} of the {source.role} model has no counterpart in the base model")
    shape, base_shape = source.entries[name].shape, base.entries[base_name].shape
    extended = len(shape) == len(base_shape) >= 1 and shape[1:] == base_shape[1:] and shape[0] > base_shape[0]
    if shape != base_shape and not extended:
        raise DeltaError(f"{name}: shape {shape} does not fit the base model's {base_shape}")
    return base_name


def _combine(
    name: str, source: WeightFiles, base: WeightFiles, base_name: str, dtype: torch.dtype, combine: Combine
) -> torch.Tensor:
    """`combine(source[name], base[base_name])` in `dtype`, as the in-memory method computes it (both cast, then
    added or subtracted); rows of the source past the base's (added tokens) are kept as they are.

    At most two tensors are in memory at once: the result, first filled with the base tensor, and the source tensor.
    """
    shape, base_shape = source.entries[name].shape, base.entries[base_name].shape
    rows = None if shape == base_shape else base_shape[0]
    out = torch.empty(shape, dtype=dtype)
    head = out if rows is None else out[:rows]
    head.copy_(base.read(base_name))
    x = source.read(name)
    combine((x if rows is None else x[:rows]).to(dtype), head, out=head)
    if rows is not None:
        out[rows:] = x[rows:]
    return out


def _finish(
    target: Path, source: WeightFiles, base_ref: str, title: str, made_by: str, tensors: int, size: int
) -> None:
    from huarizo.trainer.card import ModelCard, write_card

    for path in source.other_files():
        shutil.copyfile(path, target / path.name)
    write_card(
        target,
        ModelCard(
            title=title,
            made_by=made_by,
            base=base_ref,
            metrics={"tensors": tensors, "weights (bytes)": size},
        ),
    )


def apply_delta(
    base: str,
    delta: str,
    target: str | os.PathLike[str],
    dtype: DType = "auto",
    *,
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
) -> Path:
    """Vicuna-style delta weights: write `target = base + delta`, streaming tensor by tensor.

    The delta's config and tokenizer become the target's; a delta with a larger vocabulary (added tokens) adds to the
    base rows it has and brings its extra rows as they are.
    """
    base_w, delta_w = WeightFiles(base, "base"), WeightFiles(delta, "delta")
    out = Path(target)
    with atomic_folder(out) as tmp:
        n, size = _stream(delta_w, base_w, tmp, torch.add, dtype, max_shard_size, progress)
        _finish(tmp, delta_w, base, f"{out.name}: {base} + delta {delta}", "huarizo apply-delta", n, size)
    return out


def make_delta(
    base: str,
    target: str,
    delta: str | os.PathLike[str],
    dtype: DType = "auto",
    *,
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
) -> Path:
    """Write the delta weights `delta = target - base` (what `apply_delta` turns back into `target`), streaming.

    Rows of the target past the base's (an extended vocabulary) are published as they are.
    """
    base_w, target_w = WeightFiles(base, "base"), WeightFiles(target, "target")
    out = Path(delta)
    with atomic_folder(out) as tmp:
        n, size = _stream(target_w, base_w, tmp, torch.sub, dtype, max_shard_size, progress)
        _finish(
            tmp,
            target_w,
            base,
            f"{out.name}: delta weights of {target} over {base}",
            "huarizo make-delta",
            n,
            size,
        )
    return out

"""`huarizo train CONFIG.yaml [--set K=V] [--dry-run]`, and the weights commands `huarizo merge-lora`,
`apply-delta`, `make-delta`, `extend-vocab` and `export`: options generated from the configs in
`huarizo.trainer.config` (file < `--set` < flags)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from huarizo.formats import HuarizoConfig, add_config_options, config_from_args

TRAIN_EPILOG = """\
several processes: torchrun --nproc_per_node N -m huarizo.trainer CONFIG.yaml
                   deepspeed --hostfile hostfile --module huarizo.trainer CONFIG.yaml
the model's weights afterwards: huarizo merge-lora | apply-delta | make-delta | extend-vocab | export
"""
_TRAIN_FLAGS = [
    "output_dir",
    "model.ref",
    "data.template",
    "data.max_length",
    "optim.lr",
    "optim.epochs",
    "optim.max_steps",
    "lora.enabled",
    "deepspeed.stage",
]


def _train(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import TrainConfig

    cfg = config_from_args(TrainConfig, args)
    if args.dry_run:
        from huarizo.trainer.dryrun import dry_run

        print(dry_run(cfg))
        return 0
    from huarizo.trainer.train import train

    result = train(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if result.loss is not None:
        print(f"trained {result.steps} steps (resumed at {result.resumed_from}), last loss {result.loss:.4f}")
    print(f"model: {result.final_dir}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from huarizo.trainer.card import merge_card, write_card
    from huarizo.trainer.config import MergeConfig
    from huarizo.trainer.model import merge_lora

    cfg = config_from_args(MergeConfig, args)
    out = merge_lora(cfg.base, cfg.adapter, cfg.target, cfg.dtype)
    write_card(out, merge_card(cfg.base, cfg.adapter, out))
    print(f"merged model: {out}")
    return 0


def _apply_delta(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import ApplyDeltaConfig
    from huarizo.trainer.delta import apply_delta

    cfg = config_from_args(ApplyDeltaConfig, args)
    out = apply_delta(cfg.base, cfg.delta, cfg.target, cfg.dtype, max_shard_size=cfg.max_shard_size, progress=True)
    print(f"patched model: {out}")
    return 0


def _make_delta(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import MakeDeltaConfig
    from huarizo.trainer.delta import make_delta

    cfg = config_from_args(MakeDeltaConfig, args)
    out = make_delta(cfg.base, cfg.target, cfg.delta, cfg.dtype, max_shard_size=cfg.max_shard_size, progress=True)
    print(f"delta weights: {out}")
    return 0


def _extend_vocab(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import VocabConfig
    from huarizo.trainer.vocab import extend_vocab, vocab_summary

    cfg = config_from_args(VocabConfig, args)
    result = extend_vocab(cfg.base, cfg.corpus, cfg.add, cfg.out, min_frequency=cfg.min_frequency, eval_files=cfg.eval)
    print(vocab_summary(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import ExportConfig
    from huarizo.trainer.export import export_gguf

    cfg = config_from_args(ExportConfig, args)
    result = export_gguf(
        cfg.model, cfg.out, qtype=cfg.type, template=cfg.template, modelfile=cfg.modelfile, progress=True
    )
    types = ", ".join(f"{n} {t}" for t, n in result.types.items())
    print(f"gguf: {result.gguf} ({result.arch}, {result.tensors} tensors: {types})")
    print(f"chat template: {result.template}; end of turn: {result.eot_token}; stops: {result.stops}")
    if result.modelfile is not None:
        print(f"ollama: {result.modelfile} (ollama create NAME -f {result.modelfile})")
    return 0


def register(sub: Any) -> None:
    """Register `huarizo train` and the weights commands."""
    from huarizo.trainer import config

    p = sub.add_parser(
        "train",
        help="fine-tune a model on DeepSpeed (loss on answers only; packing, LoRA, resume)",
        description=config.TrainConfig.__doc__,
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(p, config.TrainConfig, _TRAIN_FLAGS)
    p.add_argument("--dry-run", action="store_true", help="build on the meta device, print size and memory estimate")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.set_defaults(func=_train)

    commands: list[tuple[str, type[HuarizoConfig], Callable[[argparse.Namespace], int], str]] = [
        ("merge-lora", config.MergeConfig, _merge, "merge a LoRA adapter into its base model"),
        ("apply-delta", config.ApplyDeltaConfig, _apply_delta, "Vicuna-style delta weights: target = base + delta"),
        ("make-delta", config.MakeDeltaConfig, _make_delta, "publish delta weights: delta = target - base"),
        ("extend-vocab", config.VocabConfig, _extend_vocab, "add tokens learned on a corpus to a model's vocabulary"),
        ("export", config.ExportConfig, _export, "write a model folder as GGUF (llama.cpp, Ollama) + a Modelfile"),
    ]
    for name, cls, func, help_ in commands:
        p = sub.add_parser(name, help=help_, description=cls.__doc__)
        add_config_options(p, cls, list(cls.model_fields), positional="model" if name == "export" else None)
        p.set_defaults(func=func)

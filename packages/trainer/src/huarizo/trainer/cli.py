"""`huarizo train`: `huarizo train CONFIG.yaml [--set K=V] [--dry-run]`, `huarizo train merge-lora ...`,
`huarizo train apply-delta ...`. The first word after `train` picks the action; anything else is a config file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from huarizo.formats.cli import add_set_option

RUN_HELP = """\
actions:
  huarizo train CONFIG.yaml [--set KEY=VALUE ...] [--dry-run]
  huarizo train merge-lora --base MODEL --adapter DIR --target DIR
  huarizo train apply-delta --base MODEL --delta MODEL --target DIR

several processes: torchrun --nproc_per_node N -m huarizo.trainer CONFIG.yaml
                   deepspeed --hostfile hostfile --module huarizo.trainer CONFIG.yaml
"""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huarizo train",
        description="Supervised fine-tuning on DeepSpeed with response-only loss.",
        epilog=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="the training config (YAML); see `huarizo config schema train`")
    add_set_option(p)
    p.add_argument("--dry-run", action="store_true", help="build on the meta device, print size and memory estimate")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p


def _merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="huarizo train merge-lora", description="Merge a LoRA adapter into its base.")
    p.add_argument("--base", required=True, help="base model reference (folder, hub id, tiny, embedded)")
    p.add_argument("--adapter", required=True, help="the LoRA adapter folder (output_dir/adapter)")
    p.add_argument("--target", required=True, help="folder to write the merged model into")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p


def _delta_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huarizo train apply-delta", description="Vicuna-style delta weights: target = base + delta."
    )
    p.add_argument("--base", required=True, help="base model reference")
    p.add_argument("--delta", required=True, help="delta weights (folder or hub id)")
    p.add_argument("--target", required=True, help="folder to write the patched model into")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p


def _run(args: argparse.Namespace) -> int:
    from huarizo.trainer.config import TrainConfig

    cfg = TrainConfig.load(args.config, args.overrides)
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
    from huarizo.trainer.model import merge_lora

    print(f"merged model: {merge_lora(args.base, args.adapter, args.target, args.dtype)}")
    return 0


def _delta(args: argparse.Namespace) -> int:
    from huarizo.trainer.model import apply_delta

    print(f"patched model: {apply_delta(args.base, args.delta, args.target, args.dtype)}")
    return 0


ACTIONS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "merge-lora": (_merge_parser, _merge),
    "apply-delta": (_delta_parser, _delta),
}


def dispatch(argv: Sequence[str]) -> int:
    """Run `huarizo train ARGV...`: an action name first, or a config file."""
    if argv and argv[0] in ACTIONS:
        make, func = ACTIONS[argv[0]]
        return func(make().parse_args(argv[1:]))
    return _run(_run_parser().parse_args(argv))


def register(sub: Any) -> None:
    """Register `huarizo train` (its own parser handles the config run and the merge-lora / apply-delta actions)."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model (train CONFIG | train merge-lora | train apply-delta)",
        prefix_chars="+",  # every word goes to dispatch(), which has the real parsers
        add_help=False,
    )
    p.add_argument("argv", nargs="*")
    p.set_defaults(func=lambda args: dispatch(args.argv))

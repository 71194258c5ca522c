"""`huarizo train`: `huarizo train CONFIG.yaml [--set K=V] [--dry-run]`, and the actions `merge-lora`,
`apply-delta`, `make-delta`, `extend-vocab` and `export`. The first word after `train` picks the action; anything
else is a config file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from huarizo.formats import add_set_option

RUN_HELP = """\
actions:
  huarizo train CONFIG.yaml [--set KEY=VALUE ...] [--dry-run]
  huarizo train merge-lora --base MODEL --adapter DIR --target DIR
  huarizo train apply-delta --base MODEL --delta MODEL --target DIR
  huarizo train make-delta --base MODEL --target MODEL --delta DIR
  huarizo train extend-vocab --base MODEL --corpus FILE... --add N --out DIR
  huarizo train export MODEL_DIR --format gguf --out FILE.gguf [--type q8_0]

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
        prog="huarizo train apply-delta",
        description="Vicuna-style delta weights: target = base + delta, streamed tensor by tensor (peak memory "
        "about one output shard and two tensors).",
    )
    p.add_argument("--base", required=True, help="base model reference")
    p.add_argument("--delta", required=True, help="delta weights (folder or hub id)")
    p.add_argument("--target", required=True, help="folder to write the patched model into")
    _delta_options(p)
    return p


def _make_delta_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huarizo train make-delta",
        description="Publish delta weights: delta = target - base, streamed tensor by tensor.",
    )
    p.add_argument("--base", required=True, help="base model reference")
    p.add_argument("--target", required=True, help="the tuned model")
    p.add_argument("--delta", required=True, help="folder to write the delta weights into")
    _delta_options(p)
    return p


def _delta_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of the result (default auto: each tensor's own)",
    )
    p.add_argument("--max-shard-size", default="1GB", help="largest output shard, e.g. 500MB, 2GB (default 1GB)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _vocab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huarizo train extend-vocab",
        description="Learn new tokens on a corpus (BPE, tokenizers library), add them to the base tokenizer without "
        "changing any existing id, resize the embeddings (new rows: mean of the rows they replace), write a folder.",
    )
    p.add_argument("--base", required=True, help="base model reference (folder, tiny, embedded, hub id)")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE", help="UTF-8 text files to learn tokens on")
    p.add_argument("--add", required=True, type=_positive, metavar="N", help="most tokens to add")
    p.add_argument("--out", required=True, help="folder to write the extended model into")
    p.add_argument(
        "--min-frequency", type=_positive, default=2, metavar="K", help="a new piece occurs at least K times (2)"
    )
    p.add_argument(
        "--eval", action="append", default=[], metavar="FILE", help="also report tokens per Han character on FILE"
    )
    return p


def _export_parser() -> argparse.ArgumentParser:
    from huarizo.trainer.export import QUANT_TYPES

    p = argparse.ArgumentParser(
        prog="huarizo train export",
        description="Write a model folder as GGUF (llama.cpp, Ollama) with its chat template and end-of-turn token, "
        "and an Ollama Modelfile beside it.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="the model folder (e.g. runs/x/final)")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (gguf)")
    p.add_argument("--out", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    p.add_argument("--type", default="f16", choices=QUANT_TYPES, help="tensor type of the matrices (default f16)")
    p.add_argument("--template", help="chat template to embed (default: the folder's own, else alpaca)")
    p.add_argument("--no-modelfile", action="store_true", help="do not write the Ollama Modelfile")
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
    from huarizo.trainer.card import merge_card, write_card
    from huarizo.trainer.model import merge_lora

    out = merge_lora(args.base, args.adapter, args.target, args.dtype)
    write_card(out, merge_card(args.base, args.adapter, out))
    print(f"merged model: {out}")
    return 0


def _delta(args: argparse.Namespace) -> int:
    from huarizo.trainer.delta import apply_delta

    out = apply_delta(args.base, args.delta, args.target, args.dtype, max_shard_size=args.max_shard_size, progress=True)
    print(f"patched model: {out}")
    return 0


def _make_delta(args: argparse.Namespace) -> int:
    from huarizo.trainer.delta import make_delta

    out = make_delta(args.base, args.target, args.delta, args.dtype, max_shard_size=args.max_shard_size, progress=True)
    print(f"delta weights: {out}")
    return 0


def _vocab(args: argparse.Namespace) -> int:
    from huarizo.trainer.vocab import extend_vocab, vocab_summary

    result = extend_vocab(
        args.base, args.corpus, args.add, args.out, min_frequency=args.min_frequency, eval_files=args.eval
    )
    print(vocab_summary(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from huarizo.trainer.export import export_gguf

    result = export_gguf(
        args.model, args.out, qtype=args.type, template=args.template, modelfile=not args.no_modelfile, progress=True
    )
    types = ", ".join(f"{n} {t}" for t, n in result.types.items())
    print(f"gguf: {result.gguf} ({result.arch}, {result.tensors} tensors: {types})")
    print(f"chat template: {result.template}; end of turn: {result.eot_token}; stops: {result.stops}")
    if result.modelfile is not None:
        print(f"ollama: {result.modelfile} (ollama create NAME -f {result.modelfile})")
    return 0


ACTIONS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "merge-lora": (_merge_parser, _merge),
    "apply-delta": (_delta_parser, _delta),
    "make-delta": (_make_delta_parser, _make_delta),
    "extend-vocab": (_vocab_parser, _vocab),
    "export": (_export_parser, _export),
}


def dispatch(argv: Sequence[str]) -> int:
    """Run `huarizo train ARGV...`: an action name first, or a config file."""
    if argv and argv[0] in ACTIONS:
        make, func = ACTIONS[argv[0]]
        return func(make().parse_args(argv[1:]))
    return _run(_run_parser().parse_args(argv))


def register(sub: Any) -> None:
    """Register `huarizo train` (its own parser handles the config run and the actions)."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model (train CONFIG | merge-lora | apply-delta | make-delta | extend-vocab | export)",
        prefix_chars="+",  # every word goes to dispatch(), which has the real parsers
        add_help=False,
    )
    p.add_argument("argv", nargs="*")
    p.set_defaults(func=lambda args: dispatch(args.argv))

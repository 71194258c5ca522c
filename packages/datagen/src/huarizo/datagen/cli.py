"""Commands of huarizo-datagen: `datagen run`, `datagen identity`, `filter`, `clean-sharegpt`."""

from __future__ import annotations

import argparse
from typing import Any

from huarizo.formats.cli import add_set_option


def _run(args: argparse.Namespace) -> int:
    from huarizo.datagen.generate import DatagenConfig, run

    result = run(DatagenConfig.load(args.config, args.overrides))
    cost = f"${result.cost:.4f}"
    print(
        f"{result.kept} records kept, {result.rejected} rejected in {result.rounds} rounds; {result.requests} requests "
        f"({result.cached} from cache, {result.failed} failed), {result.prompt_tokens}+{result.completion_tokens} "
        f"tokens, cost {cost} -> {result.records_path}"
    )
    if result.reasons:
        print("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1])))
    return 0


def _identity(args: argparse.Namespace) -> int:
    from huarizo.datagen.identity import write_identity

    n = write_identity(args.output, args.name, args.org, args.n, args.seed)
    print(f"wrote {n} identity conversations to {args.output}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from rich.console import Console

    from huarizo.datagen.filters import FilterConfig, filter_file, summary_table

    overrides = [f"rouge_threshold={args.rouge_threshold}", f"tokenizer={args.tokenizer}", *args.overrides]
    if args.checks:
        overrides.append(f"checks=[{args.checks}]")
    cfg = FilterConfig.load(None, overrides)
    result = filter_file(args.input, args.output, pool=args.pool, cfg=cfg, rejects=args.rejects)
    Console(highlight=False).print(summary_table(result, f"huarizo filter {args.input}"))
    print(f"kept {len(result.kept)} -> {args.output}; rejects -> {args.rejects or str(args.output) + '.rejects.jsonl'}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from huarizo.datagen.sharegpt import CleanConfig, clean_file

    cfg = CleanConfig(max_length=args.max_length, tokenizer=args.tokenizer, lang=args.lang, min_pairs=args.min_pairs)
    result = clean_file(args.input, args.output, cfg)
    drops = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items(), key=lambda kv: -kv[1])) or "none"
    print(f"kept {len(result.kept)} conversations ({result.split} split) -> {args.output}; dropped: {drops}")
    return 0


def register(sub: Any) -> None:
    """Register `datagen` (run, identity), `filter` and `clean-sharegpt`."""
    p = sub.add_parser("datagen", help="generate instruction data (Self-Instruct, Alpaca) or identity conversations")
    dsub = p.add_subparsers(dest="datagen_command", metavar="ACTION", required=True)
    r = dsub.add_parser("run", help="run a generation config (resumes the run in its output_dir)")
    r.add_argument("config", help="YAML config, e.g. configs/datagen/alpaca.yaml")
    add_set_option(r)
    r.set_defaults(func=_run)
    i = dsub.add_parser("identity", help="write ShareGPT identity conversations")
    i.add_argument("output")
    i.add_argument("--name", required=True)
    i.add_argument("--org", required=True)
    i.add_argument("-n", type=int, default=120, help="how many conversations")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_identity)

    f = sub.add_parser("filter", help="filter Alpaca data: ROUGE-L novelty (exact, fast), keywords, length, ...")
    f.add_argument("input")
    f.add_argument("output")
    f.add_argument(
        "--pool", action="append", default=[], metavar="FILE", help="instructions already in the pool (repeat)"
    )
    f.add_argument("--rouge-threshold", type=float, default=0.7)
    f.add_argument("--tokenizer", choices=["default", "cjk"], default="default", help="ROUGE-L tokenizer")
    f.add_argument(
        "--checks", help="comma-separated: all, rouge, keywords, length, start, empty-output, duplicate, conflict"
    )
    f.add_argument("--rejects", help="rejects file (default: OUTPUT.rejects.jsonl)")
    add_set_option(f)
    f.set_defaults(func=_filter)

    c = sub.add_parser("clean-sharegpt", help="clean ShareGPT conversations (HTML, roles, dedupe, language, split)")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--tokenizer", help="HF tokenizer folder for lengths (default: words)")
    c.add_argument("--max-length", type=int, default=2048)
    c.add_argument("--lang", help="keep only this language, e.g. en (needs py3langid)")
    c.add_argument("--min-pairs", type=int, default=1)
    c.set_defaults(func=_clean)

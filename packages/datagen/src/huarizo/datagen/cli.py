"""Commands of huarizo-datagen: `datagen run`, `datagen identity`, `filter`, `clean-sharegpt`.

Every command's options come from its config model (`huarizo.datagen.config`): a YAML file, then `--set KEY=VALUE`,
then flags, each overriding the one before.
"""

from __future__ import annotations

import argparse
from typing import Any

from huarizo.datagen.config import CleanConfig, DatagenConfig, FilterConfig, IdentityConfig
from huarizo.formats import add_config_options, config_from_args

_RUN_FLAGS = [
    "pipeline",
    "output_dir",
    "seeds",
    "num_records",
    "max_rounds",
    "requests_per_round",
    "seed",
    "progress",
    "teacher.model",
    "teacher.api_base",
    "teacher.api_key_env",
    "teacher.mode",
    "teacher.concurrency",
    "teacher.request_timeout",
    "teacher.max_retries",
    "teacher.temperature",
    "teacher.top_p",
    "teacher.max_tokens",
]
_FILTER_FLAGS = ["checks", "rouge_threshold", "tokenizer", "min_words", "max_words"]
_CLEAN_FLAGS = ["max_length", "tokenizer", "lang", "min_pairs"]
_IDENTITY_FLAGS = ["name", "org", "count", "seed"]


def _run(args: argparse.Namespace) -> int:
    from huarizo.datagen.generate import DatagenResult, RoundFailed, run

    def report(r: DatagenResult) -> None:
        cost = "unknown (unpriced model)" if r.cost is None else f"${r.cost:.4f}"
        print(
            f"{r.kept} records kept, {r.rejected} rejected of {r.generated} generated in {r.rounds} rounds; "
            f"{r.requests} requests ({r.cached} from cache, {r.retries} retries, {r.failed} failed), "
            f"{r.prompt_tokens}+{r.completion_tokens} tokens, cost {cost} -> {r.records_path}"
        )
        if r.reasons:
            print("rejected: " + ", ".join(f"{k} {v}" for k, v in r.reasons.items()))

    try:
        report(run(config_from_args(DatagenConfig, args)))
    except RoundFailed as exc:
        report(exc.result)
        raise
    return 0


def _identity(args: argparse.Namespace) -> int:
    from huarizo.datagen.identity import write_identity

    cfg = config_from_args(IdentityConfig, args)
    n = write_identity(args.output, cfg.name, cfg.org, cfg.count, cfg.seed)
    print(f"wrote {n} identity conversations to {args.output}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from rich.console import Console

    from huarizo.datagen.filters import filter_file, summary_table

    cfg = config_from_args(FilterConfig, args)
    result = filter_file(args.input, args.output, pool=args.pool, cfg=cfg, rejects=args.rejects)
    Console(highlight=False).print(summary_table(result, f"huarizo filter {args.input}"))
    what = "instructions" if result.instructions_only else "records"
    print(f"kept {result.kept} {what} -> {args.output}; rejects -> {result.outputs['rejects']}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from huarizo.datagen.sharegpt import clean_file

    result = clean_file(args.input, args.output, config_from_args(CleanConfig, args))
    drops = ", ".join(f"{k} {v}" for k, v in result.reasons.items()) or "none"
    print(
        f"kept {result.kept} conversations ({result.split} split, {result.parts} written) -> {args.output}; "
        f"dropped: {drops}"
    )
    return 0


def _config_file_option(parser: argparse.ArgumentParser, cls: type) -> None:
    parser.add_argument("--config", metavar="FILE", help=f"a {cls.__name__} YAML file (--set and flags override it)")


def register(sub: Any) -> None:
    """Register `datagen` (run, identity), `filter` and `clean-sharegpt`."""
    p = sub.add_parser("datagen", help="generate instruction data (Self-Instruct, Alpaca) or identity conversations")
    dsub = p.add_subparsers(dest="datagen_command", metavar="ACTION", required=True)
    r = dsub.add_parser(
        "run",
        help="run a generation config (resumes the run in its output_dir)",
        description="Generate instruction data; e.g. huarizo datagen run configs/datagen/alpaca.yaml. A rerun "
        "resumes the run in output_dir; exit 1 (naming them) when teacher requests failed for good.",
    )
    add_config_options(r, DatagenConfig, _RUN_FLAGS)
    r.set_defaults(func=_run)

    i = dsub.add_parser("identity", help="write ShareGPT identity conversations")
    i.add_argument("output")
    _config_file_option(i, IdentityConfig)
    add_config_options(i, IdentityConfig, _IDENTITY_FLAGS, config_file=False)
    i.set_defaults(func=_identity)

    f = sub.add_parser(
        "filter",
        help="filter Alpaca records or instructions: ROUGE-L novelty (exact, fast), keywords, length, ...",
        description="Filter a file of Alpaca records, or of instructions alone (records without an output).",
    )
    f.add_argument("input")
    f.add_argument("output")
    f.add_argument(
        "--pool", action="append", default=[], metavar="FILE", help="instructions already in the pool (repeat)"
    )
    f.add_argument("--rejects", help="rejects file (default: OUTPUT.rejects.jsonl)")
    _config_file_option(f, FilterConfig)
    add_config_options(f, FilterConfig, _FILTER_FLAGS, config_file=False)
    f.set_defaults(func=_filter)

    c = sub.add_parser("clean-sharegpt", help="clean ShareGPT conversations (HTML, roles, dedupe, language, split)")
    c.add_argument("input")
    c.add_argument("output")
    _config_file_option(c, CleanConfig)
    add_config_options(c, CleanConfig, _CLEAN_FLAGS, config_file=False)
    c.set_defaults(func=_clean)

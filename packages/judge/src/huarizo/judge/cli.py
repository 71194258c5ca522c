"""`huarizo judge answer | grade | harness`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from huarizo.formats.cli import add_set_option


def _overrides(args: argparse.Namespace, keys: list[str]) -> list[str]:
    """Flags given on the command line, as `--set` overrides (JSON values are valid YAML), before the user's own."""
    flags = [f"{k}={json.dumps(getattr(args, k))}" for k in keys if getattr(args, k, None) not in (None, [])]
    return flags + list(args.overrides)


def _answer(args: argparse.Namespace) -> int:
    from huarizo.judge.answer import AnswerConfig, answer

    keys = [
        "model",
        "questions",
        "out",
        "model_id",
        "api_base",
        "api_key",
        "concurrency",
        "max_tokens",
        "temperature",
        "template",
        "system",
        "cache_dir",
        "limit",
    ]
    cfg = AnswerConfig.load(args.config, _overrides(args, keys))
    usage = answer(cfg)
    print(f"answers in {cfg.out}; {usage.requests} requests, {usage.cached} cached, {usage.retries} retried")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from huarizo.judge.grade import GradeConfig, grade

    keys = [
        "mode",
        "questions",
        "references",
        "answers",
        "baseline",
        "judge",
        "api_base",
        "api_key",
        "concurrency",
        "labels",
        "out",
        "limit",
        "cache_dir",
        "parse_retries",
    ]
    cfg = GradeConfig.load(args.config, _overrides(args, keys))
    result = grade(cfg)
    s = result.summary
    if cfg.mode == "pairwise":
        for p in s["pairs"]:
            rate = (
                "n/a" if p["win_rate"] is None else "{:.3f} [{:.3f}, {:.3f}]".format(p["win_rate"], *p["win_rate_ci"])
            )
            print(
                f"{p['model']} vs {p['opponent']}: win rate {rate} "
                f"({p['wins']}W {p['ties']}T {p['losses']}L, {p['errors']} errors)"
            )
    else:
        for m, v in s["models"].items():
            print(f"{m}: mean score {v['mean']} over {v['n']} ({v['errors']} errors)")
    a = s["audit"]
    print(f"audit: position consistency {a['position_consistency']}, prefers longer {a['prefers_longer']}")
    print(f"wrote {result.out}/summary.json, judgments.jsonl, report.md")
    return 0


def _harness(args: argparse.Namespace) -> int:
    from huarizo.judge.harness import HarnessConfig, harness

    keys = ["model", "tasks", "include_path", "num_fewshot", "limit", "batch_size", "device", "out"]
    cfg = HarnessConfig.load(args.config, _overrides(args, keys))
    for task, metrics in harness(cfg).items():
        print(task, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def register(sub: Any) -> None:
    """Register `huarizo judge` and its subcommands."""
    judge = sub.add_parser("judge", help="answer question sets, grade answers with an LLM judge, run benchmarks")
    jsub = judge.add_subparsers(dest="judge_command", metavar="SUBCOMMAND", required=True)

    p = jsub.add_parser("answer", help="answer a question set with any litellm model (cached, resumable)")
    p.add_argument("config", nargs="?", help="YAML config (flags and --set override it)")
    p.add_argument("--model", help="litellm model, e.g. openai/my-model with --api-base")
    p.add_argument("--questions")
    p.add_argument("--out", help="answers JSONL")
    p.add_argument("--model-id", dest="model_id", help="name written in the answers (default: from --model)")
    p.add_argument("--api-base", dest="api_base")
    p.add_argument("--api-key", dest="api_key")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--max-tokens", dest="max_tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--template", help="huarizo template: send plain prompts (completion mode)")
    p.add_argument("--system", help="system message")
    p.add_argument("--cache-dir", dest="cache_dir")
    p.add_argument("--limit", type=int)
    add_set_option(p)
    p.set_defaults(func=_answer)

    p = jsub.add_parser("grade", help="grade answers with an LLM judge: single ratings or pairwise, both orders")
    p.add_argument("config", nargs="?", help="YAML config (flags and --set override it)")
    p.add_argument("--mode", choices=["single", "pairwise"])
    p.add_argument("--questions")
    p.add_argument("--references", help="reference answers (MT-bench answer layout)")
    p.add_argument("--answers", action="append", default=[], help="answer file (repeatable)")
    p.add_argument("--baseline", help="answer file of the baseline model (pairwise)")
    p.add_argument("--judge", help="litellm model of the judge")
    p.add_argument("--api-base", dest="api_base")
    p.add_argument("--api-key", dest="api_key")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--labels", action="append", default=[], help="labels for the agreement audit (repeatable)")
    p.add_argument("--parse-retries", dest="parse_retries", type=int)
    p.add_argument("--cache-dir", dest="cache_dir")
    p.add_argument("--limit", type=int)
    p.add_argument("--out", help="output folder")
    add_set_option(p)
    p.set_defaults(func=_grade)

    p = jsub.add_parser("harness", help="multiple-choice benchmarks through lm-evaluation-harness (extra [harness])")
    p.add_argument("config", nargs="?")
    p.add_argument("--model", help="model folder, tiny, embedded or hub id")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks")
    p.add_argument("--include-path", dest="include_path", help="folder of local task YAMLs")
    p.add_argument("--num-fewshot", dest="num_fewshot", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device")
    p.add_argument("--out")
    add_set_option(p)
    p.set_defaults(func=_harness)

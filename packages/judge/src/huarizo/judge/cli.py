"""`huarizo judge answer | grade | score | harness`: options generated from the configs (file < `--set` < flags)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from huarizo.formats import add_config_options, config_from_args

_ENDPOINT = ["model", "api_base", "api_key_env", "concurrency", "request_timeout", "max_retries", "cache_dir"]
_ANSWER = ["questions", "out", "model_id", "max_tokens", "temperature", "system", "template", "limit"]
_GRADE = [
    "mode",
    "questions",
    "references",
    "answers",
    "baseline",
    "template",
    "verdict",
    "top_logprobs",
    "parse_retries",
    "temperature",
    "retry_temperature",
    "max_tokens",
    "labels",
    "instruction_difficulty",
    "bootstrap",
    "seed",
    "limit",
    "plots",
    "out",
]
_SCORE = ["out", "questions", "baseline", "labels", "instruction_difficulty", "bootstrap", "seed", "plots"]


def _legacy(parser: argparse.ArgumentParser, section: str, model_flag: str) -> None:
    """The flags of huarizo-judge 0.1 (short names for the endpoint section), kept working."""
    parser.add_argument(model_flag, dest=f"cfg:{section}.model", metavar="MODEL", help=f"short for --{section}-model")
    for name, metavar in (("api_base", "URL"), ("concurrency", "N"), ("cache_dir", "DIR")):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=f"cfg:{section}.{name}", metavar=metavar, help=f"short for --{section}-{flag[2:]}"
        )
    parser.add_argument(
        "--api-key",
        dest="api_key",
        metavar="KEY",
        help=f"deprecated: put the key in an environment variable and pass its name with --{section}-api-key-env "
        "(the key given here is used for this run and never written)",
    )


def _key_from_flag(args: argparse.Namespace, section: str) -> None:
    """`--api-key KEY`: handed to the client through this process's environment, so no file ever holds it."""
    if args.api_key:
        name = f"HUARIZO_{section.upper()}_API_KEY"
        os.environ[name] = args.api_key
        setattr(args, f"cfg:{section}.api_key_env", name)


def _answer(args: argparse.Namespace) -> int:
    from huarizo.judge.answer import answer
    from huarizo.judge.config import AnswerConfig

    _key_from_flag(args, "endpoint")
    cfg = config_from_args(AnswerConfig, args)
    r = answer(cfg)
    c = r.counts
    print(
        f"answers in {cfg.out}: {c['answered']} answered, {c['kept']} kept from before, {c['replaced']} moved aside "
        f"(another fingerprint); {c['asked']} requests asked, {c['cached']} from the cache"
    )
    return 0


def _print_grade(s: dict[str, Any]) -> None:
    read = ", ".join(f"{n} by {way}" for way, n in sorted(s["verdicts_read"].items())) or "none"
    print(f"{s['n']} of {s['items']} items judged (verdicts read: {read})")
    if s["mode"] == "pairwise":
        for p in s["pairs"]:
            rate = "n/a"
            if p["win_rate"] is not None:
                se = "" if p["standard_error"] is None else f" ± {p['standard_error']:.3f}"
                rate = "{:.3f}{} [{:.3f}, {:.3f}]".format(p["win_rate"], se, *p["win_rate_ci"])
            print(f"{p['model']} vs {p['opponent']}: win rate {rate} ({p['wins']}W {p['ties']}T {p['losses']}L)")
    else:
        for m, v in s["models"].items():
            print(f"{m}: mean score {v['mean']} over {v['n']} ({v['errors']} errors)")
    a = s["audit"]
    print(f"audit: position consistency {a['position_consistency']}, prefers longer {a['prefers_longer']}")
    lab = s.get("label_agreement")
    if lab:
        print(
            f"agreement with labels: {_share(lab, 'with_ties')} with ties ({lab['n']} matched), "
            f"{_share(lab, 'without_ties')} without ({lab['n_decided']} decided by both)"
        )
        for w in lab["win_rates"]:
            print(
                f"  {w['model']} vs {w['opponent']}: labels' win rate {w['win_rate']:.3f} [{{:.3f}}, {{:.3f}}]".format(
                    *w["win_rate_ci"]
                )
                + f", the judge's {w['judge_win_rate']:.3f} "
                + "[{:.3f}, {:.3f}]".format(*w["judge_win_rate_ci"])
                + f" ({w['labels']} labels on {w['questions']} questions)"
            )


def _share(lab: dict[str, Any], kind: str) -> str:
    value, ci = lab[f"agreement_{kind}"], lab[f"agreement_{kind}_ci"]
    return "n/a" if value is None else "{:.3f} [{:.3f}, {:.3f}]".format(value, *ci)


def _grade(args: argparse.Namespace) -> int:
    from huarizo.judge.config import GradeConfig
    from huarizo.judge.grade import grade
    from huarizo.judge.results import GradeResult, JudgeIncomplete

    _key_from_flag(args, "judge")
    cfg = config_from_args(GradeConfig, args)
    try:
        result = grade(cfg)
    except JudgeIncomplete as exc:
        if isinstance(exc.result, GradeResult):
            _print_grade(exc.result.summary)
        raise
    _print_grade(result.summary)
    print(f"wrote {result.out}/summary.json, judgments.jsonl, report.md")
    return 0


def _score(args: argparse.Namespace) -> int:
    from huarizo.judge.config import ScoreConfig
    from huarizo.judge.score import score

    result = score(config_from_args(ScoreConfig, args))
    s = result.summary
    for path, src in s["sources"].items():
        print(f"{path}: {src['records']} records ({src['kind']})")
    _print_grade(s)
    print(f"wrote {result.out}/summary.json, judgments.jsonl, report.md")
    return 0


def _harness(args: argparse.Namespace) -> int:
    from huarizo.judge.config import HarnessConfig
    from huarizo.judge.harness import harness

    cfg = config_from_args(HarnessConfig, args)
    for task, metrics in harness(cfg).items():
        print(task, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def register(sub: Any) -> None:
    """Register `huarizo judge` and its subcommands."""
    from huarizo.judge.config import AnswerConfig, GradeConfig, HarnessConfig, ScoreConfig

    judge = sub.add_parser("judge", help="answer question sets, grade answers with an LLM judge, run benchmarks")
    jsub = judge.add_subparsers(dest="judge_command", metavar="SUBCOMMAND", required=True)

    p = jsub.add_parser("answer", help="answer a question set with any litellm model (cached, resumable)")
    add_config_options(p, AnswerConfig, [f"endpoint.{f}" for f in _ENDPOINT] + _ANSWER)
    _legacy(p, "endpoint", "--model")
    p.set_defaults(func=_answer)

    p = jsub.add_parser("grade", help="grade answers with an LLM judge: single ratings or pairwise, both orders")
    add_config_options(p, GradeConfig, [f"judge.{f}" for f in _ENDPOINT] + _GRADE)
    _legacy(p, "judge", "--judge")
    p.set_defaults(func=_grade)

    p = jsub.add_parser(
        "score", help="score existing judgments (AlpacaEval, FastChat, Huarizo, arena votes): summary and report"
    )
    add_config_options(p, ScoreConfig, _SCORE, positional="files")
    p.set_defaults(func=_score)

    p = jsub.add_parser("harness", help="multiple-choice benchmarks through lm-evaluation-harness (extra [harness])")
    add_config_options(
        p, HarnessConfig, ["model", "tasks", "include_path", "num_fewshot", "limit", "batch_size", "device", "out"]
    )
    p.set_defaults(func=_harness)

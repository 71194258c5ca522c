"""Hugging Face `evaluate` modules shipped with huarizo-judge, loadable offline by path:

    import evaluate
    from huarizo.judge import metric_path
    rouge = evaluate.load(metric_path("rouge_l"))

`rouge_l` (ROUGE-L F1 on lower-cased word tokens), `exact_match` (normalised exact match, e.g. classification
labels) and `judge_win_rate` (win rate from judge verdicts asked in both orders).
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("rouge_l", "exact_match", "judge_win_rate")


def metric_path(name: str) -> str:
    """The folder of a shipped metric, for `evaluate.load`."""
    if name not in METRICS:
        from huarizo.formats import HuarizoError

        raise HuarizoError(f"unknown metric {name!r}; shipped: {', '.join(METRICS)}")
    return str(Path(__file__).parent / name)

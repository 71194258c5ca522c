"""Statistics of judgments: win rates with standard errors and bootstrap intervals, the length-adjusted win rate,
AlpacaEval's length-controlled win rate formula, Bradley-Terry ratings, and agreement with labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean: the sample standard deviation (n - 1) over sqrt(n), as AlpacaEval reports it
    (None for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None


def bootstrap_ci(
    values: Sequence[float],
    groups: Sequence[str] | None = None,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float]:
    """Percentile bootstrap interval of the mean of `values` ([nan, nan] when empty). With `groups` (one key per
    value), whole groups are resampled: the votes or labels of one question stay together, as they are not
    independent."""
    if len(values) == 0:
        return [math.nan, math.nan]
    if groups is None:  # each value its own group, in order
        sums, counts = np.asarray(values, dtype=float), np.ones(len(values))
    else:
        index = {k: i for i, k in enumerate(sorted(set(groups)))}
        sums, counts = np.zeros(len(index)), np.zeros(len(index))
        for v, g in zip(values, groups, strict=True):
            sums[index[g]] += v
            counts[index[g]] += 1
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(n, len(sums)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def mean_estimate(
    values: Sequence[float], *, bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """`{mean, ci, standard_error, n}` of per-question values (the interval: a percentile bootstrap; the standard
    error of one value: 0)."""
    if len(values) == 0:
        return {"mean": None, "ci": None, "standard_error": None, "n": 0}
    return {
        "mean": float(np.mean(values)),
        "ci": bootstrap_ci(values, n=bootstrap, seed=seed, level=level),
        "standard_error": standard_error(values) or 0.0,
        "n": len(values),
    }


def _logistic_fit(x: np.ndarray, y: np.ndarray, ridge: np.ndarray, iters: int = 50) -> np.ndarray:
    """Logistic regression with soft targets y in [0, 1] and a ridge penalty per coefficient (Newton steps)."""
    beta = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + ridge * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(ridge) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def length_adjusted_win_rate(outcomes: Sequence[float], length_diffs: Sequence[float]) -> float | None:
    """Win rate at equal length, from this run's comparisons alone.

    Fits P(win) = sigmoid(b0 + b1 * tanh(d / sd(d))) on the outcomes (1 win, 0.5 tie, 0 loss, or between) and the
    length differences d (model minus opponent, characters) and returns sigmoid(b0). Not AlpacaEval's
    length-controlled win rate, which also fits each instruction's difficulty across many models
    (`alpaca_eval_length_controlled`). A small ridge keeps a judge that only looks at length finite.
    """
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    if y.size == 0:
        return None
    sd = d.std()
    z = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    x = np.column_stack([np.ones_like(z), z])
    beta = _logistic_fit(x, y, ridge=np.array([1e-3, 1.0]))
    return float(1 / (1 + math.exp(-beta[0])))


def alpaca_eval_length_controlled(
    outcomes: Sequence[float], length_diffs: Sequence[float], difficulties: Sequence[float]
) -> float | None:
    """AlpacaEval's length-controlled win rate formula, fitted on one model's comparisons.

    The GLM of AlpacaEval 2: P(win) = sigmoid(w_len * tanh(d / sd(d)) + w_diff * difficulty + w_model), no
    intercept, with the instruction difficulties AlpacaEval fitted across its leaderboard; the win rate predicted
    at d = 0, averaged over the instructions. AlpacaEval also regularises the fit toward its own "gamed" baselines
    and picks an L1 strength by cross-validation; this fit has neither (only a negligible ridge), so on the same
    annotations it can differ from the leaderboard's figure.
    """
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    diff = np.asarray(difficulties, dtype=float)
    if y.size < 2:
        return None
    sd = d.std(ddof=1)
    z = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    beta = _logistic_fit(np.column_stack([z, diff, np.ones_like(z)]), y, ridge=np.full(3, 1e-6))
    return float(np.mean(1 / (1 + np.exp(-(beta[1] * diff + beta[2])))))


def bradley_terry(
    models: Sequence[str], games: Sequence[tuple[str, str, float]], *, ridge: float = 1e-2
) -> dict[str, float]:
    """Bradley-Terry strengths on the Elo scale (mean 1000, 400 points = 10:1 odds) from (a, b, score of a) games."""
    idx = {m: i for i, m in enumerate(models)}
    if not games:
        return dict.fromkeys(models, 1000.0)
    x = np.zeros((len(games), len(models)))
    y = np.zeros(len(games))
    for k, (a, b, s) in enumerate(games):
        x[k, idx[a]], x[k, idx[b]], y[k] = 1.0, -1.0, s
    beta = _logistic_fit(x, y, ridge=np.full(len(models), ridge))
    beta -= beta.mean()
    return {m: float(1000 + 400 / math.log(10) * beta[idx[m]]) for m in models}


def bradley_terry_ci(
    models: Sequence[str],
    games_by_question: dict[str, list[tuple[str, str, float]]],
    *,
    n: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Bradley-Terry ratings with percentile bootstrap intervals and standard errors (questions resampled)."""
    keys = sorted(games_by_question)
    point = bradley_terry(models, [g for k in keys for g in games_by_question[k]])
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(n if keys else 0):
        pick = rng.integers(0, len(keys), size=len(keys))
        r = bradley_terry(models, [g for i in pick for g in games_by_question[keys[i]]])
        for m in models:
            samples[m].append(r[m])
    out = {}
    for m in models:
        lo, hi = np.percentile(samples[m], [2.5, 97.5]) if samples[m] else (math.nan, math.nan)
        se = float(np.std(samples[m], ddof=1)) if len(samples[m]) > 1 else None
        out[m] = {"rating": point[m], "standard_error": se, "ci": [float(lo), float(hi)]}
    return out


def agreement(
    pairs: Sequence[tuple[str, str]], groups: Sequence[str] | None = None, *, n: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Agreement of judge verdicts with labels, each 'a', 'b' or 'tie': with ties (3-way) and without (both decided),
    each with a 95% bootstrap interval over `groups` (the question of each pair; default: each pair its own)."""
    keys = list(groups) if groups is not None else [str(i) for i in range(len(pairs))]
    same = [float(j == lab) for j, lab in pairs]
    decided = [(float(j == lab), g) for (j, lab), g in zip(pairs, keys, strict=True) if "tie" not in (j, lab)]
    return {
        "n": len(pairs),
        "agreement_with_ties": sum(same) / len(same) if same else None,
        "agreement_with_ties_ci": bootstrap_ci(same, keys, n=n, seed=seed) if same else None,
        "n_decided": len(decided),
        "agreement_without_ties": sum(v for v, _ in decided) / len(decided) if decided else None,
        "agreement_without_ties_ci": bootstrap_ci([v for v, _ in decided], [g for _, g in decided], n=n, seed=seed)
        if decided
        else None,
        "judge_ties": sum(j == "tie" for j, _ in pairs),
        "label_ties": sum(lab == "tie" for _, lab in pairs),
    }

"""The content of `summary.json`: win rates (with standard errors and bootstrap intervals), ratings, scores and the
judge audit, from a list of judgments however they were made (`grade`) or read (`score`)."""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from huarizo.formats import HuarizoError
from huarizo.judge.judgments import Judgment, outcome
from huarizo.judge.stats import (
    agreement,
    alpaca_eval_length_controlled,
    bootstrap_ci,
    bradley_terry_ci,
    length_adjusted_win_rate,
    standard_error,
)

if TYPE_CHECKING:
    from huarizo.judge.labels import Label

SAMPLE_REPLIES = 2
"""Replies of items without a verdict quoted in the summary and the report."""


@dataclass(frozen=True)
class SummaryOptions:
    """What a summary says about its run, and how its intervals are drawn."""

    mode: str
    judge: str
    questions: str | None
    baseline: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    difficulty: dict[int, float] | None = None


def read_difficulty(path: str | None) -> dict[int, float] | None:
    """AlpacaEval's `instruction_difficulty.csv`: the instruction's index in the evaluation set -> difficulty."""
    if path is None:
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        col = rows[0].index("instruction_difficulty")
        return {int(r[0]): float(r[col]) for r in rows[1:] if r}
    except (OSError, ValueError, IndexError) as exc:
        raise HuarizoError(
            f"{path}: not an instruction difficulty file (index, instruction_difficulty): {exc}"
        ) from None


def _frac(num: int, den: int) -> float | None:
    return num / den if den else None


def way_of(j: Judgment) -> str | None:
    """How a judgment's verdicts were read: `logprobs`, `text`, `annotation`, `mixed`, or None without one."""
    ways = {w for w in j.read if w is not None}
    if j.error is not None or not ways:
        return None
    return ways.pop() if len(ways) == 1 else "mixed"


def rates(js: Sequence[Judgment], model: str | None, opts: SummaryOptions) -> dict[str, Any]:
    """Wins, ties, losses and the win rate of `model` (None: of each comparison's `model_a`) over the settled
    comparisons in `js`, with its standard error, bootstrap interval and length-adjusted (and, given difficulties,
    length-controlled) win rate (None where the answers' lengths are unknown)."""
    ok = [j for j in js if j.preference is not None]
    out = [outcome(j, model or j.model_a or "") for j in ok]
    wins, ties = sum(o > 0.5 for o in out), sum(o == 0.5 for o in out)
    diffs = [(j.len_a - j.len_b) * (1 if model in (None, j.model_a) else -1) for j in ok]
    lengths = any(j.len_a or j.len_b for j in ok)
    return {
        "n": len(ok),
        "wins": wins,
        "losses": len(ok) - wins - ties,
        "ties": ties,
        "win_rate": float(np.mean(out)) if ok else None,
        "standard_error": standard_error(out),
        "win_rate_ci": bootstrap_ci(out, n=opts.bootstrap, seed=opts.seed) if ok else None,
        "length_adjusted_win_rate": length_adjusted_win_rate(out, diffs) if lengths else None,
        "length_controlled_win_rate": _length_controlled(ok, out, diffs, opts.difficulty) if lengths else None,
    }


def _length_controlled(
    ok: Sequence[Judgment], out: list[float], diffs: list[int], difficulty: dict[int, float] | None
) -> float | None:
    """AlpacaEval's formula, when every comparison's instruction has a difficulty."""
    values = [(difficulty or {}).get(j.index, math.nan) if j.index is not None else math.nan for j in ok]
    if not ok or any(math.isnan(v) for v in values):
        return None
    return alpaca_eval_length_controlled(out, diffs, values)


def audit_pairwise(js: Sequence[Judgment]) -> dict[str, Any]:
    """Position consistency (overall and for each way verdicts were read), order flips, first-position and length
    preference of pairwise judgments."""
    ok = [j for j in js if j.preference is not None]
    both = [j for j in ok if j.consistent is not None]
    raw = [v for j in ok for v in j.verdicts if v in ("A", "B")]
    decided = [j for j in ok if j.winner not in (None, "tie") and j.len_a != j.len_b]
    longer = sum((j.winner == j.model_a) == (j.len_a > j.len_b) for j in decided)
    by_way: dict[str, Any] = {}
    for way in sorted({w for j in both if (w := way_of(j))}):
        sel = [j for j in both if way_of(j) == way]
        by_way[way] = {"n": len(sel), "position_consistency": _frac(sum(bool(j.consistent) for j in sel), len(sel))}
    return {
        "unparsed_replies": sum(len(j.replies) - sum(w is not None for w in j.read) for j in js),
        "inconsistent": sum(j.consistent is False for j in both),
        "position_consistency": _frac(sum(bool(j.consistent) for j in both), len(both)),
        "position_consistency_by_reading": by_way,
        "first_position_preference": _frac(sum(v == "A" for v in raw), len(raw)),
        "prefers_longer": _frac(longer, len(decided)),
        "errors": sum(j.error is not None for j in js),
    }


def audit_single(js: Sequence[Judgment]) -> dict[str, Any]:
    """Length preference of single ratings: over answers to the same question, how often the longer scores higher."""
    ok = [j for j in js if j.score is not None]
    groups: dict[tuple[str, int], list[Judgment]] = defaultdict(list)
    for j in ok:
        groups[(j.question_id, j.turn)].append(j)
    longer = decided = 0
    for g in groups.values():
        for x, y in ((x, y) for i, x in enumerate(g) for y in g[i + 1 :]):
            if x.score != y.score and x.len_a != y.len_a:
                decided += 1
                longer += (x.score > y.score) == (x.len_a > y.len_a)  # type: ignore[operator]
    corr = None
    lengths, scores = [j.len_a for j in ok], [float(j.score or 0) for j in ok]
    if len(ok) > 2 and np.std(lengths) > 0 and np.std(scores) > 0:
        corr = float(np.corrcoef(lengths, scores)[0, 1])
    return {
        "unparsed_replies": sum(len(j.replies) - sum(w is not None for w in j.read) for j in js),
        "position_consistency": None,
        "prefers_longer": _frac(longer, decided),
        "score_length_correlation": corr,
        "errors": sum(j.error is not None for j in js),
    }


def _side(winner: str, lab: Label) -> str:
    return "1" if winner == lab.model_1 else "2" if winner == lab.model_2 else "tie"


def _label_agreement(js: Sequence[Judgment], labels: Sequence[Label], opts: SummaryOptions) -> dict[str, Any] | None:
    """Agreement of the judge with the labels (with and without ties, with intervals over questions), the labels'
    own win rates next to the judge's on the same items, and the agreement between people labelling the same
    comparison."""
    if not labels:
        return None
    pairs: list[tuple[str, str]] = []
    groups: list[str] = []
    matched: list[tuple[Judgment, Label]] = []
    if js and js[0].mode == "pairwise":
        by_key = {(j.question_id, frozenset((j.model_a, j.model_b))): j for j in js if j.turn == 0 and j.winner}
        for lab in labels:
            j = by_key.get((lab.question_id, frozenset((lab.model_1, lab.model_2))))
            if j is not None and j.winner is not None:
                pairs.append((_side(j.winner, lab), _side(lab.winner, lab)))
                groups.append(lab.question_id)
                matched.append((j, lab))
    else:
        score = {(j.question_id, j.model): j.score for j in js if j.turn == 0 and j.score is not None}
        for lab in labels:
            s1, s2 = score.get((lab.question_id, lab.model_1)), score.get((lab.question_id, lab.model_2))
            if s1 is not None and s2 is not None:
                pairs.append(("1" if s1 > s2 else "2" if s2 > s1 else "tie", _side(lab.winner, lab)))
                groups.append(lab.question_id)
    return {
        "labels": len(labels),
        "from_people": all(lab.voter is not None for lab in labels),
        **agreement(pairs, groups, n=opts.bootstrap, seed=opts.seed),
        "win_rates": _label_win_rates(matched, opts),
        "between_people": _between_people(labels, opts),
    }


def _label_win_rates(matched: Sequence[tuple[Judgment, Label]], opts: SummaryOptions) -> list[dict[str, Any]]:
    """For each compared pair (as the judge's comparisons have it: the graded model first), the labels' win rate
    (ties half; an interval resampling questions, whose several votes stay together) and the judge's on the same
    questions."""
    by_pair: dict[tuple[str, str], list[tuple[Judgment, Label]]] = defaultdict(list)
    for j, lab in matched:
        by_pair[(j.model_a or "", j.model_b or "")].append((j, lab))
    rows = []
    for (a, b), items in sorted(by_pair.items()):
        people = [1.0 if lab.winner == a else 0.0 if lab.winner == b else 0.5 for _, lab in items]
        questions = [lab.question_id for _, lab in items]
        judge = [outcome(j, a) for j in {id(j): j for j, _ in items}.values()]
        rows.append(
            {
                "model": a,
                "opponent": b,
                "labels": len(people),
                "questions": len(set(questions)),
                "wins": sum(x == 1.0 for x in people),
                "ties": sum(x == 0.5 for x in people),
                "losses": sum(x == 0.0 for x in people),
                "win_rate": float(np.mean(people)),
                "standard_error": standard_error(people),
                "win_rate_ci": bootstrap_ci(people, questions, n=opts.bootstrap, seed=opts.seed),
                "judge_win_rate": float(np.mean(judge)),
                "judge_standard_error": standard_error(judge),
                "judge_win_rate_ci": bootstrap_ci(judge, n=opts.bootstrap, seed=opts.seed),
            }
        )
    return rows


def _between_people(labels: Sequence[Label], opts: SummaryOptions) -> dict[str, Any] | None:
    """How often two people labelling the same comparison agree (every pair of their labels), as MT-bench reports
    human-human agreement next to the judge's; None without two people on one comparison."""
    same: dict[tuple[str, frozenset[str]], list[Label]] = defaultdict(list)
    for lab in labels:
        if lab.voter is not None:
            same[(lab.question_id, frozenset((lab.model_1, lab.model_2)))].append(lab)
    pairs: list[tuple[str, str]] = []
    groups: list[str] = []
    for (qid, _), labs in same.items():
        for x, y in itertools.combinations(labs, 2):
            if x.voter != y.voter:
                pairs.append((_side(x.winner, x), _side(y.winner, x)))
                groups.append(qid)
    if not pairs:
        return None
    voters = len({lab.voter for lab in labels if lab.voter is not None})
    return {"voters": voters, **agreement(pairs, groups, n=opts.bootstrap, seed=opts.seed)}


def _no_verdict(js: Sequence[Judgment]) -> dict[str, Any]:
    """How many items got no verdict, why (grouped), and a few of the judge's replies to them."""
    failed = [j for j in js if j.error is not None]
    reasons = Counter(str(j.error).split(":")[0].split(" (")[0] for j in failed)
    samples = [r[:500] for j in failed for r in j.replies if r.strip()][:SAMPLE_REPLIES]
    return {"items": len(failed), "reasons": dict(reasons.most_common()), "samples": samples}


def _read_counts(js: Sequence[Judgment]) -> dict[str, int]:
    return dict(Counter(w for j in js for w in j.read if w is not None))


def summarize(js: Sequence[Judgment], opts: SummaryOptions, labels: Sequence[Label] = ()) -> dict[str, Any]:
    """The content of `summary.json`."""
    out: dict[str, Any] = {
        "mode": opts.mode,
        "judge": opts.judge,
        "questions": opts.questions,
        "baseline": opts.baseline,
        "items": len(js),
        "verdicts_read": _read_counts(js),
    }
    out.update(_pairwise(js, opts) if opts.mode == "pairwise" else _single(js, opts))
    out["label_agreement"] = _label_agreement(js, labels, opts)
    out["no_verdict"] = _no_verdict(js)
    return out


def _pairwise(js: Sequence[Judgment], opts: SummaryOptions) -> dict[str, Any]:
    players = sorted({m for j in js for m in (j.model_a, j.model_b) if m})
    pairs = []
    for a, b in sorted({(j.model_a or "", j.model_b or "") for j in js}):
        sel = [j for j in js if (j.model_a, j.model_b) == (a, b)]
        pairs.append({"model": a, "opponent": b, **rates(sel, a, opts), **audit_pairwise(sel)})
    models = {}
    for m in (p for p in players if p != opts.baseline):
        sel = [j for j in js if m in (j.model_a, j.model_b)]
        models[m] = {**rates(sel, m, opts), **audit_pairwise(sel), "win_rate_by_category": _by_category(sel, m)}
    games: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for j in js:
        if j.preference is not None and j.model_a and j.model_b:
            games[j.question_id].append((j.model_a, j.model_b, j.preference))
    return {
        # the top level: every comparison from the side of its first-listed model (the model against the baseline)
        **rates(js, None, opts),
        **audit_pairwise(js),
        "models": models,
        "pairs": pairs,
        "bradley_terry": bradley_terry_ci(players, games, n=min(opts.bootstrap, 200), seed=opts.seed)
        if len(players) > 1 and games
        else None,
        "audit": audit_pairwise(js),
    }


def _by_category(js: Sequence[Judgment], model: str) -> dict[str, float]:
    cats: dict[str, list[float]] = defaultdict(list)
    for j in js:
        if j.preference is not None:
            cats[j.category].append(outcome(j, model))
    return {c: float(np.mean(v)) for c, v in sorted(cats.items())}


def _single(js: Sequence[Judgment], opts: SummaryOptions) -> dict[str, Any]:
    per_model: dict[str, Any] = {}
    for m in sorted({j.model for j in js if j.model}):
        sel = [j for j in js if j.model == m]
        scores = [j.score for j in sel if j.score is not None]
        cats: dict[str, list[float]] = defaultdict(list)
        turns: dict[int, list[float]] = defaultdict(list)
        for j in sel:
            if j.score is not None:
                cats[j.category].append(j.score)
                turns[j.turn + 1].append(j.score)
        per_model[m] = {
            "n": len(scores),
            "mean": float(np.mean(scores)) if scores else None,
            "standard_error": standard_error(scores),
            "mean_ci": bootstrap_ci(scores, n=opts.bootstrap, seed=opts.seed) if scores else None,
            "by_category": {c: float(np.mean(v)) for c, v in sorted(cats.items())},
            "by_turn": {str(t): float(np.mean(v)) for t, v in sorted(turns.items())},
            "errors": sum(j.error is not None for j in sel),
        }
    audit = audit_single(js)
    return {"n": sum(j.score is not None for j in js), "errors": audit["errors"], "models": per_model, "audit": audit}

"""Summaries of judgments (`summary.json`) and the Markdown report with PNG plots (`report.md`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from huarizo.judge.stats import agreement, bootstrap_ci, bradley_terry_ci, length_controlled_win_rate

if TYPE_CHECKING:
    from huarizo.judge.grade import GradeConfig, Judgment
    from huarizo.judge.labels import Label


def _frac(num: int, den: int) -> float | None:
    return num / den if den else None


def pair_stats(js: Sequence[Judgment], model: str, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win/tie/loss of `model` over comparisons it took part in, with the audit numbers of those comparisons."""
    ok = [j for j in js if j.error is None]
    wins = sum(j.winner == model for j in ok)
    ties = sum(j.winner == "tie" for j in ok)
    outcomes = [1.0 if j.winner == model else 0.5 if j.winner == "tie" else 0.0 for j in ok]
    diffs = [(j.len_a - j.len_b) * (1 if j.model_a == model else -1) for j in ok]
    return {
        "n": len(ok),
        "wins": wins,
        "losses": len(ok) - wins - ties,
        "ties": ties,
        "win_rate": float(np.mean(outcomes)) if ok else None,
        "win_rate_ci": bootstrap_ci(outcomes, n=bootstrap, seed=seed) if ok else None,
        "lc_win_rate": length_controlled_win_rate(outcomes, diffs),
        **audit_pairwise(js),
    }


def audit_pairwise(js: Sequence[Judgment]) -> dict[str, Any]:
    """Position consistency, order flips, first-position preference and length preference of pairwise judgments."""
    ok = [j for j in js if j.error is None]
    consistent = sum(bool(j.consistent) for j in ok)
    raw = [v for j in ok for v in j.verdicts if v in ("A", "B")]
    decided = [j for j in ok if j.winner not in (None, "tie") and j.len_a != j.len_b]
    longer = sum((j.winner == j.model_a) == (j.len_a > j.len_b) for j in decided)
    return {
        "unparsed_replies": sum(len(j.replies) - sum(v is not None for v in j.verdicts) for j in js),
        "inconsistent": len(ok) - consistent,
        "position_consistency": _frac(consistent, len(ok)),
        "first_position_preference": _frac(sum(v == "A" for v in raw), len(raw)),
        "prefers_longer": _frac(longer, len(decided)),
        "errors": sum(j.error is not None for j in js),
    }


def audit_single(js: Sequence[Judgment]) -> dict[str, Any]:
    """Length preference of single ratings: over answers to the same question, how often the longer scores higher."""
    ok = [j for j in js if j.error is None and j.score is not None]
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
        "unparsed_replies": sum(len(j.replies) - (j.score is not None) for j in js),
        "position_consistency": None,
        "prefers_longer": _frac(longer, decided),
        "score_length_correlation": corr,
        "errors": sum(j.error is not None for j in js),
    }


def _label_agreement(js: Sequence[Judgment], labels: Sequence[Label]) -> dict[str, Any] | None:
    if not labels:
        return None
    pairs: list[tuple[str, str]] = []
    if js and js[0].mode == "pairwise":
        by_key = {(j.question_id, frozenset((j.model_a, j.model_b))): j for j in js if j.turn == 0 and j.error is None}
        for lab in labels:
            j = by_key.get((lab.question_id, frozenset((lab.model_1, lab.model_2))))
            if j is not None and j.winner is not None:
                pairs.append((_side(j.winner, lab), _side(lab.winner, lab)))
    else:
        score = {(j.question_id, j.model): j.score for j in js if j.turn == 0 and j.score is not None}
        for lab in labels:
            s1, s2 = score.get((lab.question_id, lab.model_1)), score.get((lab.question_id, lab.model_2))
            if s1 is not None and s2 is not None:
                mine = "1" if s1 > s2 else "2" if s2 > s1 else "tie"
                pairs.append((mine, _side(lab.winner, lab)))
    return {"labels": len(labels), **agreement(pairs)}


def _side(winner: str, lab: Label) -> str:
    return "1" if winner == lab.model_1 else "2" if winner == lab.model_2 else "tie"


def summarize(
    cfg: GradeConfig, judgments: Sequence[Judgment], baseline: str | None, labels: Sequence[Label] = ()
) -> dict[str, Any]:
    """The content of `summary.json`."""
    out: dict[str, Any] = {"mode": cfg.mode, "judge": cfg.judge, "questions": cfg.questions, "baseline": baseline}
    if cfg.mode == "pairwise":
        out.update(_summarize_pairwise(cfg, judgments, baseline))
    else:
        out.update(_summarize_single(cfg, judgments))
    out["label_agreement"] = _label_agreement(judgments, labels)
    return out


def _summarize_pairwise(cfg: GradeConfig, js: Sequence[Judgment], baseline: str | None) -> dict[str, Any]:
    kw = {"bootstrap": cfg.bootstrap, "seed": cfg.seed}
    players = sorted({m for j in js for m in (j.model_a, j.model_b) if m})
    models = [m for m in players if m != baseline]
    per_pair = []
    for a, b in sorted({(j.model_a or "", j.model_b or "") for j in js}):
        sel = [j for j in js if (j.model_a, j.model_b) == (a, b)]
        per_pair.append({"model": a, "opponent": b, **pair_stats(sel, a, **kw)})
    per_model = {}
    for m in models:
        sel = [j for j in js if m in (j.model_a, j.model_b)]
        stats = pair_stats(sel, m, **kw)
        cats: dict[str, list[float]] = defaultdict(list)
        for j in sel:
            if j.error is None:
                cats[j.category].append(1.0 if j.winner == m else 0.5 if j.winner == "tie" else 0.0)
        stats["win_rate_by_category"] = {c: float(np.mean(v)) for c, v in sorted(cats.items())}
        per_model[m] = stats
    games: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for j in js:
        if j.error is None and j.model_a and j.model_b:
            s = 1.0 if j.winner == j.model_a else 0.5 if j.winner == "tie" else 0.0
            games[j.question_id].append((j.model_a, j.model_b, s))
    # the top level: every comparison from the side of its first-listed model (the model graded against a baseline)
    side_a = [1.0 if j.winner == j.model_a else 0.5 if j.winner == "tie" else 0.0 for j in js if j.error is None]
    wins, ties = sum(x == 1.0 for x in side_a), sum(x == 0.5 for x in side_a)
    top = {
        "n": len(side_a),
        "wins": wins,
        "losses": len(side_a) - wins - ties,
        "ties": ties,
        "win_rate": float(np.mean(side_a)) if side_a else None,
        "win_rate_ci": bootstrap_ci(side_a, n=cfg.bootstrap, seed=cfg.seed) if side_a else None,
        "lc_win_rate": length_controlled_win_rate(side_a, [j.len_a - j.len_b for j in js if j.error is None]),
        **audit_pairwise(js),
    }
    return {
        **top,
        "models": per_model,
        "pairs": per_pair,
        "bradley_terry": bradley_terry_ci(players, games, n=min(cfg.bootstrap, 200), seed=cfg.seed)
        if len(players) > 1
        else None,
        "audit": audit_pairwise(js),
    }


def _summarize_single(cfg: GradeConfig, js: Sequence[Judgment]) -> dict[str, Any]:
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
            "mean_ci": bootstrap_ci(scores, n=cfg.bootstrap, seed=cfg.seed) if scores else None,
            "by_category": {c: float(np.mean(v)) for c, v in sorted(cats.items())},
            "by_turn": {str(t): float(np.mean(v)) for t, v in sorted(turns.items())},
            "errors": sum(j.error is not None for j in sel),
        }
    audit = audit_single(js)
    return {
        "n": sum(j.error is None for j in js),
        "errors": audit["errors"],
        "models": per_model,
        "audit": audit,
    }


# ---- the report --------------------------------------------------------------------------------------------------


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v, pct) for v in x) + "]"
    if isinstance(x, float):
        return f"{100 * x:.1f}%" if pct else f"{x:.2f}"
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def write_report(out: Path, s: dict[str, Any], *, plots: bool = True) -> Path:
    """Write `report.md` (and its PNG plots) from a summary; returns the report's path."""
    lines = [f"# Judge report: {s['mode']} grading by `{s['judge']}`", "", f"Questions: `{s['questions']}`"]
    if s.get("baseline"):
        lines.append(f"Baseline: `{s['baseline']}`")
    images: list[str] = []
    if s["mode"] == "pairwise":
        lines += ["", "## Win rates", ""]
        rows = [
            [
                p["model"],
                p["opponent"],
                str(p["n"]),
                str(p["wins"]),
                str(p["ties"]),
                str(p["losses"]),
                _fmt(p["win_rate"], True),
                _fmt(p["win_rate_ci"], True),
                _fmt(p["lc_win_rate"], True),
            ]
            for p in s["pairs"]
        ]
        lines += _table(["model", "opponent", "n", "wins", "ties", "losses", "win rate", "95% CI", "LC win rate"], rows)
        lines += ["", "Ties count half. LC: length-controlled (the preference regressed on the length difference)."]
        if len(s["models"]) > 1 or not s.get("baseline"):
            lines += ["", "### Each model against all its opponents", ""]
            rows = [
                [
                    m,
                    str(v["n"]),
                    str(v["wins"]),
                    str(v["ties"]),
                    str(v["losses"]),
                    _fmt(v["win_rate"], True),
                    _fmt(v["win_rate_ci"], True),
                ]
                for m, v in s["models"].items()
            ]
            lines += _table(["model", "n", "wins", "ties", "losses", "win rate", "95% CI"], rows)
        if s.get("bradley_terry"):
            lines += ["", "## Bradley-Terry ratings (Elo scale, 95% bootstrap interval)", ""]
            bt = sorted(s["bradley_terry"].items(), key=lambda kv: -kv[1]["rating"])
            lines += _table(
                ["model", "rating", "95% CI"],
                [[m, f"{v['rating']:.0f}", f"[{v['ci'][0]:.0f}, {v['ci'][1]:.0f}]"] for m, v in bt],
            )
        cats = sorted({c for v in s["models"].values() for c in v["win_rate_by_category"]})
        if cats:
            lines += ["", "## Win rate by category", ""]
            rows = [[m] + [_fmt(v["win_rate_by_category"].get(c), True) for c in cats] for m, v in s["models"].items()]
            lines += _table(["model", *cats], rows)
    else:
        lines += ["", "## Mean score (1-10)", ""]
        rows = [[m, str(v["n"]), _fmt(v["mean"]), _fmt(v["mean_ci"]), str(v["errors"])] for m, v in s["models"].items()]
        lines += _table(["model", "n", "mean", "95% CI", "errors"], rows)
        turns = sorted({t for v in s["models"].values() for t in v["by_turn"]})
        if len(turns) > 1:
            lines += ["", "### By turn", ""]
            rows = [[m] + [_fmt(v["by_turn"].get(t)) for t in turns] for m, v in s["models"].items()]
            lines += _table(["model", *[f"turn {t}" for t in turns]], rows)
        cats = sorted({c for v in s["models"].values() for c in v["by_category"]})
        lines += ["", "## Mean score by category", ""]
        rows = [[m] + [_fmt(v["by_category"].get(c)) for c in cats] for m, v in s["models"].items()]
        lines += _table(["model", *cats], rows)
    a = s["audit"]
    lines += ["", "## Judge audit", ""]
    audit_rows = [
        ["position consistency (same verdict in both orders)", _fmt(a.get("position_consistency"), True)],
        ["order flips (counted as ties)", _fmt(a.get("inconsistent"))],
        ["first-position preference (of decided verdicts)", _fmt(a.get("first_position_preference"), True)],
        ["prefers the longer answer (of decided verdicts)", _fmt(a.get("prefers_longer"), True)],
        ["score-length correlation", _fmt(a.get("score_length_correlation"))],
        ["replies without a verdict (asked again)", _fmt(a.get("unparsed_replies"))],
        ["errors (no verdict, or the request failed)", _fmt(a.get("errors"))],
    ]
    lines += _table(["measure", "value"], [r for r in audit_rows if r[1] != "–" or "consistency" in r[0]])
    if s["mode"] == "single":
        lines += ["", "Position consistency does not apply to single grading (one answer per request)."]
    lab = s.get("label_agreement")
    if lab:
        lines += ["", "### Agreement with labels", ""]
        lines += _table(
            ["labels", "matched", "agreement (with ties)", "decided by both", "agreement (without ties)"],
            [
                [
                    str(lab["labels"]),
                    str(lab["n"]),
                    _fmt(lab["agreement_with_ties"], True),
                    str(lab["n_decided"]),
                    _fmt(lab["agreement_without_ties"], True),
                ]
            ],
        )
    else:
        lines += ["", "No labels given (`--labels FILE`): agreement with human or reference labels not measured."]
    if s.get("harness"):
        lines += ["", "## lm-evaluation-harness", ""]
        rows = [[t, k, _fmt(v)] for t, ms in s["harness"].items() for k, v in ms.items()]
        lines += _table(["task", "metric", "value"], rows)
    u = s.get("usage")
    if u:
        cost = f"${u['cost']:.4f}" + (f" ({u['unpriced']} unpriced)" if u["unpriced"] else "")
        lines += [
            "",
            "## Cost",
            "",
            f"{u['requests']} requests ({u['cached']} from cache, {u['retries']} retried, {u['failures']} failed), "
            f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, {cost}.",
        ]
    if plots:
        images = make_plots(out, s)
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in images]
    path = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def make_plots(out: Path, s: dict[str, Any]) -> list[str]:
    """PNG plots of a summary (matplotlib, Agg backend); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)

    if s["mode"] == "pairwise":
        pairs = s["pairs"]
        labels = [f"{p['model']} vs {p['opponent']}" for p in pairs]
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(pairs)))
        left = np.zeros(len(pairs))
        for key, color in (("wins", "#4c9a2a"), ("ties", "#bbbbbb"), ("losses", "#c0392b")):
            vals = np.array([p[key] / p["n"] if p["n"] else 0 for p in pairs])
            ax.barh(labels, vals, left=left, color=color, label=key)
            left += vals
        ax.set_xlim(0, 1)
        ax.invert_yaxis()  # the first pair on top, as in the report's table
        ax.set_xlabel("fraction of comparisons")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("Win / tie / loss")
        save(fig, "win_tie_loss.png")

        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(pairs)))
        y = np.arange(len(pairs))
        wr = np.array([p["win_rate"] if p["win_rate"] is not None else np.nan for p in pairs])
        ci = np.array([p["win_rate_ci"] or [np.nan, np.nan] for p in pairs])
        ax.errorbar(wr, y, xerr=[wr - ci[:, 0], ci[:, 1] - wr], fmt="o", capsize=4, label="win rate (95% CI)")
        lc_rates = [p["lc_win_rate"] if p["lc_win_rate"] is not None else np.nan for p in pairs]
        ax.plot(lc_rates, y, "x", color="#d35400", label="length-controlled")
        ax.axvline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.set_title("Win rate")
        save(fig, "win_rate.png")

        if s.get("bradley_terry"):
            bt = sorted(s["bradley_terry"].items(), key=lambda kv: kv[1]["rating"])
            fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(bt)))
            r = np.array([v["rating"] for _, v in bt])
            c = np.array([v["ci"] for _, v in bt])
            ax.errorbar(r, range(len(bt)), xerr=[r - c[:, 0], c[:, 1] - r], fmt="o", capsize=4)
            ax.set_yticks(range(len(bt)), [m for m, _ in bt])
            ax.set_xlabel("Bradley-Terry rating (Elo scale)")
            ax.set_title("Ratings with 95% bootstrap intervals")
            save(fig, "bradley_terry.png")
    else:
        models = list(s["models"])
        cats = sorted({c for v in s["models"].values() for c in v["by_category"]})
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cats) + 2), 4))
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            heights = [s["models"][m]["by_category"].get(c, np.nan) for c in cats]
            ax.bar(np.arange(len(cats)) + i * width, heights, width, label=m)
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats, rotation=30, ha="right")
        ax.set_ylim(0, 10)
        ax.set_ylabel("mean score")
        if models:
            ax.legend(fontsize=8)
        ax.set_title("Mean single score by category")
        save(fig, "score_by_category.png")
    return names

"""PNG plots of a summary (matplotlib, Agg backend), drawn only from judged data: a pair or model with nothing judged
gets no bar, no point and no rating."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_plots(out: Path, s: dict[str, Any]) -> list[str]:
    """Draw the summary's plots into `out`; returns their file names."""
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
        pairs = [p for p in s["pairs"] if p["n"]]
        if pairs:
            save(_win_tie_loss(plt, pairs), "win_tie_loss.png")
            save(_win_rate(plt, pairs), "win_rate.png")
        if s.get("bradley_terry"):
            save(_bradley_terry(plt, s["bradley_terry"]), "bradley_terry.png")
    elif any(v["n"] for v in s["models"].values()):
        save(_scores(plt, s["models"]), "score_by_category.png")
    return names


def _label(p: dict[str, Any]) -> str:
    return f"{p['model']} vs {p['opponent']}"


def _win_tie_loss(plt: Any, pairs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(pairs)))
    labels = [_label(p) for p in pairs]
    left = np.zeros(len(pairs))
    for key, color in (("wins", "#4c9a2a"), ("ties", "#bbbbbb"), ("losses", "#c0392b")):
        vals = np.array([p[key] / p["n"] for p in pairs])
        ax.barh(labels, vals, left=left, color=color, label=key)
        left += vals
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # the first pair on top, as in the report's table
    ax.set_xlabel("fraction of comparisons")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Win / tie / loss")
    return fig


def _win_rate(plt: Any, pairs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(pairs)))
    y = np.arange(len(pairs))
    wr = np.array([p["win_rate"] for p in pairs])
    ci = np.array([p["win_rate_ci"] for p in pairs])
    ax.errorbar(wr, y, xerr=[wr - ci[:, 0], ci[:, 1] - wr], fmt="o", capsize=4, label="win rate (95% CI)")
    adjusted = [np.nan if p["length_adjusted_win_rate"] is None else p["length_adjusted_win_rate"] for p in pairs]
    ax.plot(adjusted, y, "x", color="#d35400", label="length-adjusted")
    ax.axvline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_yticks(y, [_label(p) for p in pairs])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.set_title("Win rate")
    return fig


def _bradley_terry(plt: Any, ratings: dict[str, Any]) -> Any:
    bt = sorted(ratings.items(), key=lambda kv: kv[1]["rating"])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(bt)))
    r = np.array([v["rating"] for _, v in bt])
    c = np.array([v["ci"] for _, v in bt])
    ax.errorbar(r, range(len(bt)), xerr=[r - c[:, 0], c[:, 1] - r], fmt="o", capsize=4)
    ax.set_yticks(range(len(bt)), [m for m, _ in bt])
    ax.set_xlabel("Bradley-Terry rating (Elo scale)")
    ax.set_title("Ratings with 95% bootstrap intervals")
    return fig


def _scores(plt: Any, per_model: dict[str, Any]) -> Any:
    models = [m for m, v in per_model.items() if v["n"]]
    cats = sorted({c for m in models for c in per_model[m]["by_category"]})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cats) + 2), 4))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        heights = [per_model[m]["by_category"].get(c, np.nan) for c in cats]
        ax.bar(np.arange(len(cats)) + i * width, heights, width, label=m)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats, rotation=30, ha="right")
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean score")
    ax.legend(fontsize=8)
    ax.set_title("Mean single score by category")
    return fig

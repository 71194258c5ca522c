"""The run folder of `grade` and `score`: `summary.json`, `judgments.jsonl`, `config.yaml` and `report.md` (Markdown
with PNG plots), rendered from the summary alone. Names and replies are HTML-escaped: a model called
`<img src=x onerror=...>` shows as text."""

from __future__ import annotations

import html
import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoConfig, write_records, write_text_atomic
from huarizo.judge.judgments import Judgment

HARNESS = "harness.json"
"""What `harness()` writes into its output folder; the report of a grading run in the same folder shows it."""
LENGTH_NOTE = (
    "Ties count half; ± is the standard error. Length-adjusted: the preference regressed on the length difference "
    "of this run's answers, the win rate at equal length. It is not AlpacaEval's length-controlled win rate, which "
    "also needs instruction difficulties fitted across AlpacaEval's leaderboard"
)


def write_run(
    out: Path, summary: dict[str, Any], judgments: list[Judgment], cfg: HuarizoConfig, *, plots: bool = True
) -> Path:
    """Write the run folder (atomically, file by file); returns it."""
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "judgments.jsonl", [asdict(j) for j in judgments])
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_report(out, summary, plots=plots)
    return out


def plural(n: int, what: str) -> str:
    """`1 item`, `2 items`."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def esc(x: Any) -> str:
    """Text safe in Markdown tables and HTML: escaped, `|` escaped, on one line."""
    return html.escape(str(x)).replace("|", "\\|").replace("\n", " ")


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v, pct) for v in x) + "]"
    if isinstance(x, float):
        return f"{100 * x:.1f}%" if pct else f"{x:.2f}"
    return str(x)


def _rate(v: dict[str, Any]) -> str:
    """`47.5% ± 2.1`: the win rate with its standard error (percentage points)."""
    if v.get("win_rate") is None:
        return "–"
    se = v.get("standard_error")
    return _fmt(v["win_rate"], True) + (f" ± {100 * se:.1f}" if se is not None else "")


def _fmts(v: dict[str, Any], *keys: str) -> list[str]:
    return [_fmt(v[k], True) for k in keys]


def _counts(v: dict[str, Any]) -> list[str]:
    return [str(v[k]) for k in ("n", "wins", "ties", "losses")]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def write_report(out: Path, s: dict[str, Any], *, plots: bool = True) -> Path:
    """Write `report.md` (and its PNG plots) from a summary; returns the report's path."""
    lines = [f"# Judge report: {s['mode']} grading by `{esc(s['judge'])}`", ""]
    if s.get("questions"):
        lines.append(f"Questions: `{esc(s['questions'])}`")
    if s.get("baseline"):
        lines.append(f"Baseline: `{esc(s['baseline'])}`")
    lines += _verdicts(s)
    if s.get("n"):
        lines += _pairwise(s) if s["mode"] == "pairwise" else _single(s)
    lines += _audit(s) + _labels(s) + _harness(out) + _cost(s)
    if plots and s.get("n"):
        lines += _plots(out, s)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _plots(out: Path, s: dict[str, Any]) -> list[str]:
    """The PNG plots (extra `huarizo-judge[plots]`), or a line saying how to get them."""
    if importlib.util.find_spec("matplotlib") is None:
        return ["", "No plots: they need matplotlib (`pip install 'huarizo-judge[plots]'`)."]
    from huarizo.judge.plots import make_plots

    return ["", "## Plots", ""] + [f"![{p}]({p})" for p in make_plots(out, s)]


def _verdicts(s: dict[str, Any]) -> list[str]:
    read = s.get("verdicts_read") or {}
    how = {"logprobs": "from the judge's token probabilities", "text": "from the judge's text"}
    parts = [f"{n} {how.get(way, 'from ' + way + 's')}" for way, n in sorted(read.items())]
    n, items = s.get("n", 0), s.get("items", s.get("n", 0))  # summaries of 0.1 have no item count
    lines = ["", f"{n} of {items} items judged. Verdicts read: " + ("; ".join(parts) or "none") + "."]
    nv = s.get("no_verdict") or {}
    if nv.get("items"):
        why = ", ".join(f"{n} {esc(reason)}" for reason, n in nv["reasons"].items())
        lines += ["", f"**{plural(nv['items'], 'item')} got no verdict** ({why}). Sample replies of the judge:", ""]
        lines += [f"> {esc(r) or '(empty)'}" + "\n" for r in nv["samples"]] or ["> (no reply: every request failed)"]
    if not n:
        lines += ["", "No rating, rate or plot: nothing was judged."]
    return lines


def _pairwise(s: dict[str, Any]) -> list[str]:
    lines = ["", "## Win rates", ""]
    header = ["model", "opponent", "n", "wins", "ties", "losses", "win rate", "95% CI", "length-adjusted"]
    rows = [
        [
            esc(p["model"]),
            esc(p["opponent"]),
            *_counts(p),
            _rate(p),
            *_fmts(p, "win_rate_ci", "length_adjusted_win_rate"),
        ]
        for p in s["pairs"]
    ]
    lines += [*_table(header, rows), "", LENGTH_NOTE + "."]
    if s.get("length_controlled_win_rate") is not None:
        lines += [
            "",
            f"Length-controlled win rate (AlpacaEval's formula with the given instruction difficulties): "
            f"{_fmt(s['length_controlled_win_rate'], True)}. Fitted on these comparisons alone, without AlpacaEval's "
            "regularisation toward its gamed baselines: close to, not equal to, a leaderboard figure.",
        ]
    if len(s["models"]) > 1 or not s.get("baseline"):
        lines += ["", "### Each model against all its opponents", ""]
        rows = [[esc(m), *_counts(v), _rate(v), _fmt(v["win_rate_ci"], True)] for m, v in s["models"].items()]
        lines += _table(["model", "n", "wins", "ties", "losses", "win rate", "95% CI"], rows)
    return lines + _bradley_terry(s) + _categories(s)


def _bradley_terry(s: dict[str, Any]) -> list[str]:
    if not s.get("bradley_terry"):
        return []
    bt = sorted(s["bradley_terry"].items(), key=lambda kv: -kv[1]["rating"])
    rows = [
        [esc(m), f"{v['rating']:.0f}", _fmt(v.get("standard_error")), f"[{v['ci'][0]:.0f}, {v['ci'][1]:.0f}]"]
        for m, v in bt
    ]
    head = ["", "## Bradley-Terry ratings (Elo scale, bootstrap standard error and 95% interval)", ""]
    return head + _table(["model", "rating", "± (SE)", "95% CI"], rows)


def _categories(s: dict[str, Any]) -> list[str]:
    cats = sorted({c for v in s["models"].values() for c in v["win_rate_by_category"]})
    if not cats:
        return []
    rows = [[esc(m)] + [_fmt(v["win_rate_by_category"].get(c), True) for c in cats] for m, v in s["models"].items()]
    return ["", "## Win rate by category", "", *_table(["model", *map(esc, cats)], rows)]


def _single(s: dict[str, Any]) -> list[str]:
    lines = ["", "## Mean score (1-10)", ""]
    rows = [
        [esc(m), str(v["n"]), _fmt(v["mean"]), _fmt(v.get("standard_error")), _fmt(v["mean_ci"]), str(v["errors"])]
        for m, v in s["models"].items()
    ]
    lines += _table(["model", "n", "mean", "± (SE)", "95% CI", "errors"], rows)
    turns = sorted({t for v in s["models"].values() for t in v["by_turn"]})
    if len(turns) > 1:
        lines += ["", "### By turn", ""]
        rows = [[esc(m)] + [_fmt(v["by_turn"].get(t)) for t in turns] for m, v in s["models"].items()]
        lines += _table(["model", *[f"turn {t}" for t in turns]], rows)
    cats = sorted({c for v in s["models"].values() for c in v["by_category"]})
    lines += ["", "## Mean score by category", ""]
    rows = [[esc(m)] + [_fmt(v["by_category"].get(c)) for c in cats] for m, v in s["models"].items()]
    return lines + _table(["model", *map(esc, cats)], rows)


def _audit(s: dict[str, Any]) -> list[str]:
    a = s["audit"]
    rows = [
        ["position consistency (same verdict in both orders)", _fmt(a.get("position_consistency"), True)],
        *[
            [f"position consistency, verdicts read from {way}", f"{_fmt(v['position_consistency'], True)} of {v['n']}"]
            for way, v in (a.get("position_consistency_by_reading") or {}).items()
        ],
        ["order flips (counted as ties)", _fmt(a.get("inconsistent"))],
        ["first-position preference (of decided verdicts)", _fmt(a.get("first_position_preference"), True)],
        ["prefers the longer answer (of decided verdicts)", _fmt(a.get("prefers_longer"), True)],
        ["score-length correlation", _fmt(a.get("score_length_correlation"))],
        ["replies without a verdict", _fmt(a.get("unparsed_replies"))],
        ["errors (no verdict, or the request failed)", _fmt(a.get("errors"))],
    ]
    lines = ["", "## Judge audit", "", *_table(["measure", "value"], [r for r in rows if r[1] != "–"])]
    if s["mode"] == "single":
        lines += ["", "Position consistency does not apply to single grading (one answer per request)."]
    return lines


def _labels(s: dict[str, Any]) -> list[str]:
    lab = s.get("label_agreement")
    if not lab:
        return ["", "No labels given (`--labels FILE`): agreement with human or reference labels not measured."]
    header = ["labels", "matched", "agreement (with ties)", "95% CI", "decided by both", "agreement (without ties)"]
    row = [str(lab["labels"]), str(lab["n"]), _fmt(lab["agreement_with_ties"], True)]
    row += [_fmt(lab.get("agreement_with_ties_ci"), True), str(lab["n_decided"])]
    row += [_fmt(lab["agreement_without_ties"], True)]
    if "agreement_without_ties_ci" in lab:  # summaries of 0.1 have no intervals
        header.append("95% CI")
        row.append(_fmt(lab["agreement_without_ties_ci"], True))
    title = "### Agreement with people (arena votes)" if lab.get("from_people") else "### Agreement with labels"
    lines = ["", title, "", *_table(header, [row])]
    lines += [
        "",
        f"Ties: {lab['judge_ties']} of the judge's verdicts, {lab['label_ties']} of the labels (an arena vote of "
        "both bad is a tie). Intervals: bootstrap, resampling questions.",
    ]
    people = lab.get("between_people")
    if people:
        lines += [
            "",
            f"Between people ({people['voters']} voters; {plural(people['n'], 'pair')} of votes on the same "
            f"comparison): {_fmt(people['agreement_with_ties'], True)} "
            f"{_fmt(people['agreement_with_ties_ci'], True)} with ties, "
            f"{_fmt(people['agreement_without_ties'], True)} {_fmt(people['agreement_without_ties_ci'], True)} "
            f"without ({people['n_decided']} decided by both).",
        ]
    if lab.get("win_rates"):
        who = "people" if lab.get("from_people") else "labels"
        header = ["model", "opponent", who, "questions", f"{who}' win rate", "95% CI", "judge's win rate", "95% CI"]
        rows = [
            [
                esc(w["model"]),
                esc(w["opponent"]),
                str(w["labels"]),
                str(w["questions"]),
                _rate(w),
                _fmt(w["win_rate_ci"], True),
                _rate({"win_rate": w["judge_win_rate"], "standard_error": w["judge_standard_error"]}),
                _fmt(w["judge_win_rate_ci"], True),
            ]
            for w in lab["win_rates"]
        ]
        title = f"### Win rates: the {who} and the judge, on the same questions"
        lines += ["", title, "", *_table(header, rows)]
        lines += ["", "Ties count half; ± is the standard error."]
    return lines


def _harness(out: Path) -> list[str]:
    """The scores `harness()` wrote into the same folder, if it did."""
    path = out / HARNESS
    if not path.exists():
        return []
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    rows = [[esc(t), esc(k), _fmt(v)] for t, ms in results.items() for k, v in ms.items()]
    return ["", "## lm-evaluation-harness", "", *_table(["task", "metric", "value"], rows)]


def _cost(s: dict[str, Any]) -> list[str]:
    u = s.get("usage")
    if not u:
        return []
    cost = f"${u['cost']:.4f}" + (f" ({u['unpriced']} unpriced)" if u["unpriced"] else "")
    ignored = f", {u['cache_ignored']} unreadable cache entries ignored" if u.get("cache_ignored") else ""
    return [
        "",
        "## Cost",
        "",
        f"{u['requests']} requests asked, {u['cached']} answered from the cache ({u['retries']} retried, "
        f"{u['failures']} failed{ignored}), {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, "
        f"{cost}.",
    ]

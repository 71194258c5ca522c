"""The run's report: `summary.json` (every figure shown, machine-readable), `report.md` and a self-contained
`report.html` (plots inlined as base64 PNG, no external resource, every text escaped).

Sections: the data funnel (generated -> kept, per rejection reason), the loss curve (raw per-step losses and a
trained-token-weighted smoothed line), reference metrics and stop rate per model with intervals, answers side by
side, the judge's results with standard errors and audit, and the cost and time of each stage.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huarizo.formats import write_json_atomic, write_text_atomic
from huarizo.pipeline.config import SERVED, RecipeConfig

SMOKE_MODELS = ("embedded", "tiny")
"""Judges whose verdicts carry no weight: the embedded 270M base model and the tiny random test model."""


# ---- the figures ---------------------------------------------------------------------------------------------------


def smoothed(losses: Sequence[float], weights: Sequence[float], window: float | None = None) -> list[float]:
    """Exponentially smoothed loss where each step weighs by its trained tokens: a step of 2 trained tokens barely
    moves the line, one of 2,000 moves it as much as it should. `window`: steps of memory (default: a tenth)."""
    w = window or max(1.0, len(losses) / 10)
    decay = 1 - 1 / w if w > 1 else 0.0
    num = den = 0.0
    out = []
    for loss, weight in zip(losses, weights, strict=True):
        num, den = decay * num + weight * loss, decay * den + weight
        out.append(num / den if den else loss)
    return out


def _loss_rows(metrics: Path) -> list[dict[str, Any]]:
    rows = []
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def judge_model(recipe: RecipeConfig) -> tuple[str | None, str | None]:
    """(the judge's model string, the model reference behind it when the run serves it)."""
    if recipe.judge is None:
        return None, None
    from huarizo.pipeline.run import served_model

    model = recipe.judge.judge.model
    if recipe.judge.judge.api_base == SERVED and model.rsplit("/", 1)[-1] in recipe.serve:
        return model, served_model(recipe, model.rsplit("/", 1)[-1])
    return model, None


def _judge_summary(recipe: RecipeConfig, result: dict[str, Any]) -> dict[str, Any]:
    s = result.get("figures", {}).get("summary", {})
    counts = result.get("counts", {})
    model, served = judge_model(recipe)
    if served is not None and recipe.train is not None and Path(served) == Path(recipe.train.output_dir) / "final":
        served = f"{served} (trained from {recipe.train.model.ref})"
    smoke = served is not None and any(served == m or served.endswith(f"from {m})") for m in SMOKE_MODELS)
    out: dict[str, Any] = {
        "judge": model,
        "served_model": served,
        "smoke": smoke,
        "mode": s.get("mode"),
        "n": counts.get("items", 0),
        "judged": counts.get("judged", 0),
        "errors": counts.get("errors", 0),
        "verdicts_read": s.get("verdicts_read", {}),
    }
    if s.get("mode") == "pairwise":
        out |= {
            "model": next(iter(s.get("models") or {}), None),
            "baseline": s.get("baseline"),
            **{k: s.get(k) for k in ("win_rate", "standard_error", "win_rate_ci", "wins", "ties", "losses")},
            "length_adjusted_win_rate": s.get("length_adjusted_win_rate"),
            "audit": s.get("audit"),
        }
    else:
        out |= {"models": s.get("models"), "audit": s.get("audit")}
    return out


def build_summary(
    recipe: RecipeConfig,
    results: dict[str, dict[str, Any]],
    statuses: dict[str, str],
    servers: Any,
    seconds: float,
    source: str | None,
) -> dict[str, Any]:
    """Every figure the report shows."""
    stages = {name: _stage_figures(manifest, statuses.get(name, "")) for name, manifest in results.items()}
    stages["serve"] = _serve_figures(servers)
    summary: dict[str, Any] = {
        "recipe": source,
        "run_dir": str(recipe.run_dir),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "invocation_seconds": seconds,
        "stages": stages,
    }
    data = _data_figures(results)
    if data:
        summary["data"] = data
    if "train" in results:
        summary["train"] = _train_figures(results["train"]["result"])
    if "metrics" in results:
        summary["models"] = _metric_figures(results["metrics"]["result"])
    if "judge" in results:
        summary["judge"] = _judge_summary(recipe, results["judge"]["result"])
    summary["total"] = _totals(stages)
    return summary


def _stage_figures(manifest: dict[str, Any], status: str) -> dict[str, Any]:
    """One stage's status, time, tokens, cost, outputs and counts, from its manifest."""
    r = manifest["result"]
    return {
        "status": status,
        "skipped": status != "done",
        "seconds": r.get("seconds", 0.0),
        "tokens": int(r.get("prompt_tokens", 0)) + int(r.get("completion_tokens", 0)),
        "prompt_tokens": r.get("prompt_tokens", 0),
        "completion_tokens": r.get("completion_tokens", 0),
        "cost": r.get("cost"),
        "outputs": r.get("outputs", {}),
        "counts": r.get("counts", {}),
        "finished_at": manifest.get("finished_at"),
    }


def _serve_figures(servers: Any) -> dict[str, Any]:
    """The servers this invocation started: their start-up time and logs."""
    started = servers.started() if servers is not None else {}
    return {
        "status": "done" if started else "skipped",
        "skipped": not started,
        "seconds": sum(s.seconds for s in started.values()),
        "tokens": 0,
        "cost": 0.0,
        "outputs": {n: str(s.log) for n, s in started.items()},
        "counts": {"servers": len(started)},
    }


def _data_figures(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The curation stages' counts and rejections per reason (datagen, filter, clean, those that ran)."""
    data: dict[str, Any] = {}
    for stage in ("datagen", "filter", "clean"):
        if stage in results:
            r = results[stage]["result"]
            data[stage] = {**r["counts"], "rejected_by_reason": r.get("figures", {}).get("rejected_by_reason", {})}
    return data


def _train_figures(r: dict[str, Any]) -> dict[str, Any]:
    """The training stage's counts and its first and last losses, raw and smoothed."""
    rows = [x for x in _loss_rows(Path(r["outputs"]["metrics"])) if "loss" in x]
    smooth = smoothed([x["loss"] for x in rows], [float(x.get("trained_tokens", 1)) for x in rows])
    return {
        **r["counts"],
        "final_loss": rows[-1]["loss"] if rows else None,
        "final_loss_smoothed": smooth[-1] if smooth else None,
        "first_loss_smoothed": smooth[0] if smooth else None,
        "resumed_from": r.get("figures", {}).get("resumed_from"),
        "model": r["outputs"]["model"],
    }


def _metric_figures(r: dict[str, Any]) -> dict[str, Any]:
    """Per model: answers, and each reference metric's mean, interval, standard error and n."""
    models = {}
    for name, m in r["figures"]["models"].items():
        entry: dict[str, Any] = {"answers": m["answers"]}
        for metric in ("stop_rate", "rouge_l", "exact_match"):
            est = m[metric]
            entry |= {metric: est["mean"], f"{metric}_ci": est["ci"], f"{metric}_se": est["standard_error"]}
            entry[f"{metric}_n"] = est["n"]
        models[name] = entry
    return models


def _totals(stages: dict[str, Any]) -> dict[str, Any]:
    """Time, tokens and cost over the stages (serve left out: servers start within the stages that use them)."""
    work = [s for name, s in stages.items() if name != "serve"]
    return {
        "seconds": sum(float(s.get("seconds") or 0) for s in work),
        "tokens": sum(int(s.get("tokens") or 0) for s in work),
        "cost": sum(s["cost"] for s in work if s.get("cost") is not None),
    }


# ---- plots ---------------------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_funnel(data: dict[str, Any], png: Path) -> Path | None:
    """Horizontal bars: records generated, rejected per reason, kept, at each curation stage."""
    bars: list[tuple[str, int, str]] = []
    if "datagen" in data:
        d = data["datagen"]
        bars.append(("datagen: generated", d.get("generated", 0), "#4c72b0"))
        for reason, n in sorted(d["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            bars.append((f"  rejected: {reason}", -n, "#c44e52"))
        bars.append(("datagen: kept", d.get("kept", 0), "#55a868"))
    for stage in ("filter", "clean"):
        if stage in data:
            d = data[stage]
            if stage == "filter":
                seeds = d.get("seed_records", 0)
                label = f"filter: in ({seeds} seed instances + generated)" if seeds else "filter: in"
                bars.append((label, d.get("candidates", 0), "#4c72b0"))
            for reason, n in sorted(d["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
                bars.append((f"  rejected: {reason}", -n, "#c44e52"))
            bars.append((f"{stage}: kept (trained on)", d.get("kept", 0), "#55a868"))
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.2))
    labels = [b[0] for b in bars][::-1]
    values = [abs(b[1]) for b in bars][::-1]
    ax.barh(labels, values, color=[b[2] for b in bars][::-1])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("records")
    ax.set_title("data funnel")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_loss(metrics: Path, png: Path) -> Path | None:
    """Raw per-step losses (points sized by trained tokens) under the token-weighted smoothed line."""
    rows = [r for r in _loss_rows(metrics) if "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    tokens = [float(r.get("trained_tokens", 1)) for r in rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    biggest = max(tokens) or 1.0
    ax.scatter(steps, losses, s=[6 + 30 * t / biggest for t in tokens], alpha=0.35, label="loss per step")
    ax.plot(steps, smoothed(losses, tokens), color="#c44e52", lw=2, label="smoothed (trained-token weighted)")
    evals = [(r["step"], r["eval_loss"]) for r in _loss_rows(metrics) if "eval_loss" in r]
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color="#55a868", label="eval loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token cross-entropy")
    ax.set_title("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_metrics(models: dict[str, Any], png: Path) -> Path | None:
    """Grouped bars: stop rate, ROUGE-L and exact match per model, with their intervals."""
    if not models:
        return None
    plt = _plt()
    metrics = [("stop_rate", "stop rate"), ("rouge_l", "ROUGE-L"), ("exact_match", "exact match")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(models)
    for k, (name, m) in enumerate(models.items()):
        xs = [i + k * width for i in range(len(metrics))]
        ys = [m.get(key) or 0.0 for key, _ in metrics]
        lo = [y - (m.get(f"{key}_ci") or [y, y])[0] for (key, _), y in zip(metrics, ys, strict=True)]
        hi = [(m.get(f"{key}_ci") or [y, y])[1] - y for (key, _), y in zip(metrics, ys, strict=True)]
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(metrics))], [label for _, label in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_title("reference metrics (95% bootstrap intervals)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ---- rendering -----------------------------------------------------------------------------------------------------


@dataclass
class _Doc:
    """A report as blocks, rendered to Markdown and to HTML with the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None:
            self.blocks.append(("img", (path, alt)))

    def markdown(self, folder: Path) -> str:
        out: list[str] = []
        for kind, value in self.blocks:
            if kind == "h":
                out += ["#" * value[0] + " " + _md(value[1]), ""]
            elif kind == "p":
                out += [_md(value), ""]
            elif kind == "warn":
                out += ["> **" + _md(value) + "**", ""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{_md(value[1])}]({value[0].relative_to(folder).as_posix()})", ""]
        return "\n".join(out)

    def html(self, title: str) -> str:
        body: list[str] = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "warn":
                body.append(f'<p class="warn">{html.escape(value)}</p>')
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
                cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(value[0].read_bytes()).decode("ascii")
                body.append(f'<img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}">')
        return _PAGE.format(title=html.escape(title), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; vertical-align: top; text-align: left; }}
td {{ white-space: pre-wrap; max-width: 28rem; }}
th {{ background: #f3f3f3; }}
.warn {{ background: #fff3cd; border: 1px solid #e0c36c; padding: 0.6rem; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""


def _md(text: str) -> str:
    return html.escape(text, quote=False)


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _pct(x: Any, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(ci: Any, pct: bool = True) -> str:
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "–"
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if pct else f"[{_num(ci[0])}, {_num(ci[1])}]"


def _seconds(s: Any) -> str:
    if not s:
        return "–"
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _answers_side_by_side(
    recipe: RecipeConfig, results: dict[str, dict[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    if "answer" not in results or recipe.questions is None or not recipe.report.examples:
        return [], []
    from huarizo.formats import load_answers, load_questions

    qs = load_questions(str(recipe.questions))
    files = results["answer"]["result"]["outputs"]
    answers = {name: next(iter(load_answers(path, qs).values()), {}) for name, path in files.items()}
    header = ["question", "reference", *files]
    answered = [q for q in qs.questions if all(q.question_id in a for a in answers.values())]
    by_category: dict[str, list[Any]] = {}
    for q in answered:
        by_category.setdefault(q.category, []).append(q)
    # the first question of each category, then the second of each, ...: examples of every kind of question
    spread = [q for group in itertools.zip_longest(*by_category.values()) for q in group if q is not None]
    rows = [
        [
            q.turns[0],
            q.reference[0] if q.reference else "",
            *(_clip(answers[n][q.question_id].turns[0], 600) for n in files),
        ]
        for q in spread[: recipe.report.examples]
    ]
    return header, rows


def write_report(
    recipe: RecipeConfig,
    results: dict[str, dict[str, Any]],
    statuses: dict[str, str],
    servers: Any,
    seconds: float,
    source: str | None,
) -> dict[str, Any]:
    """Write `summary.json`, `report.md` and `report.html` into the run folder; returns the summary."""
    run = recipe.run_dir
    folder = run / "report"
    folder.mkdir(parents=True, exist_ok=True)
    summary = build_summary(recipe, results, statuses, servers, seconds, source)
    title = recipe.report.title or f"huarizo run: {Path(source).name if source else run.name}"
    doc = _Doc()
    doc.h(1, title)
    doc.p(f"Run folder {run}, recipe {source or '(Python API)'}, written {summary['written_at']}.")
    plots: list[str] = []
    if "data" in summary:
        plots += _data_section(doc, summary["data"], folder)
    if "train" in summary:
        plots += _train_section(doc, summary["train"], Path(results["train"]["result"]["outputs"]["metrics"]), folder)
    if "models" in summary:
        plots += _metrics_section(doc, summary["models"], folder)
    _answers_section(doc, recipe, results)
    if "judge" in summary:
        _judge_section(doc, summary["judge"])
    _cost_section(doc, summary["stages"], summary["total"])

    summary["report"] = {"markdown": str(run / "report.md"), "html": str(run / "report.html"), "plots": plots}
    write_json_atomic(run / "summary.json", summary)
    write_text_atomic(run / "report.md", doc.markdown(run))
    write_text_atomic(run / "report.html", doc.html(title))
    return summary


def _data_section(doc: _Doc, data: dict[str, Any], folder: Path) -> list[str]:
    """The data funnel: a table of each curation stage's records in, kept and rejected, and its plot."""
    doc.h(2, "Data")
    rows = []
    for stage, d in data.items():
        total = d.get("generated", d.get("candidates", d.get("kept", 0) + d.get("rejected", 0)))
        rows.append([stage, str(total), str(d.get("kept", 0)), str(d.get("rejected", 0)), _reasons(d)])
    doc.table(["stage", "in", "kept", "rejected", "rejected by reason"], rows)
    if data.get("datagen", {}).get("failed"):
        doc.warn(f"{data['datagen']['failed']} teacher requests failed after their retries.")
    if "filter" in data and data["filter"].get("seed_records"):
        doc.p(f"The filter's input holds the {data['filter']['seed_records']} instances of the seed tasks.")
    doc.image(plot_funnel(data, folder / "funnel.png"), "data funnel")
    return ["funnel"]


def _train_section(doc: _Doc, t: dict[str, Any], metrics: Path, folder: Path) -> list[str]:
    """Steps, trained tokens and losses in a sentence, and the loss curve."""
    doc.h(2, "Training")
    doc.p(
        f"{t['steps']} optimiser steps on {t['trained_tokens']:,} trained tokens; loss (smoothed, weighted by "
        f"trained tokens) {_num(t['first_loss_smoothed'])} → {_num(t['final_loss_smoothed'])}; last step's "
        f"loss {_num(t['final_loss'])}."
        + (f" Continued from checkpoint {t['resumed_from']}." if t.get("resumed_from") else "")
    )
    png = plot_loss(metrics, folder / "loss.png")
    doc.image(png, "training loss")
    return [] if png is None else ["loss"]


def _metrics_section(doc: _Doc, models: dict[str, Any], folder: Path) -> list[str]:
    """Stop rate, ROUGE-L and exact match per model with intervals, what they mean, and their plot."""
    doc.h(2, "Reference metrics")
    rows = [
        [
            name,
            str(m["answers"]),
            f"{_pct(m['stop_rate'])} {_ci(m['stop_rate_ci'])}",
            f"{_num(m['rouge_l'])} {_ci(m['rouge_l_ci'], pct=False)}",
            f"{_pct(m['exact_match'])} {_ci(m['exact_match_ci'])}",
        ]
        for name, m in models.items()
    ]
    doc.table(["model", "answers", "stop rate", "ROUGE-L", "exact match"], rows)
    doc.p(
        "Stop rate: answers the model ended itself, at its end of turn (not cut at max_tokens, nor by a stop "
        "string such as the template's next section header, which a base model writes when it runs on). ROUGE-L "
        "and exact match (normalised case, whitespace and punctuation) against each question's reference. "
        "Intervals: 95% percentile bootstrap over the questions."
    )
    doc.image(plot_metrics(models, folder / "metrics.png"), "reference metrics")
    return ["metrics"]


def _answers_section(doc: _Doc, recipe: RecipeConfig, results: dict[str, dict[str, Any]]) -> None:
    """A few questions with their reference and every model's answer, when the run answered any."""
    header, rows = _answers_side_by_side(recipe, results)
    if rows:
        doc.h(2, "Answers side by side")
        doc.table(header, rows)


def _judge_section(doc: _Doc, j: dict[str, Any]) -> None:
    """Who judged and how verdicts were read, the results table of its mode, and the judge's audit."""
    doc.h(2, "Judge")
    if j["smoke"]:
        doc.warn(
            f"The judge is {j['served_model']} (served by this run), a small base model: a smoke judge. "
            "Its verdicts show that judging works end to end; they carry no weight as a measure of quality. "
            "Point the judge at a strong model (a hosted API or a large served model) for verdicts that do."
        )
    read = ", ".join(f"{n} from {way}" for way, n in j["verdicts_read"].items() if n) or "none"
    doc.p(
        f"Judge: {j['judge']} ({j.get('mode')}); {j['judged']} of {j['n']} items got a verdict. Verdicts read: "
        f"{read} (logprobs: from the verdict token's probabilities, in both answer orders)."
    )
    if j.get("mode") == "pairwise":
        _pairwise_table(doc, j)
    else:
        _scores_table(doc, j)
    audit = j.get("audit") or {}
    if audit:
        doc.p("Audit of the judge:")
        doc.table(["check", "value"], _audit_rows(audit))


def _pairwise_table(doc: _Doc, j: dict[str, Any]) -> None:
    """The model's win rate against the baseline, with its standard error, interval and counts."""
    doc.table(
        ["model", "baseline", "win rate", "standard error", "95% CI", "wins", "ties", "losses"],
        [
            [
                str(j.get("model")),
                str(j.get("baseline")),
                _pct(j.get("win_rate")),
                _pct(j.get("standard_error"), 2),
                _ci(j.get("win_rate_ci")),
                str(j.get("wins")),
                str(j.get("ties")),
                str(j.get("losses")),
            ]
        ],
    )


def _scores_table(doc: _Doc, j: dict[str, Any]) -> None:
    """Each model's mean 1-10 score, with its standard error, interval, n and errors."""
    doc.table(
        ["model", "mean score (1-10)", "standard error", "95% CI", "n", "errors"],
        [
            [
                name,
                _num(m.get("mean"), 2),
                _num(m.get("standard_error"), 2),
                _ci(m.get("mean_ci"), pct=False),
                str(m.get("n")),
                str(m.get("errors")),
            ]
            for name, m in (j.get("models") or {}).items()
        ],
    )


def _audit_rows(audit: dict[str, Any]) -> list[list[str]]:
    """One row per audit figure; figures kept per way of reading verdicts get one row per way."""
    rows = []
    for key, value in audit.items():
        if isinstance(value, dict):  # per way of reading verdicts: {logprobs: {n, position_consistency}}
            for way, sub in value.items():
                figures = ", ".join(f"{k.replace('_', ' ')} {_audit(v)}" for k, v in sub.items())
                rows.append([f"{key.replace('_', ' ')}: {way}", figures])
        else:
            rows.append([key.replace("_", " "), _audit(value)])
    return rows


def _cost_section(doc: _Doc, stages: dict[str, Any], total: dict[str, Any]) -> None:
    """Each stage's status, time, tokens and cost, and their total."""
    doc.h(2, "Cost and time")
    rows = []
    for name, s in stages.items():
        cost = s.get("cost")
        rows.append(
            [
                name,
                s.get("status", ""),
                _seconds(s.get("seconds")),
                f"{s.get('tokens', 0):,}",
                "unknown" if cost is None else f"${cost:.4f}",
            ]
        )
    rows.append(["total", "", _seconds(total["seconds"]), f"{total['tokens']:,}", f"${total['cost']:.4f}"])
    doc.table(["stage", "this run", "time", "tokens", "cost"], rows)
    doc.p(
        "Time, tokens and cost are those of each stage's last execution; skipped stages were up to date. The serve "
        "row is the start-up time of the servers this invocation started, already counted in the stages using them."
    )


def _reasons(d: dict[str, Any]) -> str:
    items = sorted(d.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v}" for k, v in items) or "–"


def _audit(v: Any) -> str:
    if isinstance(v, float):
        return _num(v)
    return "–" if v is None else str(v)

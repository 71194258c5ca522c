"""The stages of a recipe: for each, what its key is made of and one small adapter calling the stage package.

Every adapter takes the recipe's section (the stage package's own config class, paths already filled in), puts in
what only the run knows (the URL of a model it serves, the outputs of the stages before it), calls the package's
public function and returns a `StageResult`. Adapting to a change in a stage package is a change here, in one place.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from huarizo.formats import HuarizoError, StageResult
from huarizo.formats.llm import log_tail
from huarizo.pipeline.config import SERVED, RecipeConfig
from huarizo.trainer.config import TrainConfig

VOLATILE = frozenset(
    {"progress", "concurrency", "max_retries", "request_timeout", "timeout", "backoff_base", "cache_dir", "tensorboard"}
)
"""Config keys that do not change what a stage produces: changing them does not redo the stage."""


class Result(StageResult):
    """A stage's result with the figures the report shows (anything beyond the common fields)."""

    figures: dict[str, Any] = Field(default_factory=dict, description="figures of the stage for the report")


def _result(
    outputs: dict[str, Path],
    counts: dict[str, int],
    *,
    figures: dict[str, Any] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: float | None = 0.0,
    seconds: float = 0.0,
) -> Result:
    return Result(
        outputs=outputs,
        counts=counts,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        seconds=seconds,
        figures=figures or {},
    )


class Context(Protocol):
    """What an adapter gets from the run."""

    recipe: RecipeConfig
    run_dir: Path
    keep_fds: tuple[int, ...]

    def url(self, served: str) -> str:
        """Base URL of a served model (started on first use)."""
        ...

    def cache(self, stage: str) -> Path:
        """The stage's reply cache, kept across redos of the stage."""
        ...

    def result(self, stage: str) -> dict[str, Any]:
        """The result of a finished upstream stage (from its manifest)."""
        ...

    def tick(self, n: int = 1) -> None:
        """Count progress within the stage."""
        ...

    def progress(self, done: int, total: int | None) -> None:
        """Set progress within the stage."""
        ...


@dataclass
class Stage:
    """One stage of a run: its key's parts, its upstream stages and its adapter."""

    name: str
    config: dict[str, Any]
    run: Callable[[Context], StageResult]
    inputs: list[Path] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)
    endpoints: list[tuple[str, str]] = field(default_factory=list)
    total: Callable[[], int | None] | None = None
    poll: Callable[[], str] | None = None


def stable(data: Any) -> Any:
    """A config dump without the keys in `VOLATILE` (what the stage's key hashes)."""
    if isinstance(data, dict):
        return {k: stable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [stable(v) for v in data]
    return data


def resolve_served(data: Any, ctx: Context) -> Any:
    """Replace `api_base: served` in a config dump by the URL of the served model its `model` names."""
    if isinstance(data, dict):
        out = {k: resolve_served(v, ctx) for k, v in data.items()}
        if out.get("api_base") == SERVED:
            out["api_base"] = ctx.url(str(out.get("model") or out.get("judge")).rsplit("/", 1)[-1])
        return out
    if isinstance(data, list):
        return [resolve_served(v, ctx) for v in data]
    return data


def _urls(section: Any, where: str) -> list[tuple[str, str]]:
    """(where, api_base) of every endpoint in a section dump with a URL of its own (not served by the run)."""
    found = []
    if isinstance(section, dict):
        base = section.get("api_base")
        if isinstance(base, str) and base != SERVED and (section.get("model") or section.get("judge")):
            found.append((where, base))
        for key, value in section.items():
            found += _urls(value, f"{where}.{key}" if where else key)
    return found


def _served_names(recipe: RecipeConfig, stage: str) -> list[str]:
    return sorted({name for s, _, name in recipe.served_references() if s == stage})


def _tuned_upstream(recipe: RecipeConfig, served: list[str]) -> list[str]:
    return ["train"] if any(recipe.serve[n].model == "tuned" for n in served if n in recipe.serve) else []


def plan(recipe: RecipeConfig) -> list[Stage]:
    """The recipe's stages in run order (the report stage is the runner's own)."""
    builders = {
        "datagen": _datagen,
        "filter": _filter,
        "clean": _clean,
        "train": _train,
        "answer": _answer,
        "metrics": _metrics,
        "judge": _judge,
    }
    return [builders[name](recipe) for name in recipe.stages() if name in builders]


# ---- datagen -------------------------------------------------------------------------------------------------------


def _datagen(recipe: RecipeConfig) -> Stage:
    from huarizo.datagen.generate import default_seeds

    cfg = recipe.datagen
    assert cfg is not None
    served = _served_names(recipe, "datagen")

    def run(ctx: Context) -> StageResult:
        from huarizo.datagen import DatagenConfig
        from huarizo.datagen import run as generate

        data = resolve_served(cfg.model_dump(mode="json"), ctx)
        data["progress"] = False
        data["teacher"]["cache_dir"] = data["teacher"].get("cache_dir") or str(ctx.cache("datagen"))
        r = generate(DatagenConfig.model_validate(data), on_progress=lambda n, total, _: ctx.progress(n, total))
        return _result(
            outputs={k: v for k, v in r.outputs.items() if k in ("records", "rejects", "rounds")},
            counts=dict(r.counts),
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost=_cost(r.cost, served),
            figures={"rejected_by_reason": dict(r.reasons)},
        )

    return Stage(
        "datagen",
        stable(cfg.model_dump(mode="json")),
        run,
        inputs=[Path(cfg.seeds) if cfg.seeds else default_seeds()],
        served=served,
        endpoints=_urls(cfg.model_dump(mode="json"), ""),
    )


def _cost(cost: float | None, served: list[str]) -> float | None:
    """A stage's cost; replies of models the run serves itself cost nothing (litellm has no price for them)."""
    return 0.0 if cost is None and served else cost


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return []


# ---- filter --------------------------------------------------------------------------------------------------------


def _filter(recipe: RecipeConfig) -> Stage:
    from huarizo.datagen.generate import default_seeds

    cfg = recipe.filter
    assert cfg is not None
    out = recipe.run_dir / "filter"
    seeds = Path(recipe.datagen.seeds) if recipe.datagen and recipe.datagen.seeds else default_seeds()
    if recipe.datagen is None and not recipe.include_seeds:
        raise HuarizoError("stage filter: nothing to filter: add a datagen section or set include_seeds: true")

    def run(ctx: Context) -> StageResult:
        from huarizo.datagen import filter_file, load_seeds
        from huarizo.formats import convert, read_records, write_records

        candidates: list[dict[str, Any]] = []
        n_seeds = 0
        if recipe.include_seeds:
            candidates += [r.to_json() for r in convert(load_seeds(seeds), "alpaca")]
            n_seeds = len(candidates)
        if recipe.datagen is not None:
            records = Path(ctx.result("datagen")["outputs"]["records"])
            if records.stat().st_size:
                candidates += [r.to_json() for r in read_records(records, "alpaca").records]
        write_records(out / "candidates.jsonl", candidates)
        data, rejects = out / "data.jsonl", out / "rejects.jsonl"
        if candidates:
            r = filter_file(out / "candidates.jsonl", data, cfg=cfg, rejects=rejects)
            kept, reasons = r.kept, dict(r.reasons)
        else:
            write_records(data, [])
            write_records(rejects, [])
            kept, reasons = 0, {}
        return _result(
            outputs={"data": data, "rejects": rejects},
            counts={
                "candidates": len(candidates),
                "seed_records": n_seeds,
                "kept": kept,
                "rejected": sum(reasons.values()),
            },
            figures={"rejected_by_reason": reasons},
        )

    return Stage(
        "filter",
        {"filter": stable(cfg.model_dump(mode="json")), "include_seeds": recipe.include_seeds},
        run,
        inputs=[seeds] if recipe.include_seeds else [],
        upstream=["datagen"] if recipe.datagen is not None else [],
    )


# ---- clean ---------------------------------------------------------------------------------------------------------


def _clean(recipe: RecipeConfig) -> Stage:
    cfg = recipe.clean
    assert cfg is not None
    out = recipe.run_dir / "clean"

    def run(ctx: Context) -> StageResult:
        from huarizo.datagen import CleanConfig, clean_file

        settings = CleanConfig.model_validate(cfg.model_dump(exclude={"files"}))
        outputs: dict[str, Path] = {}
        counts: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for i, src in enumerate(cfg.files):
            dst = out / f"{i}-{Path(src).stem}.json"
            r = clean_file(src, dst, settings)
            outputs[f"data{i}"] = dst
            for k, v in r.counts.items():
                counts[k] = counts.get(k, 0) + v
            for k, v in r.reasons.items():
                reasons[k] = reasons.get(k, 0) + v
        return _result(outputs=outputs, counts=counts, figures={"rejected_by_reason": reasons})

    return Stage("clean", stable(cfg.model_dump(mode="json")), run, inputs=[Path(p) for p in cfg.files])


# ---- train ---------------------------------------------------------------------------------------------------------


def launch_command(recipe: RecipeConfig, config: Path) -> list[str]:
    """The command that trains `config`: one process, or a torchrun / deepspeed launch."""
    launch = recipe.launch
    if launch.launcher == "python":
        return [sys.executable, "-m", "huarizo.trainer", str(config)]
    exe = Path(sys.executable).with_name(launch.launcher)
    cmd = [str(exe) if exe.exists() else launch.launcher]
    if launch.launcher == "torchrun":
        cmd += [f"--nproc_per_node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}", *launch.args, "-m"]
    else:
        cmd += [f"--num_gpus={launch.nproc_per_node}", f"--num_nodes={launch.nnodes}"]
        cmd += [f"--hostfile={launch.hostfile}"] if launch.hostfile else []
        cmd += [*launch.args, "--module"]
    return [*cmd, "huarizo.trainer", str(config)]


def _train(recipe: RecipeConfig) -> Stage:
    cfg = recipe.train
    assert cfg is not None
    out = Path(cfg.output_dir)
    upstream = [s for s in ("filter", "clean") if getattr(recipe, s) is not None]
    if recipe.filter is None and recipe.datagen is not None:
        upstream.insert(0, "datagen")

    def run(ctx: Context) -> StageResult:
        from huarizo.pipeline.servers import popen

        files = _training_files(cfg, upstream, ctx)
        config = _write_train_config(cfg, files, out)
        latest = out / "checkpoints" / "latest"
        resumed = latest.read_text().strip() if latest.exists() else None
        log = out / "train.log"
        proc = popen(launch_command(recipe, config), log, keep_fds=ctx.keep_fds)
        code = _wait_ticking(proc, out / "metrics.jsonl", ctx)
        if code != 0:
            raise HuarizoError(_trainer_failure(code, out, log))
        return _train_result(out, log, files, resumed)

    def total() -> int | None:
        if cfg.optim.max_steps:
            return cfg.optim.max_steps
        rows = _metric_rows(out / "metrics.jsonl")
        last = next((r for r in reversed(rows) if r.get("epoch")), None)
        return round(last["step"] / last["epoch"] * cfg.optim.epochs) if last else None

    def poll() -> str:
        rows = _metric_rows(out / "metrics.jsonl")
        return f"step {rows[-1]['step']}, loss {rows[-1].get('loss', float('nan')):.3f}" if rows else "starting"

    models = [cfg.model.ref] + ([cfg.model.tokenizer] if cfg.model.tokenizer else [])
    config = stable(cfg.model_dump(mode="json"))
    config["launch"] = recipe.launch.model_dump(mode="json")
    return Stage(
        "train",
        config,
        run,
        inputs=[Path(f.path) for f in cfg.data.files],
        models=models,
        upstream=upstream,
        total=total,
        poll=poll,
    )


def _training_files(cfg: TrainConfig, upstream: list[str], ctx: Context) -> list[dict[str, Any]]:
    """The recipe's own data files, then every non-empty records file the upstream stages wrote."""
    files = [f.model_dump(mode="json") for f in cfg.data.files]
    for stage in upstream:
        for name, path in ctx.result(stage)["outputs"].items():
            if (name == "records" or name.startswith("data")) and _has_records(Path(path)):
                files.append({"path": str(path)})
    if not files:
        raise HuarizoError("no training data: every upstream stage produced an empty file")
    return files


def _write_train_config(cfg: TrainConfig, files: list[dict[str, Any]], out: Path) -> Path:
    """The trainer's YAML in its output folder: the recipe's train section on `files`, progress bar off."""
    data = cfg.model_dump(mode="json")
    data["data"]["files"] = files
    data["output"]["progress"] = False
    config = out / "train.yaml"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(type(cfg).model_validate(data).to_yaml(), encoding="utf-8")
    return config


def _wait_ticking(proc: Any, metrics: Path, ctx: Context) -> int:
    """Wait for the trainer, advancing the stage's progress by the steps it logs to `metrics`; its exit code."""
    seen = 0
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            steps = _last_step(metrics)
            if steps > seen:
                ctx.tick(steps - seen)
                seen = steps


def _train_result(out: Path, log: Path, files: list[dict[str, Any]], resumed: str | None) -> StageResult:
    """The trained model, metrics and log, with steps, trained tokens and final loss read from the metrics."""
    rows = _metric_rows(out / "metrics.jsonl")
    losses = [r for r in rows if "loss" in r]
    return _result(
        outputs={"model": out / "final", "metrics": out / "metrics.jsonl", "log": log},
        counts={
            "steps": losses[-1]["step"] if losses else 0,
            "trained_tokens": sum(int(r.get("trained_tokens", 0)) for r in losses),
            "files": len(files),
        },
        figures={"final_loss": losses[-1]["loss"] if losses else None, "resumed_from": resumed},
    )


def _has_records(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 3  # an empty JSON array is "[]"


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in _read_lines(path):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows


def _last_step(path: Path) -> int:
    rows = _metric_rows(path)
    return int(rows[-1]["step"]) if rows else 0


def _trainer_failure(code: int, out: Path, log: Path) -> str:
    ckpt = out / "checkpoints" / "latest"
    at = _last_step(out / "metrics.jsonl")
    resume = (
        f"rerun to continue from its last checkpoint ({ckpt.read_text().strip()})"
        if ckpt.exists()
        else "no checkpoint was written (set train.output.save_steps to keep progress); rerun to start it again"
    )
    if code < 0:
        return f"the trainer was killed by {signal.Signals(-code).name} after step {at}; {resume}; log: {log}"
    why = log_tail(log, 1, r"^error:|Error:|error:") or log_tail(log, 1)
    return f"the trainer exited with code {code}: {why}; {resume}; log: {log}"


# ---- answer --------------------------------------------------------------------------------------------------------


def _answer(recipe: RecipeConfig) -> Stage:
    entries = recipe.answer
    assert entries is not None and recipe.questions is not None
    served = _served_names(recipe, "answer")

    def run(ctx: Context) -> StageResult:
        from huarizo.judge import AnswerConfig, answer

        outputs: dict[str, Path] = {}
        counts: dict[str, int] = {}
        per_model: dict[str, Any] = {}
        prompt = completion = 0
        cost: float | None = 0.0
        for name, cfg in entries.items():
            data = resolve_served(cfg.model_dump(mode="json"), ctx)
            data["endpoint"]["cache_dir"] = data["endpoint"].get("cache_dir") or str(ctx.cache("answer"))
            r = answer(AnswerConfig.model_validate(data), progress=False, on_answer=ctx.tick)
            outputs[name] = Path(cfg.out)
            counts |= {f"{name}:{k}": v for k, v in r.counts.items()}
            per_model[name] = dict(r.counts)
            prompt, completion = prompt + r.prompt_tokens, completion + r.completion_tokens
            cost = None if cost is None or r.cost is None else cost + r.cost
        return _result(
            outputs=outputs,
            counts=counts,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=_cost(cost, served),
            figures={"models": per_model},
        )

    def total() -> int:
        from huarizo.formats import load_questions

        n = len(load_questions(str(recipe.questions)).questions)
        return sum(min(n, cfg.limit or n) for cfg in entries.values())

    return Stage(
        "answer",
        {name: stable(cfg.model_dump(mode="json")) for name, cfg in entries.items()},
        run,
        inputs=[recipe.questions],
        served=served,
        upstream=_tuned_upstream(recipe, served),
        endpoints=_urls({n: c.model_dump(mode="json") for n, c in entries.items()}, ""),
        total=total,
    )


# ---- metrics -------------------------------------------------------------------------------------------------------


def _metrics(recipe: RecipeConfig) -> Stage:
    cfg = recipe.metrics
    assert cfg is not None
    if recipe.answer is None or recipe.questions is None:
        raise HuarizoError("stage metrics: needs an answer section (and questions) to score")
    out = recipe.run_dir / "metrics"

    def run(ctx: Context) -> StageResult:
        from huarizo.formats import write_json_atomic, write_records
        from huarizo.judge import reference_metrics

        files = {name: Path(p) for name, p in ctx.result("answer")["outputs"].items()}
        summary, rows = reference_metrics(
            str(recipe.questions), files, bootstrap=cfg.bootstrap, level=cfg.level, seed=recipe.seed
        )
        write_json_atomic(out / "metrics.json", summary)
        write_records(out / "scores.jsonl", rows)
        return _result(
            outputs={"metrics": out / "metrics.json", "scores": out / "scores.jsonl"},
            counts={f"{m}:answers": s["answers"] for m, s in summary.items()},
            figures={"models": summary},
        )

    return Stage(
        "metrics",
        {**stable(cfg.model_dump(mode="json")), "seed": recipe.seed},
        run,
        inputs=[recipe.questions],
        upstream=["answer"],
    )


# ---- judge ---------------------------------------------------------------------------------------------------------


def _judge(recipe: RecipeConfig) -> Stage:
    cfg = recipe.judge
    assert cfg is not None
    served = _served_names(recipe, "judge")
    produced = {str(a.out) for a in (recipe.answer or {}).values()}
    inputs = [Path(cfg.questions)]
    inputs += [Path(p) for p in [*cfg.answers, cfg.baseline] if p is not None and str(p) not in produced]
    inputs += [Path(p) for p in [cfg.references, cfg.instruction_difficulty, *cfg.labels] if p is not None]

    def run(ctx: Context) -> StageResult:
        from huarizo.judge import GradeConfig, grade

        data = resolve_served(cfg.model_dump(mode="json"), ctx)
        data["judge"]["cache_dir"] = data["judge"].get("cache_dir") or str(ctx.cache("judge"))
        r = grade(GradeConfig.model_validate(data), progress=False)
        return _result(
            outputs={k: v for k, v in r.outputs.items() if k in ("summary.json", "judgments.jsonl", "report.md")},
            counts=dict(r.counts),
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost=_cost(r.cost, served),
            seconds=r.seconds,
            figures={"summary": r.summary},
        )

    return Stage(
        "judge",
        stable(cfg.model_dump(mode="json")),
        run,
        inputs=inputs,
        served=served,
        upstream=(["answer"] if recipe.answer is not None else []) + _tuned_upstream(recipe, served),
        endpoints=_urls(cfg.model_dump(mode="json"), "judge"),
    )

"""`huarizo run RECIPE.yaml`: the recipe's stages in order, in one run folder, each skipped when up to date.

A run is a folder: `recipe.yaml` (the recipe resolved), one subfolder per stage with its outputs, `stage.yaml` (its
section of the recipe) and `manifest.json` (see `huarizo.pipeline.manifest`), `serve/` (the served models' configs
and logs), `cache/` (model replies, kept when a stage is redone), `summary.json`, `report.md` and `report.html`.
A stage is skipped when its manifest matches (same config, inputs, models and upstream manifests, outputs present);
a stage whose key changed is redone from scratch, and with it every stage downstream; a stage that was interrupted
continues where it stopped (datagen rounds, trainer checkpoints, answers, the judge's cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError, write_json_atomic, write_text_atomic
from huarizo.pipeline.config import BASE, TUNED, RecipeConfig
from huarizo.pipeline.display import Display
from huarizo.pipeline.manifest import (
    MANIFEST,
    PENDING,
    file_hash,
    key_hash,
    manifest_hash,
    read_json,
    up_to_date,
)
from huarizo.pipeline.servers import ServerPool
from huarizo.pipeline.stages import Stage, plan


class StageError(HuarizoError):
    """A stage that failed: names the stage and the cause."""

    def __init__(self, stage: str, cause: str) -> None:
        self.stage = stage
        super().__init__(f"stage {stage}: {cause}")


@dataclass
class RunOutcome:
    """What a run did: the status of each stage in this invocation and the summary the report shows."""

    run_dir: Path
    statuses: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        """Stages that did work in this invocation (the report, always rendered, is not counted)."""
        return [s for s, st in self.statuses.items() if st == "done" and s != "report"]


def model_identity(ref: str, announce: Callable[[str], None] | None = None) -> str:
    """What a stage's key records of a model: its fingerprint (files' names, sizes, times), or a hub id itself. A
    model converted on first use (the embedded model) is converted here, saying so through `announce`."""
    from huarizo.formats.models import model_fingerprint, resolve_model

    try:
        resolve_model(ref, announce=announce)
        return model_fingerprint(ref)
    except HuarizoError:
        raise
    except OSError as exc:
        raise HuarizoError(f"model {ref!r}: {exc}") from None


def served_model(recipe: RecipeConfig, name: str) -> str:
    """The model reference a served entry serves (`base`, `tuned` resolved)."""
    ref = recipe.serve[name].model
    if ref == BASE:
        return recipe.base_model
    if ref == TUNED:
        assert recipe.train is not None
        return str(Path(recipe.train.output_dir) / "final")
    return ref


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[int]:
    """Hold `RUN/.lock` (also inherited by the run's trainer and servers) so two runs never share a folder."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HuarizoError(
                f"{run_dir} is in use by another huarizo run (or by a trainer or server it started that has not "
                "exited yet); wait for it, or use another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield fd
    finally:
        os.close(fd)


class _Context:
    """What stage adapters get from the run (`huarizo.pipeline.stages.Context`)."""

    def __init__(self, recipe: RecipeConfig, servers: ServerPool, display: Display, keep_fds: tuple[int, ...]):
        self.recipe, self.run_dir, self.servers, self.display = recipe, recipe.run_dir, servers, display
        self.keep_fds = keep_fds
        self.results: dict[str, dict[str, Any]] = {}
        self.stage = ""

    def url(self, served: str) -> str:
        return self.servers.url(served)

    def cache(self, stage: str) -> Path:
        return self.run_dir / "cache" / stage

    def result(self, stage: str) -> dict[str, Any]:
        return dict(self.results[stage]["result"])

    def tick(self, n: int = 1) -> None:
        self.display.tick(self.stage, n)

    def progress(self, done: int, total: int | None) -> None:
        self.display.progress(self.stage, done, total)


def _check_inputs(stage: Stage) -> None:
    for path in stage.inputs:
        if not path.exists():
            where = "" if path.is_absolute() else f" (relative paths are read from the current folder, {Path.cwd()})"
            raise StageError(stage.name, f"input file {path}: no such file{where}")


def _key(recipe: RecipeConfig, stage: Stage, announce: Callable[[str], None]) -> dict[str, Any]:
    inputs = {str(path): file_hash(path) for path in stage.inputs}
    served = {}
    for name in stage.served:
        cfg = recipe.serve[name]
        identity = cfg.model_dump(mode="json", exclude={"port", "host", "model_name", "log_level", "api_keys"})
        identity["model"] = TUNED if cfg.model == TUNED else model_identity(served_model(recipe, name), announce)
        served[name] = identity
    return {
        "stage": stage.name,
        "config": stage.config,
        "inputs": inputs,
        "models": {ref: model_identity(ref, announce) for ref in stage.models},
        "served": served,
        "upstream": {u: manifest_hash(recipe.run_dir / u) for u in stage.upstream},
    }


def _check_endpoints(stage: Stage) -> None:
    """Fail fast, before any work, when a model the stage reaches at a URL (not served by the run) is down."""
    import httpx

    for where, url in stage.endpoints:
        try:
            httpx.get(url.rstrip("/") + "/models", timeout=10)
        except httpx.HTTPError as exc:
            raise StageError(
                stage.name, f"the {where} model at {url} is not reachable ({type(exc).__name__}: {exc})"
            ) from None


def _prepare(folder: Path, key: str) -> bool:
    """Make `folder` ready to run a stage with `key`: continue an interrupted run with the same key (True), or
    start afresh (False, after clearing what a run with another key left)."""
    pending = read_json(folder / PENDING)
    if isinstance(pending, dict) and pending.get("key") == key:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():  # the folder itself stays (it may be a mount point)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    write_json_atomic(folder / PENDING, {"key": key, "started_at": _now()})
    return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _needed_later(recipe: RecipeConfig, stages: Sequence[Stage]) -> set[str]:
    return {name for s in stages for name in s.served}


def run_recipe(
    recipe: RecipeConfig,
    *,
    only: Sequence[str] | None = None,
    start: str | None = None,
    source: str | None = None,
    display: Display | None = None,
) -> RunOutcome:
    """Run a recipe: every stage (or `only` these, or `start` and everything after it, redone), skipping stages that
    are up to date; then write `summary.json`, `report.md` and `report.html`. Raises `StageError` naming the stage."""
    stages = plan(recipe)
    names = [s.name for s in stages]
    known = [*names, "report"] if names else []
    for given in [*(only or []), *([start] if start else [])]:
        if given not in known:
            raise HuarizoError(f"unknown stage {given!r}; this recipe's stages: {', '.join(known) or 'none'}")
    if not stages:
        raise HuarizoError(
            "the recipe has no stage: add a datagen, filter, clean, train, answer, metrics or judge section"
        )
    first = names.index(start) if start in names else len(names) if start == "report" else None
    selected = [(only is None or s.name in only) and (first is None or i >= first) for i, s in enumerate(stages)]
    for stage in itertools.compress(stages, selected):  # a missing file fails the run before its first stage
        _check_inputs(stage)
    run_dir = recipe.run_dir
    display = display or Display(known)
    statuses: dict[str, str] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = stack.enter_context(_locked(run_dir))
            write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
        except OSError as exc:
            raise HuarizoError(f"run folder {run_dir}: {exc.strerror or exc}") from None
        served = {n: cfg.model_copy(update={"model": served_model(recipe, n)}) for n, cfg in recipe.serve.items()}
        servers = ServerPool(
            run_dir / "serve", served, keep_fds=(fd,), on_start=lambda n: display.note(f"starting {n}")
        )
        stack.callback(servers.stop)
        ctx = _Context(recipe, servers, display, (fd,))
        stack.enter_context(display)
        for i, stage in enumerate(stages):
            forced = first is not None and i >= first
            statuses[stage.name] = _one_stage(recipe, stage, ctx, selected=selected[i], forced=forced)
            later = [s for j, s in enumerate(stages) if j > i]
            servers.stop([n for n in servers.started() if n not in _needed_later(recipe, later)])
        servers.stop()
        display.start("report", None, None)
        from huarizo.pipeline.report import write_report

        try:
            summary = write_report(recipe, ctx.results, statuses, servers, time.monotonic() - started, source)
        except OSError as exc:
            display.finish("report", "failed", None, None)
            raise StageError("report", f"{exc.strerror or exc} ({exc.filename})") from None
        statuses["report"] = "done"
        display.finish("report", "done", None, None, f" ({run_dir / 'report.html'})")
    return RunOutcome(run_dir, statuses, summary)


def _one_stage(recipe: RecipeConfig, stage: Stage, ctx: _Context, *, selected: bool, forced: bool) -> str:
    """Run, skip or keep one stage; returns its status (done, skipped, kept, missing)."""
    folder = recipe.run_dir / stage.name
    display = ctx.display
    if not selected:
        return _keep_last(stage, folder, ctx)
    missing = [u for u in stage.upstream if u not in ctx.results]
    if missing:
        raise StageError(stage.name, f"needs {', '.join(missing)}, which has not finished; run it first")
    display.start(stage.name, stage.total, stage.poll)
    ctx.stage = stage.name
    try:
        parts = _key(recipe, stage, display.note)
        key = key_hash(parts)
        manifest = None if forced else up_to_date(folder, key)
        if manifest is not None:
            ctx.results[stage.name] = manifest
            display.finish(stage.name, "skipped", None, None, " (up to date)")
            return "skipped"
        manifest = _execute(stage, ctx, folder, parts, key)
    except StageError:
        display.finish(stage.name, "failed", None, None)
        raise
    except Exception as exc:
        display.finish(stage.name, "failed", None, None)
        raise _stage_error(stage.name, folder, exc) from None
    ctx.results[stage.name] = manifest
    result = manifest["result"]
    display.finish(
        stage.name, "done", result["seconds"], result.get("cost"), " (continued)" if manifest["resumed"] else ""
    )
    return "done"


def _keep_last(stage: Stage, folder: Path, ctx: _Context) -> str:
    """A stage not selected: its last results stand in for it when it has any ("kept"), else "missing"."""
    manifest = read_json(folder / MANIFEST)
    if isinstance(manifest, dict):
        ctx.results[stage.name] = manifest
        ctx.display.finish(stage.name, "kept", None, None, " (not selected; its last results are used)")
        return "kept"
    ctx.display.finish(stage.name, "not run", None, None)
    return "missing"


def _execute(stage: Stage, ctx: _Context, folder: Path, parts: dict[str, Any], key: str) -> dict[str, Any]:
    """Run the stage in its folder (continuing an interrupted run) and write its manifest; returns the manifest."""
    _check_endpoints(stage)
    resumed = _prepare(folder, key)
    write_text_atomic(folder / "stage.yaml", _yaml(parts["config"]))
    t0 = time.monotonic()
    result = stage.run(ctx)
    data = result.model_dump(mode="json")
    data["seconds"] = result.seconds or time.monotonic() - t0
    data["outputs"] = {k: str(v) for k, v in result.outputs.items()}
    manifest = {
        "stage": stage.name,
        "key": key,
        "parts": parts,
        "resumed": resumed,
        "finished_at": _now(),
        "result": data,
    }
    write_json_atomic(folder / MANIFEST, manifest)
    (folder / PENDING).unlink(missing_ok=True)
    return manifest


def _stage_error(name: str, folder: Path, exc: Exception) -> StageError:
    """The one-line error a stage's failure becomes; an unexpected one leaves its traceback in `error.log`."""
    if isinstance(exc, HuarizoError):
        return StageError(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return StageError(name, f"{exc.strerror or exc}{where}; the stages before it are kept: fix this and rerun")
    log = folder / "error.log"
    with contextlib.suppress(OSError):
        log.write_text(traceback.format_exc(), encoding="utf-8")
    return StageError(name, f"{type(exc).__name__}: {exc} (traceback in {log})")


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

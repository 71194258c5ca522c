"""`huarizo run RECIPE --dry-run`: the recipe resolved, what each stage would do, its input files, whether each
teacher, answerer and judge is reachable, and the trainer's memory estimate per GPU. Starts nothing, trains nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from huarizo.formats import HuarizoError
from huarizo.pipeline.config import SERVED, RecipeConfig
from huarizo.pipeline.manifest import MANIFEST, PENDING

PROVIDER_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "deepseek": "https://api.deepseek.com/v1",
}
"""Where the hosted providers of litellm model strings live, for the reachability check."""


def endpoints(recipe: RecipeConfig) -> list[tuple[str, dict[str, Any]]]:
    """(where, endpoint mapping) of every model the recipe reaches over HTTP: teacher, answerers, judge."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(data: Any, where: str) -> None:
        if isinstance(data, dict):
            if "api_base" in data and (data.get("model") or data.get("judge")):
                found.append((where, data))
            for key, value in data.items():
                walk(value, f"{where}.{key}")

    for stage in ("datagen", "answer", "judge"):
        section = getattr(recipe, stage)
        if section is None:
            continue
        dump = {k: v.model_dump(mode="json") for k, v in section.items()} if isinstance(section, dict) else None
        walk(dump if dump is not None else section.model_dump(mode="json"), stage)
    return found


def reachability(endpoint: dict[str, Any], recipe: RecipeConfig) -> str:
    """`served by this run (...)`, `reachable (...)` or `not reachable (...)`."""
    from huarizo.pipeline.run import served_model

    model = str(endpoint.get("model") or endpoint.get("judge"))
    base = endpoint.get("api_base")
    if base == SERVED:
        name = model.rsplit("/", 1)[-1]
        return f"served by this run: {name} = {served_model(recipe, name)} (started when a stage needs it)"
    key_env = endpoint.get("api_key_env")
    key = ""
    if key_env:
        key = f"; key in ${key_env}: {'set' if os.environ.get(key_env) else 'NOT SET'}"
    url = base or _provider_url(model)
    if url is None:
        return f"not checked: no known address for {model!r}{key}"
    try:
        resp = httpx.get(url.rstrip("/") + "/models", timeout=5)
    except httpx.HTTPError as exc:
        return f"not reachable: {url} ({type(exc).__name__}){key}"
    return f"reachable: {url} (HTTP {resp.status_code}){key}"


def _provider_url(model: str) -> str | None:
    try:
        import litellm

        _, provider, _, api_base = litellm.get_llm_provider(model)
    except Exception:
        return None
    return api_base or PROVIDER_URLS.get(provider)


def _inputs(recipe: RecipeConfig) -> list[tuple[str, Path]]:
    from huarizo.pipeline.stages import plan

    return [(stage.name, path) for stage in plan(recipe) for path in stage.inputs]


def dry_run(recipe: RecipeConfig) -> list[tuple[str, str, str]]:
    """(section, item, finding) rows of a dry run."""
    rows: list[tuple[str, str, str]] = []
    run = recipe.run_dir
    for stage in recipe.stages():
        folder = run / stage
        if (folder / MANIFEST).exists():
            state = "finished before: skipped if its config, inputs and upstream are unchanged"
        elif (folder / PENDING).exists():
            state = "interrupted before: would continue"
        else:
            state = "would run"
        rows.append(("stage", stage, state))
    for stage, path in _inputs(recipe):
        rows.append((stage, f"input {path}", "found" if path.exists() else "MISSING (the stage would fail)"))
    for where, endpoint in endpoints(recipe):
        rows.append(
            ("endpoint", f"{where}: {endpoint.get('model') or endpoint.get('judge')}", reachability(endpoint, recipe))
        )
    if recipe.train is not None:
        rows.append(("train", "launch", _launch(recipe)))
        rows.append(("train", "memory", _memory(recipe)))
    return rows


def _launch(recipe: RecipeConfig) -> str:
    from huarizo.pipeline.stages import launch_command

    return " ".join(launch_command(recipe, recipe.run_dir / "train" / "train.yaml"))


def _memory(recipe: RecipeConfig) -> str:
    from huarizo.trainer.dryrun import dry_run as train_dry_run

    cfg = recipe.train
    assert cfg is not None
    if cfg.deepspeed.num_gpus is None:
        cfg = cfg.model_copy(
            update={"deepspeed": cfg.deepspeed.model_copy(update={"num_gpus": recipe.launch.nproc_per_node})}
        )
    try:
        report = train_dry_run(cfg)
    except HuarizoError as exc:
        return f"no estimate: {exc}"
    gib = 1024**3
    return (
        f"{report.architecture}: {_count(report.params)} parameters ({report.trainable:,} trained); ZeRO-"
        f"{report.stage} on {report.gpus} GPU(s): {report.gpu_bytes / gib:.2f} GiB per GPU for model states "
        f"(activations on top), {report.cpu_bytes / gib:.2f} GiB CPU"
    )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"

"""`huarizo judge harness`: Open LLM Leaderboard style multiple-choice benchmarks through EleutherAI's
lm-evaluation-harness (optional extra `huarizo-judge[harness]`).

Hub tasks (`arc_challenge`, `hellaswag`, `mmlu`, `truthfulqa_mc2`, `winogrande`, `gsm8k`, ...) work where the hub is
reachable; offline, `write_choice_task` turns your own multiple-choice items into a local task folder for
`--include-path`. Scores go to `OUT/harness.json`; when `OUT` holds a grading run, its report is rendered again with
them (its `summary.json` is left as `grade` wrote it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError, write_json_atomic, write_records
from huarizo.judge.config import HarnessConfig
from huarizo.judge.report import HARNESS, write_report

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_choice_task(items: Iterable[dict[str, Any]], folder: str | Path, name: str) -> Path:
    """Write a local lm-eval multiple-choice task: items are `{question, choices: [...], answer: index}`.

    Returns the folder to pass as `include_path`; the task is then run by `name`.
    """
    folder = Path(folder)
    rows = list(items)
    for i, r in enumerate(rows):
        if not isinstance(r.get("choices"), list) or not 0 <= int(r.get("answer", -1)) < len(r["choices"]):
            raise HuarizoError(f"task {name}: item {i}: needs choices (a list) and answer (an index into it)")
    data = folder / f"{name}.jsonl"
    write_records(data, rows)
    (folder / f"{name}.yaml").write_text(_TASK_YAML.format(name=name, data=json.dumps(str(data.resolve()))))
    return folder


def harness(cfg: HarnessConfig) -> dict[str, dict[str, float]]:
    """Run the tasks with lm-evaluation-harness; returns task -> metric -> value and writes `OUT/harness.json`."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HuarizoError(
            "lm-evaluation-harness is not installed: pip install 'huarizo-judge[harness]' (or pip install lm-eval)"
        ) from None
    from huarizo.formats.models import resolve_model

    manager = TaskManager(include_path=cfg.include_path) if cfg.include_path else TaskManager()
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise HuarizoError(f"unknown lm-eval tasks {unknown}; see `lm-eval ls tasks` or pass --include-path")
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": resolve_model(cfg.model), "dtype": "float32"},
        tasks=cfg.tasks,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        device=cfg.device,
        task_manager=manager,
    )
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in (results or {}).get("results", {}).items():
        scores[task] = {
            k.replace(",none", ""): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    out = Path(cfg.out)
    write_json_atomic(out / HARNESS, {"model": cfg.model, "results": scores})
    if (out / "summary.json").exists():  # a grading run: its report shows the scores too
        write_report(out, json.loads((out / "summary.json").read_text(encoding="utf-8")))
    return scores

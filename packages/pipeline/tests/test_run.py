"""The whole recipe end to end on tiny models: every stage's artifacts, a rerun that does nothing, and a rerun after
one config change that redoes exactly the stages downstream of it.

The teacher and the judge are scripted OpenAI-compatible servers on loopback; the base and the tuned model are
served by the run itself (`huarizo serve` subprocesses); training runs in a `python -m huarizo.trainer` subprocess.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.datagen.generate import default_seeds
from huarizo.pipeline import RecipeConfig, run_recipe

PNG = b"\x89PNG\r\n\x1a\n"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, teacher: Any, judge: Any, tiny_recipe: Any
) -> Any:
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    data = tiny_recipe(run_dir, tiny_model_dir, teacher.url, judge.url)
    outcome = run_recipe(RecipeConfig.model_validate(data), source="tiny.yaml")
    return data, outcome, run_dir


def test_every_stage_leaves_its_artifacts(finished: Any, questions: Path) -> None:
    data, outcome, run = finished
    assert outcome.statuses == dict.fromkeys(
        ["datagen", "filter", "train", "answer", "metrics", "judge", "report"], "done"
    )
    s = json.loads((run / "summary.json").read_text())

    # datagen: exactly num_records kept, every rejected task in rejects.jsonl with its reason
    records, rejects = lines(run / "datagen/records.jsonl"), lines(run / "datagen/rejects.jsonl")
    assert len(records) == data["datagen"]["num_records"] == s["data"]["datagen"]["kept"]
    assert len(rejects) == s["data"]["datagen"]["rejected"]
    assert s["data"]["datagen"]["rejected_by_reason"] == {
        r: sum(x["reason"] == r for x in rejects) for r in {x["reason"] for x in rejects}
    }
    # filter: the seed instances plus the generated records, kept + rejected = candidates
    n_seeds = sum(len(json.loads(x)["instances"]) for x in default_seeds().read_text().splitlines() if x.strip())
    f = s["data"]["filter"]
    assert f["seed_records"] == n_seeds and f["candidates"] == n_seeds + len(records)
    assert len(lines(run / "filter/data.jsonl")) == f["kept"] == f["candidates"] - f["rejected"]

    # train: the steps asked for, checkpoints, and a model folder that carries its chat template
    metrics = lines(run / "train/metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert (run / "train/checkpoints/latest").read_text().strip() == "step-6"
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (run / "train/final").iterdir()
    }
    assert s["train"]["steps"] == 6 and s["train"]["trained_tokens"] == sum(m["trained_tokens"] for m in metrics)
    train_files = [f["path"] for f in yaml.safe_load((run / "train/train.yaml").read_text())["data"]["files"]]
    assert train_files == [str(run / "filter/data.jsonl")]

    # serve: both models were started by the run, logs in the run folder
    for name in ("base", "tuned"):
        assert "serving" in (run / "serve" / f"{name}.log").read_text()
    assert (run / "serve/tuned.yaml").read_text().count(str(run / "train/final")) == 1

    # answer: every question answered by each model, with why each answer ended
    n_questions = len(questions.read_text().splitlines())
    for name in ("base", "tuned"):
        answers = lines(run / "answer" / f"{name}.jsonl")
        assert len(answers) == n_questions and {a["model_id"] for a in answers} == {name}
        reasons = [r for a in answers for r in a["choices"][0]["finish_reasons"]]
        assert len(reasons) == n_questions
        m = s["models"][name]
        assert m["stop_rate"] == pytest.approx(sum(r == "stop" for r in reasons) / n_questions)
        assert m["stop_rate_n"] == n_questions and m["rouge_l_n"] == n_questions
        for metric in ("rouge_l", "exact_match", "stop_rate"):
            lo, hi = m[f"{metric}_ci"]
            assert lo <= m[metric] <= hi

    # judge: a verdict for every pair, win rate with a standard error
    j = s["judge"]
    assert j["n"] == j["judged"] == n_questions and j["errors"] == 0
    assert j["model"] == "tuned" and j["baseline"] == "base" and j["standard_error"] is not None
    assert j["wins"] + j["ties"] + j["losses"] == n_questions and j["smoke"] is False
    assert len(lines(run / "judge/judgments.jsonl")) == n_questions

    # summary: per stage seconds, tokens, cost and whether it was skipped
    for name in ("datagen", "filter", "train", "answer", "metrics", "judge"):
        st = s["stages"][name]
        assert st["skipped"] is False and st["seconds"] > 0
        assert (run / name / "manifest.json").exists() and (run / name / "stage.yaml").exists()
    assert s["stages"]["answer"]["tokens"] > 0 and s["stages"]["judge"]["tokens"] > 0
    # models served by the run cost nothing; the scripted teacher and judge have no known price
    assert s["stages"]["answer"]["cost"] == s["stages"]["train"]["cost"] == 0.0
    assert s["stages"]["datagen"]["cost"] is None and s["stages"]["judge"]["cost"] is None
    assert "| datagen | done |" in (run / "report.md").read_text() and "| unknown |" in (run / "report.md").read_text()
    assert s["stages"]["serve"]["skipped"] is False and s["stages"]["serve"]["counts"]["servers"] == 2

    # report: every section, plots inlined, nothing fetched from elsewhere
    md = (run / "report.md").read_text()
    for section in ("## Data", "## Training", "## Reference metrics", "## Answers side by side", "## Judge"):
        assert section in md
    assert "## Cost and time" in md and "smoke judge" not in md
    for plot in ("funnel", "loss", "metrics"):
        assert (run / "report" / f"{plot}.png").read_bytes().startswith(PNG)
        assert f"(report/{plot}.png)" in md
    html = (run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_rerun_does_nothing_and_starts_no_server(finished: Any) -> None:
    data, _, run = finished
    before = {name: (run / "serve" / f"{name}.log").stat().st_size for name in ("base", "tuned")}
    outcome = run_recipe(RecipeConfig.model_validate(data), source="tiny.yaml")
    assert outcome.ran == []
    assert {k: v for k, v in outcome.statuses.items() if k != "report"} == dict.fromkeys(
        ["datagen", "filter", "train", "answer", "metrics", "judge"], "skipped"
    )
    assert outcome.summary["stages"]["serve"]["skipped"] is True
    assert {name: (run / "serve" / f"{name}.log").stat().st_size for name in ("base", "tuned")} == before
    assert all(outcome.summary["stages"][s]["skipped"] for s in ("datagen", "train", "judge"))


def test_a_config_change_redoes_exactly_the_stages_downstream(finished: Any, questions: Path) -> None:
    data, _, run = finished
    changed = {**data, "train": {**data["train"], "optim": {**data["train"]["optim"], "lr": 1e-3}}}
    outcome = run_recipe(RecipeConfig.model_validate(changed), source="tiny.yaml")
    assert outcome.statuses["datagen"] == outcome.statuses["filter"] == "skipped"
    assert outcome.ran == ["train", "answer", "metrics", "judge"]
    assert yaml.safe_load((run / "train/train.yaml").read_text())["optim"]["lr"] == 1e-3
    # the retrained model is asked again; the base model's answers come from the run's cache
    counts = outcome.summary["stages"]["answer"]["counts"]
    n_questions = len(questions.read_text().splitlines())
    assert counts["tuned:asked"] == n_questions and counts["base:cached"] == n_questions

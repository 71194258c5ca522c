"""Answer, metrics, judge and report against answerers whose answers are known: the figures in summary.json and the
report are checked against the truth, and whatever a model writes is escaped in the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.formats.testing import Reply, ScriptedServer
from huarizo.pipeline import RecipeConfig, run_recipe

RAMBLE = "<script>alert('x')</script> Well, there are many ways to look at this question, and before answering it " * 2


@pytest.fixture(scope="module")
def answerers(questions: Path) -> Iterator[tuple[str, str]]:
    refs = {}
    for line in questions.read_text().splitlines():
        q = json.loads(line)
        refs[q["turns"][0]] = q["reference"][0]

    def oracle(req: dict[str, Any]) -> Reply:  # the reference answer, ended by itself
        return Reply(text=refs[req["messages"][-1]["content"]], finish_reason="stop")

    def rambler(req: dict[str, Any]) -> Reply:  # a long answer cut off at max_tokens, or by a stop string
        if len(req["messages"][-1]["content"]) % 2:
            return Reply(text=RAMBLE, finish_reason="stop", stop_reason="### Instruction:")
        return Reply(text=RAMBLE, finish_reason="length")

    with ScriptedServer(oracle, model="oracle") as a, ScriptedServer(rambler, model="rambler") as b:
        yield a.url, b.url


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory, answerers: Any, judge: Any, questions: Path) -> Any:
    run = tmp_path_factory.mktemp("answers") / "run"
    recipe = {
        "run_dir": str(run),
        "questions": str(questions),
        "answer": {
            "oracle": {"endpoint": {"model": "openai/oracle", "api_base": answerers[0]}, "max_tokens": 32},
            "rambler": {"endpoint": {"model": "openai/rambler", "api_base": answerers[1]}, "max_tokens": 32},
        },
        "metrics": {"bootstrap": 200},
        "judge": {"judge": {"model": "openai/judge", "api_base": judge.url}, "baseline": "rambler"},
        "report": {"examples": 4},
    }
    outcome = run_recipe(RecipeConfig.model_validate(recipe), source="answers.yaml")
    return outcome.summary, run


def test_reference_metrics_and_stop_rate_match_the_truth(summary: Any, questions: Path) -> None:
    s, _ = summary
    n = len(questions.read_text().splitlines())
    oracle, rambler = s["models"]["oracle"], s["models"]["rambler"]
    assert oracle["answers"] == rambler["answers"] == n
    assert oracle["stop_rate"] == 1.0 and rambler["stop_rate"] == 0.0
    assert oracle["exact_match"] == 1.0 and oracle["rouge_l"] == pytest.approx(1.0)
    assert rambler["exact_match"] == 0.0 and rambler["rouge_l"] < 0.2
    assert oracle["rouge_l_ci"] == pytest.approx([1.0, 1.0]) and oracle["stop_rate_se"] == 0.0


def test_judge_figures_count_every_pair(summary: Any, questions: Path) -> None:
    s, _ = summary
    n = len(questions.read_text().splitlines())
    j = s["judge"]  # the scripted judge prefers the longer answer: the rambler's, every time
    assert (j["n"], j["judged"], j["errors"]) == (n, n, 0)
    assert (j["model"], j["baseline"], j["win_rate"], j["losses"]) == ("oracle", "rambler", 0, n)
    assert j["standard_error"] == 0
    assert s["stages"]["serve"]["skipped"] is True  # nothing was served by the run


def test_report_escapes_what_models_write(summary: Any) -> None:
    _, run = summary
    for name in ("report.md", "report.html"):
        text = (run / name).read_text()
        assert "&lt;script&gt;alert(" in text and "<script>" not in text
    md = (run / "report.md").read_text()
    assert "| oracle | 50 | 100.0% [100.0%, 100.0%] |" in md
    assert "| What is 7 plus 5? | 12 | 12 |" in md


def test_from_redoes_that_stage_and_after_it_only(summary: Any) -> None:
    from huarizo.formats import HuarizoError

    _, run = summary
    recipe = RecipeConfig.model_validate(yaml.safe_load((run / "recipe.yaml").read_text()))
    outcome = run_recipe(recipe, start="judge")
    assert outcome.statuses == {"answer": "kept", "metrics": "kept", "judge": "done", "report": "done"}
    outcome = run_recipe(recipe, only=["metrics"])
    assert outcome.statuses["metrics"] == "skipped" and outcome.ran == []
    with pytest.raises(HuarizoError, match="unknown stage 'train'; this recipe's stages: answer, metrics, judge"):
        run_recipe(recipe, only=["train"])

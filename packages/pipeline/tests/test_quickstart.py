"""The quickstart on the embedded model (slow: minutes on a CPU): the targets the README states.

- the tuned model ends at least 80% of its answers by itself (before max_tokens); the base model's rate is reported;
- every question pair gets a verdict (probability verdicts), and the report calls the embedded judge a smoke judge;
- ROUGE-L for both models, with intervals;
- a rerun of the same command does nothing and starts no server.
The wall time (15 minutes at most on 2 cores, first conversion included) is measured, not asserted: see the README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from huarizo.pipeline import RecipeConfig, run_recipe

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "recipes" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_meets_its_targets(tmp_path: Path, questions: Path) -> None:
    recipe = RecipeConfig.load(QUICKSTART, [f"run_dir={tmp_path / 'quickstart'}"])
    s = run_recipe(recipe, source=str(QUICKSTART)).summary
    n = len(questions.read_text().splitlines())

    assert s["models"]["tuned"]["stop_rate"] >= 0.8
    assert s["models"]["base"]["stop_rate_n"] == n
    for model in ("base", "tuned"):
        m = s["models"][model]
        assert m["rouge_l"] is not None and m["rouge_l_ci"][0] <= m["rouge_l"] <= m["rouge_l_ci"][1]
    j = s["judge"]
    assert j["n"] == j["judged"] == n and j["errors"] == 0
    assert j["verdicts_read"].get("logprobs") == 2 * n and j["standard_error"] is not None
    assert j["smoke"] is True and "smoke judge" in (tmp_path / "quickstart" / "report.md").read_text()

    again = run_recipe(recipe, source=str(QUICKSTART))
    assert again.ran == [] and again.summary["stages"]["serve"]["skipped"] is True

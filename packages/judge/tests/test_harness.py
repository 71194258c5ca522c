"""lm-evaluation-harness bridge: a local multiple-choice task built from real questions, run on a tiny model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from huarizo.formats.errors import HuarizoError
from huarizo.judge import HarnessConfig, harness, write_choice_task


def _category_task(shared_data, folder):  # type: ignore[no-untyped-def]
    """Which category is this Vicuna-80 question? Four choices, the true one rotating through the positions."""
    rows = [json.loads(line) for line in (shared_data / "fastchat/vicuna80_legacy/question.jsonl").open()]
    cats = sorted({r["category"] for r in rows})
    items = []
    for i, r in enumerate(rows[::8]):
        others = [c for c in cats if c != r["category"]][i % 5 : i % 5 + 3]
        choices = [*others[: i % 4], r["category"], *others[i % 4 :]]
        items.append({"question": r["text"], "choices": choices, "answer": i % 4})
    return write_choice_task(items, folder, "vicuna_category"), len(items)


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm-evaluation-harness not installed (huarizo-judge[harness])"
)
def test_local_multiple_choice_task_on_tiny_model(tmp_path, shared_data, tiny_model_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, n = _category_task(shared_data, tmp_path / "tasks")
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(
        json.dumps({"mode": "single", "judge": "j", "questions": "q", "models": {}, "audit": {"errors": 0}})
    )
    cfg = HarnessConfig(model=str(tiny_model_dir), tasks=["vicuna_category"], include_path=str(folder), out=str(out))
    scores = harness(cfg)
    acc = scores["vicuna_category"]["acc"]
    assert 0.0 <= acc <= 1.0 and n == 10
    assert json.loads((out / "harness.json").read_text())["results"]["vicuna_category"]["acc"] == acc
    assert "## lm-evaluation-harness" in (out / "report.md").read_text()  # folded into the run's report
    with pytest.raises(HuarizoError, match="unknown lm-eval tasks"):
        harness(cfg.model_copy(update={"tasks": ["no_such_task_here"]}))


def test_bad_choice_items_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HuarizoError, match="item 1: needs choices"):
        write_choice_task(
            [{"question": "q", "choices": ["a"], "answer": 0}, {"question": "q", "answer": 0}], tmp_path, "t"
        )

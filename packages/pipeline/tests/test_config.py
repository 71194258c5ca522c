"""The recipe config: sections are the stage packages' own configs, run paths are filled in, errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from huarizo.formats import ConfigError
from huarizo.formats.cli import main
from huarizo.judge.answer import AnswerConfig
from huarizo.judge.grade import GradeConfig
from huarizo.pipeline import RecipeConfig
from huarizo.trainer.config import TrainConfig

RECIPE = {
    "run_dir": "runs/t",
    "seed": 7,
    "base_model": "tiny",
    "questions": "q.jsonl",
    "serve": {"base": {"model": "base"}, "tuned": {"model": "tuned"}},
    "datagen": {"teacher": {"model": "openai/base", "api_base": "served"}},
    "filter": {"rouge_threshold": 0.5},
    "train": {"optim": {"lr": 1e-4}},
    "answer": {
        "base": {"endpoint": {"model": "openai/base", "api_base": "served"}},
        "tuned": {"endpoint": {"model": "openai/tuned", "api_base": "served"}},
    },
    "judge": {"judge": {"model": "openai/base", "api_base": "served"}, "baseline": "base"},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sections_are_the_stage_configs_with_run_paths_filled_in() -> None:
    r = RecipeConfig.model_validate(RECIPE)
    assert isinstance(r.train, TrainConfig) and isinstance(r.judge, GradeConfig)
    assert isinstance(r.answer["tuned"], AnswerConfig)
    assert r.train.output_dir == Path("runs/t/train") and r.train.model.ref == "tiny" and r.train.optim.seed == 7
    assert r.datagen.output_dir == Path("runs/t/datagen") and r.datagen.seed == 7
    assert r.datagen.filter.rouge_threshold == 0.5  # the recipe's filter is datagen's too
    assert r.answer["tuned"].out == "runs/t/answer/tuned.jsonl" and r.answer["tuned"].model_id == "tuned"
    assert r.answer["base"].questions == "q.jsonl"
    assert r.judge.baseline == "runs/t/answer/base.jsonl" and r.judge.answers == ["runs/t/answer/tuned.jsonl"]
    assert r.judge.out == "runs/t/judge" and r.judge.seed == 7
    assert r.serve["base"].port == 0 and r.serve["base"].model_name == "base"
    assert r.stages() == ["datagen", "filter", "train", "answer", "judge", "report"]
    # the resolved recipe (what RUN/recipe.yaml holds) loads again to the same config
    assert RecipeConfig.model_validate(yaml.safe_load(r.to_yaml())) == r


def test_unknown_key_is_one_line_naming_the_stage_and_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, {**RECIPE, "train": {"optim": {"lrr": 1e-4}}})
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: stage train: unknown key 'optim.lrr'"


def test_bad_value_from_set_names_set_and_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        RecipeConfig.load(write(tmp_path, RECIPE), ["judge.judge.concurrency=0"])
    assert str(exc.value) == "--set: stage judge: judge.concurrency: Input should be greater than or equal to 1 (got 0)"


def test_a_path_the_run_owns_is_refused(tmp_path: Path) -> None:
    data = {**RECIPE, "train": {"output_dir": "elsewhere"}}
    with pytest.raises(ConfigError, match=r"stage train: output_dir is set by the run \(runs/t/train\)"):
        RecipeConfig.load(write(tmp_path, data))


def test_a_served_endpoint_must_name_a_served_model(tmp_path: Path) -> None:
    data = {**RECIPE, "judge": {"judge": {"model": "openai/big", "api_base": "served"}, "baseline": "base"}}
    with pytest.raises(ConfigError, match=r"stage judge: judge is served by the run but names no entry of serve"):
        RecipeConfig.load(write(tmp_path, data))


def test_the_teacher_cannot_be_the_model_being_trained(tmp_path: Path) -> None:
    data = {**RECIPE, "datagen": {"teacher": {"model": "openai/tuned", "api_base": "served"}}}
    with pytest.raises(ConfigError, match="the teacher cannot be the model this run trains"):
        RecipeConfig.load(write(tmp_path, data))


def test_schema_lists_every_stage_and_leaves_run_paths_optional(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "schema", "recipe"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"datagen", "filter", "clean", "train", "answer", "metrics", "judge", "serve", "launch"} <= set(
        schema["properties"]
    )
    assert schema["$defs"]["AnswerConfig"]["required"] == ["endpoint"]
    assert schema["$defs"]["GradeConfig"]["required"] == ["judge"]

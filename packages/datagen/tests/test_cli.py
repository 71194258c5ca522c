"""Every datagen command's options come from its config (file < --set < flags); bad values are one line and exit 1;
`DatagenConfig` embeds in a larger recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from huarizo.datagen import DatagenConfig, TeacherConfig
from huarizo.formats import EndpointConfig, HuarizoConfig, load, write_records
from huarizo.formats.cli import main
from huarizo.formats.config import ConfigError
from huarizo.formats.testing import ScriptedServer, scripted_teacher


def _error(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """What a user sees: `error: ...` naming where the bad value came from, never a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    assert all(n in err for n in names), err
    return err


def test_datagen_run_precedence_file_then_set_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(scripted_teacher) as server:
        cfg = tmp_path / "gen.yaml"
        data = {"num_records": 3, "progress": False, "output_dir": str(tmp_path / "a"),
                "teacher": {"model": "openai/teacher", "api_base": server.url, "temperature": 0.5}}  # fmt: skip
        cfg.write_text(yaml.safe_dump(data))
        args = ["datagen", "run", str(cfg), "--set", "num_records=4", "--set", "teacher.temperature=0.6"]
        assert main([*args, "--num-records", "5", "--output-dir", str(tmp_path / "b")]) == 0
        assert "5 records kept" in capsys.readouterr().out
        resolved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
        assert resolved["num_records"] == 5 and resolved["teacher"]["temperature"] == 0.6
        assert [r["temperature"] for r in server.requests] == [0.6] * len(server.requests)
        assert main([*args, "--teacher-temperature", "0.7", "--output-dir", str(tmp_path / "c")]) == 0
        assert "4 records kept" in capsys.readouterr().out and server.requests[-1]["temperature"] == 0.7


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["datagen", "run", "--num-records", "0"], ["--num-records", "num_records"]),
        (["datagen", "run", "--teacher-top-p", "1.5"], ["--teacher-top-p"]),
        (["datagen", "run", "--set", "teacher.bogus=1"], ["--set", "teacher.bogus"]),
        (["datagen", "run", "--teacher-api-key-env", "sk-123"], ["--teacher-api-key-env", "environment variable"]),
        (["clean-sharegpt", "IN.json", "OUT.jsonl", "--max-length", "0"], ["--max-length", "max_length"]),
        (["clean-sharegpt", "IN.json", "OUT.jsonl", "--min-pairs", "0"], ["--min-pairs"]),
        (["filter", "IN.jsonl", "OUT.jsonl", "--rouge-threshold", "2"], ["--rouge-threshold"]),
        (["filter", "IN.jsonl", "OUT.jsonl", "--checks", "rouge,spelling"], ["--checks", "spelling"]),
        (["datagen", "identity", "OUT.jsonl", "--name", "Llamita", "--org", "Huarizo", "--count", "0"], ["--count"]),
        (["datagen", "identity", "OUT.jsonl", "--org", "Huarizo"], ["name"]),
    ],
)
def test_bad_values_are_one_error_naming_the_flag(
    argv: list[str], names: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / a) if a.split(".")[0] in {"IN", "OUT"} else a for a in argv]
    assert main(argv) == 1
    _error(capsys, *names)
    assert not list(tmp_path.iterdir())  # nothing written


def test_clean_sharegpt_takes_a_config_file_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = [{"from": r, "value": " ".join(["word"] * 30)} for _ in range(3) for r in ("human", "gpt")]
    src, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    write_records(src, [{"id": "c", "conversations": long}, {"id": "d", "conversations": long[:1]}])
    cfg = tmp_path / "clean.yaml"
    cfg.write_text("max_length: 4096\nmin_pairs: 1\n")
    assert main(["clean-sharegpt", str(src), str(out), "--config", str(cfg)]) == 0
    assert [c.id for c in load(out, "sharegpt")] == ["c"]
    assert main(["clean-sharegpt", str(src), str(out), "--config", str(cfg), "--set", "max_length=64"]) == 0
    assert [c.id for c in load(out, "sharegpt")] == ["c_0", "c_1", "c_2"]  # 60 words per pair, budget 64
    assert main(["clean-sharegpt", str(src), str(out), "--config", str(cfg), "--set", "max_length=64",
                 "--max-length", "120"]) == 0  # fmt: skip
    assert [c.id for c in load(out, "sharegpt")] == ["c_0", "c_1"]
    assert "kept 1 conversations (1 split, 2 written)" in capsys.readouterr().out


def test_filter_takes_a_config_file_and_comma_separated_checks(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"instruction": "Describe the picture of a cat.", "output": "A cat."},
            {"instruction": "Hi.", "output": "Hello."}]  # fmt: skip
    write_records(src, rows)
    cfg = tmp_path / "filter.yaml"
    cfg.write_text("checks: [rouge]\nmin_words: 1\n")
    assert main(["filter", str(src), str(out), "--config", str(cfg)]) == 0
    assert len(load(out, "alpaca")) == 2
    assert main(["filter", str(src), str(out), "--config", str(cfg), "--checks", "keywords,length"]) == 0
    assert len(load(out, "alpaca")) == 1  # "Hi." passes length with min_words 1 from the file
    assert main(["filter", str(src), str(out), "--config", str(cfg), "--checks", "keywords,length",
                 "--min-words", "2"]) == 0  # fmt: skip
    assert len(load(out, "alpaca", allow_empty=True)) == 0


def test_datagen_config_is_a_section_of_a_larger_recipe(tmp_path: Path) -> None:
    class Recipe(HuarizoConfig):
        datagen: DatagenConfig
        judge: EndpointConfig

    path = tmp_path / "recipe.yaml"
    path.write_text(
        "datagen:\n  pipeline: self-instruct\n  teacher: {model: openai/gpt-4o-mini, api_base: null, mode: chat}\n"
        "judge: {model: openai/gpt-4o}\n"
    )
    recipe = Recipe.load(path, ["datagen.teacher.api_key_env=OPENAI_API_KEY", "datagen.num_records=7"])
    teacher = recipe.datagen.teacher
    assert isinstance(teacher, EndpointConfig) and isinstance(teacher, TeacherConfig)
    assert (teacher.model, teacher.api_key_env) == ("openai/gpt-4o-mini", "OPENAI_API_KEY")
    assert teacher.request_timeout == 120 and teacher.max_retries == 5  # EndpointConfig's defaults
    assert recipe.datagen.num_records == 7 and recipe.datagen.teacher.mode == "chat"
    with pytest.raises(ConfigError, match=r"unknown key 'datagen.teacher.timeout'"):
        Recipe.load(path, ["datagen.teacher.timeout=3"])
    schema = json.dumps(Recipe.model_json_schema())
    assert "request_timeout" in schema and "tasks_per_request" in schema
    assert Recipe.model_validate(yaml.safe_load(recipe.to_yaml())) == recipe  # the resolved config round-trips

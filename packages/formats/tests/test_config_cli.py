"""Config loading with overrides and the formats commands of the `huarizo` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from huarizo.formats import ConfigError, HuarizoConfig
from huarizo.formats.endpoint import EndpointConfig
from huarizo.formats.models import ModelError, resolve_model


class Optim(BaseModel):
    model_config = {"extra": "forbid"}
    lr: float = 2e-5
    epochs: int = 3


class Recipe(HuarizoConfig):
    name: str
    files: list[str] = Field(default_factory=list)
    optim: Optim = Optim()


def test_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: alpaca\noptim:\n  lr: 1e-4\n")
    cfg = Recipe.load(path, ["optim.epochs=5", "files=[a.json, b.json]", "name=vicuna"])
    assert cfg == Recipe(name="vicuna", files=["a.json", "b.json"], optim=Optim(lr=1e-4, epochs=5))
    assert Recipe.load(None, ["name=x"]).name == "x"
    assert "epochs: 5" in cfg.to_yaml()


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("name: a\noptim:\n  lrr: 1\n", [], "r.yaml: unknown key 'optim.lrr'"),
        ("name: a\n", ["optim.epochs=many"], "--set: optim.epochs: Input should be a valid integer"),
        ("name: a\n", ["batch=3"], "--set: unknown key 'batch'"),
        ("optim: {}\n", [], "r.yaml: missing required key 'name'"),
        ("- a\n", [], "top level must be a mapping"),
        ("name: [\n", [], "not valid YAML"),
        ("name: a\n", ["optim.lr"], "expected KEY=VALUE"),
    ],
)
def test_config_errors_name_the_key_and_the_source(
    tmp_path: Path, yaml_text: str, overrides: list[str], message: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        Recipe.load(path, overrides)
    assert message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        Recipe.load(tmp_path / "nope.yaml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from huarizo.formats.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_render_highlights_trained_text(shared_data: Path) -> None:
    data = shared_data / "fastchat/dummy_conversation.json"
    res = run("render", str(data), "--template", "vicuna_v1.1", "-n", "1", "--show-trained")
    assert res.returncode == 0, res.stderr
    assert "USER: Who are you? ASSISTANT:⟦ I am Vicuna" in res.stdout
    assert "⟦ You too!</s>⟧" in res.stdout


def _expected_plain(path: Path, template: str) -> str:
    from huarizo.formats import get_template, load, to_conversations

    convs = [c for r in load(path) for c in to_conversations(r)]
    t = get_template(template)
    return "".join(
        f"--- record {k} ({c.id}) ---\n" + "".join(s.text for s in t.render(c)) + "\n" for k, c in enumerate(convs)
    )


@pytest.mark.parametrize("template", ["vicuna_v1.1", "chatml"])
def test_render_piped_is_the_python_apis_text_unwrapped(shared_data: Path, template: str) -> None:
    """Piped, `render` prints every record exactly as `template.render` joins it: 500/500 ShareGPT conversations
    (it used to wrap lines at 80 columns)."""
    data = shared_data / "fastchat/dummy_conversation.json"
    res = run("render", str(data), "--template", template, "-n", "500")
    assert res.returncode == 0, res.stderr
    assert res.stdout == _expected_plain(data, template)


def test_render_plain_in_a_terminal(shared_data: Path, tmp_path: Path) -> None:
    """In a terminal `render` colours and wraps; `--plain` prints the same plain text as a pipe gets."""
    import os
    import pty

    data = tmp_path / "few.json"
    data.write_text(json.dumps(json.loads((shared_data / "fastchat/dummy_conversation.json").read_text())[:5]))

    def in_terminal(*extra: str) -> str:
        main, child = pty.openpty()
        code = "import sys; from huarizo.formats.cli import main; sys.exit(main())"
        cmd = [sys.executable, "-c", code, "render", str(data), "--template", "vicuna_v1.1", "-n", "5", *extra]
        proc = subprocess.Popen(cmd, stdout=child, stderr=subprocess.PIPE, env=os.environ | {"COLUMNS": "80"})
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
        assert proc.wait(timeout=120) == 0
        return b"".join(chunks).decode().replace("\r\n", "\n")

    expected = _expected_plain(data, "vicuna_v1.1")
    assert in_terminal("--plain") == expected
    assert in_terminal() != expected  # rich: rules and colours


def test_render_with_a_tokenizer_counts_trained_tokens(shared_data: Path, tiny_model_dir: Path) -> None:
    data = shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json"
    res = run(
        "render", str(data), "--template", "alpaca", "--tokenizer", str(tiny_model_dir), "-n", "2", "--show-trained"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("trained]") == 2 and "### Response:⟦" in res.stdout


def test_cli_errors_have_no_traceback(tmp_path: Path) -> None:
    res = run("render", str(tmp_path / "missing.jsonl"), "--template", "alpaca")
    assert res.returncode == 1 and "missing.jsonl: no such file" in res.stderr and "Traceback" not in res.stderr
    res = run("config", "schema", "no-such-config")
    assert res.returncode == 1 and "unknown config 'no-such-config'" in res.stderr


def test_version_lists_the_installed_packages() -> None:
    res = run("--version")
    assert res.returncode == 0 and "huarizo-formats 0." in res.stdout
    assert all(line.startswith("huarizo-") for line in res.stdout.splitlines())


def test_output_to_a_reader_that_left_ends_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi."}\n' * 3, encoding="utf-8")
    code = "import sys; from huarizo.formats.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "validate", str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has what it wanted: every write now fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""


def test_model_references(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    assert resolve_model(tiny_model_dir) == str(tiny_model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"'someorg/some-model' not found: .* offline mode is on"):
        resolve_model("someorg/some-model")  # a mistyped or absent hub id fails at once, not after retries
    (tmp_path / "hub" / "models--someorg--some-model").mkdir(parents=True)
    assert resolve_model("someorg/some-model") == "someorg/some-model"  # in the cache: transformers loads it
    with pytest.raises(ModelError, match=r"without config\.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelError, match="no such folder or file"):
        resolve_model("./not/here")


def test_tiny_model_is_built_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUARIZO_CACHE", str(tmp_path))
    first = resolve_model("tiny")
    stamp = (Path(first) / "config.json").stat().st_mtime_ns
    assert resolve_model("tiny") == first and (Path(first) / "config.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama"]


@pytest.mark.slow
def test_embedded_model_loads_and_generates() -> None:
    import torch

    from huarizo.formats.models import load_causal_lm

    model, tok = load_causal_lm("embedded")
    assert model.num_parameters() > 200_000_000 and not getattr(model, "is_quantized", False)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


class Judged(HuarizoConfig):
    judge: EndpointConfig
    rounds: int = Field(3, ge=1, description="how many rounds")
    plots: bool = True
    files: list[str] = Field(default_factory=list)


def test_generated_flags_follow_one_precedence_and_name_their_source(tmp_path: Path) -> None:
    import argparse

    from huarizo.formats.cli import add_config_options, config_from_args

    parser = argparse.ArgumentParser()
    add_config_options(parser, Judged, ["judge.model", "judge.api_key_env", "rounds", "plots", "files"])
    helptext = parser.format_help()
    assert "--judge-api-key-env" in helptext and "how many rounds (default: 3)" in helptext
    path = tmp_path / "j.yaml"
    path.write_text("judge: {model: openai/a, concurrency: 2}\nrounds: 4\n")
    # file < --set < flags
    args = parser.parse_args([str(path), "--set", "rounds=5", "--set", "judge.model=openai/b"])
    cfg = config_from_args(Judged, args)
    assert (cfg.rounds, cfg.judge.model, cfg.judge.concurrency) == (5, "openai/b", 2)
    args = parser.parse_args(
        [str(path), "--set", "rounds=5", "--rounds", "6", "--no-plots", "--files", "a", "--files", "b"]
    )
    cfg = config_from_args(Judged, args)
    assert (cfg.rounds, cfg.plots, cfg.files) == (6, False, ["a", "b"])
    path.write_text("judge: {model: openai/a, api_key_env: KEY}\n")
    assert (
        config_from_args(Judged, parser.parse_args([str(path), "--judge-api-key-env", "null"])).judge.api_key_env
        is None
    )
    # a bad value names the flag it came from, not the file or --set
    with pytest.raises(ConfigError, match=r"--rounds: rounds: Input should be greater than or equal to 1"):
        config_from_args(Judged, parser.parse_args([str(path), "--rounds", "0"]))
    with pytest.raises(ConfigError, match=r"--judge-api-key-env: .*not an environment variable name"):
        config_from_args(Judged, parser.parse_args([str(path), "--judge-api-key-env", "sk-123"]))


def test_endpoint_stores_the_key_name_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from huarizo.formats import HuarizoError

    ep = EndpointConfig(model="openai/j", api_key_env="HUARIZO_TEST_KEY")
    monkeypatch.setenv("HUARIZO_TEST_KEY", "sk-secret")
    assert ep.client().api_key == "sk-secret" and "sk-secret" not in ep.to_yaml()
    monkeypatch.delenv("HUARIZO_TEST_KEY")
    with pytest.raises(HuarizoError, match="HUARIZO_TEST_KEY is not set"):
        ep.api_key()

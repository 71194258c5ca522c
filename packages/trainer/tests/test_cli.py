"""Config errors, `--dry-run` on the shipped recipes, the DeepSpeed memory accounting, and apply-delta."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from huarizo.formats import ConfigError
from huarizo.trainer import TrainConfig, apply_delta, dry_run
from huarizo.trainer.dryrun import model_states_bytes

from .conftest import REPO, TINY_CPU, train_env

HUARIZO = str(Path(sys.executable).parent / "huarizo")


def _huarizo(*args: str) -> subprocess.CompletedProcess[str]:
    env = train_env(HF_HUB_OFFLINE="1")
    return subprocess.run([HUARIZO, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lrr=1e-4", "optim.lrr"),
        ("deepspeed.stage=5", "deepspeed.stage"),
        ("batching.mode=zigzag", "batching.mode"),
    ],
)
def test_bad_config_names_the_key(override: str, key: str) -> None:
    proc = _huarizo("train", str(TINY_CPU), "--set", override)
    assert proc.returncode == 1
    assert key in proc.stderr and "--set" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_file_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  ref: tiny\n  dtpye: bfloat16\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.dtpye"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="pack_length"):
        TrainConfig.load(None, ["data.max_length=512", "batching.pack_length=256"])
    with pytest.raises(ConfigError, match="offload_params needs stage 3"):
        TrainConfig.load(None, ["deepspeed.offload_params=true"])


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    proc = _huarizo(
        "train",
        str(TINY_CPU),
        "--set",
        f"data.files=[{tmp_path / 'nope.json'}]",
        "--set",
        f"output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 1 and "nope.json: no such file" in proc.stderr


@pytest.mark.parametrize(
    ("recipe", "billions"), [("alpaca-7b", 6.74), ("vicuna-7b", 6.74), ("alpaca-lora", 6.76), ("tiny-cpu", 0.0)]
)
def test_recipes_pass_dry_run_offline(recipe: str, billions: float) -> None:
    report = dry_run(TrainConfig.load(REPO / "configs" / "train" / f"{recipe}.yaml"))
    assert round(report.params / 1e9, 2) == billions
    if recipe == "alpaca-lora":
        assert report.trainable == 16 * 4096 * 2 * 4 * 32  # r x (in + out) x 4 projections x 32 layers
    if recipe == "alpaca-7b":  # ZeRO-3 on 4 GPUs: 18 bytes per parameter / 4 + 4 bytes of the largest layer
        assert report.gpu_bytes == int(4 * report.largest_layer + 18 * report.params / 4)


def test_dry_run_cli_prints_size_and_memory() -> None:
    proc = _huarizo("train", "--dry-run", str(REPO / "configs/train/alpaca-7b.yaml"), "--set", "deepspeed.stage=2")
    assert proc.returncode == 0, proc.stderr
    assert "6,738,415,616" in proc.stdout and "ZeRO stage : 2 on 4 GPU(s)" in proc.stdout


def test_unknown_hub_model_dry_run_asks_for_an_architecture() -> None:
    with pytest.raises(Exception, match=r"model\.architecture"):
        dry_run(TrainConfig.load(None, ["model.ref=someone/unknown-model"]))


def test_memory_accounting_matches_deepspeed_estimators() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, layer = 6_738_415_616, 131_072_000
    kw = {"weight_bytes": 2, "offload_params": False}
    for gpus in (1, 4, 8):
        _, ds2 = estimate_zero2_model_states_mem_needs(p, gpus, 1, cpu_offload=False)
        assert model_states_bytes(p, p, layer, 2, gpus, offload_opt=False, **kw)[0] == ds2
        _, ds2o = estimate_zero2_model_states_mem_needs(p, gpus, 1, cpu_offload=True)
        assert model_states_bytes(p, p, layer, 2, gpus, offload_opt=True, **kw)[0] == ds2o
        ds3 = estimate_zero3_model_states_mem_needs(p, layer, gpus, 1, cpu_offload=False, cpu_offload_params=False)[1]
        assert model_states_bytes(p, p, layer, 3, gpus, offload_opt=False, **kw)[0] == ds3


def test_apply_delta_restores_the_tuned_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    tuned = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    delta = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for (_, t), (_, b), (_, d) in zip(
            tuned.named_parameters(), base.named_parameters(), delta.named_parameters(), strict=True
        ):
            t.add_(torch.randn_like(t) * 0.1)
            d.copy_(t - b)
    delta.save_pretrained(tmp_path / "delta")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "delta")
    out = apply_delta(str(tiny_model_dir), str(tmp_path / "delta"), tmp_path / "target")
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, t in tuned.state_dict().items():
        torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6)


def test_users_ds_config_keeps_its_sections_and_gets_our_batch_sizes(tmp_path: Path) -> None:
    from huarizo.trainer import ds_config

    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 1, "reduce_bucket_size": 5e7}, "bf16": {"enabled": false}}')
    cfg = TrainConfig.load(
        None, [f"deepspeed.config_file={user}", "batching.micro_batch_size=3", "optim.grad_accum=5", "optim.clip=0.5"]
    )
    conf = ds_config(cfg, world_size=4)
    assert conf["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 5e7} and conf["bf16"] == {"enabled": False}
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"]) == (3, 5)
    assert conf["train_batch_size"] == 60 and conf["gradient_clipping"] == 0.5


def _probe(tmp: Path, kind: str) -> tuple[list[str], str]:
    """`huarizo train` arguments for one bad input, and the start of the one line it must print."""
    good = str(REPO / "configs/train/data/tiny-alpaca.json")
    out = tmp / "out"
    base = ["--set", f"output_dir={out}", "--set", f"data.files=[{good}]"]
    if kind == "config-folder":
        (tmp / "cfg.yaml").mkdir()
        return [str(tmp / "cfg.yaml")], f"{tmp / 'cfg.yaml'}: is a folder, not a config file"
    if kind == "config-not-utf8":
        (tmp / "cfg.yaml").write_bytes(b"model:\n  ref: caf\xe9\n")
        return [str(tmp / "cfg.yaml")], f"{tmp / 'cfg.yaml'}: line 2: not UTF-8 text (byte 0xe9 at byte offset 17"
    data = tmp / "data.json"
    args = [str(TINY_CPU), "--set", f"output_dir={out}", "--set", f"data.files=[{data}]"]
    if kind == "data-folder":
        data.mkdir()
        return args, f"data.files: {data}: is a folder, not a data file"
    if kind == "data-not-utf8":
        data.write_bytes(b'[{"instruction": "caf\xe9", "output": "x"}]')
        return args, f"{data}: line 1: not UTF-8 text (byte 0xe9 at byte offset 21"
    if kind == "data-empty":
        data.write_text("[]")
        return args, f"{data}: no records"
    if kind == "data-deep":
        data.write_bytes(b'[{"instruction": "a", "output": "b"},\n' + b"[" * 100_000 + b"]" * 100_000 + b"]")
        return args, f"{data}: record 1 (line 2): JSON nested too deeply"
    args = [str(TINY_CPU), *base]
    if kind == "output-is-a-file":
        out.write_text("keep me\n")
        return args, f"output_dir: {out}: is a file, not a folder"
    if kind == "output-unwritable":  # /proc takes no new file, even from root
        return [str(TINY_CPU), "--set", f"data.files=[{good}]", "--set", "output_dir=/proc/huarizo/run"], (
            "output_dir: /proc/huarizo/run: cannot write into /proc ("
        )
    if kind == "override-unknown-key":
        return [*args, "--set", "model.config_overrides={hiden_size: 8}"], (
            "model.config_overrides: 'hiden_size' is not a setting of llama models"
        )
    if kind == "override-bad-type":
        return [*args, "--set", "model.config_overrides={num_hidden_layers: many}"], (
            "model.config_overrides: num_hidden_layers='many': StrictDataclassFieldValidationError: Validation error "
            "for field 'num_hidden_layers': TypeError: Field 'num_hidden_layers' expected int, got str"
        )
    if kind == "override-bad-value":
        return [*args, "--set", "model.config_overrides={hidden_size: -64}"], (
            "model.config_overrides {'hidden_size': -64}: the model cannot be built with them ("
        )
    if kind == "ds-config-missing":
        return [*args, "--set", f"deepspeed.config_file={tmp / 'ds.json'}"], (
            "invalid TrainConfig config: --set: deepspeed.config_file: Path does not point to a file"
        )
    if kind == "ds-config-not-json":
        (tmp / "ds.json").write_text('{"zero_optimization": {"stage": 2},\n}')
        return [*args, "--set", f"deepspeed.config_file={tmp / 'ds.json'}"], (
            f"deepspeed.config_file: {tmp / 'ds.json'}: line 2: not valid JSON ("
        )
    raise AssertionError(kind)


PROBES = [
    "config-folder",
    "config-not-utf8",
    "data-folder",
    "data-not-utf8",
    "data-empty",
    "data-deep",
    "output-is-a-file",
    "output-unwritable",
    "override-unknown-key",
    "override-bad-type",
    "override-bad-value",
    "ds-config-missing",
    "ds-config-not-json",
]


@pytest.mark.parametrize("kind", PROBES)
def test_bad_inputs_are_one_line_and_touch_no_output(tmp_path: Path, kind: str) -> None:
    """Each bad file or setting: exit 1, one line naming the file (or key), the line where there is one, and the
    cause; no traceback; the output folder is neither created nor changed."""
    if kind == "output-unwritable" and not Path("/proc/self").exists():
        pytest.skip("needs Linux's /proc")
    args, message = _probe(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _huarizo("train", *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert " ".join(lines).startswith(f"error: {message}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no file written
    if kind == "output-is-a-file":
        assert (tmp_path / "out").read_text() == "keep me\n"

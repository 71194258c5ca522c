"""Real DeepSpeed runs (one subprocess each): learning, ZeRO-2/3 across two processes, accumulation, resume after
kill -9, LoRA, the final folder and the script contract of configs/train/tiny-cpu.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from huarizo.formats import Conversation, Message, get_template
from huarizo.formats.templates import template_for_tokenizer

from .conftest import REPO, RunTrain, kill_after, read_metrics, train_env


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_loss_falls(rows: list[dict[str, Any]]) -> None:
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 8
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.3, losses


def _assert_serves_alpaca(final: Path) -> None:
    """The final folder loads with from_pretrained, carries the alpaca template (after the BOS Huarizo trained with)
    and EOS, and generates."""
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert template_for_tokenizer(tok).name == "alpaca"
    conv = Conversation(messages=[Message(role="user", content="What is the capital of Peru?")])
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": conv.messages[0].content}], tokenize=False, add_generation_prompt=True
    )
    alpaca = get_template("alpaca")
    assert prompt == tok.bos_token + alpaca.generation_prompt(conv, eos=tok.eos_token, bos=tok.bos_token)
    assert model.generation_config.eos_token_id == [tok.eos_token_id]
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_run_learns_and_writes_a_loadable_model(
    run_train: RunTrain, base_config: dict[str, Any], tiny_model_dir: Path, stage: int
) -> None:
    cfg = base_config | {"deepspeed": {"stage": stage}}
    cfg["optim"] |= {"lr": 3e-3, "epochs": 4}
    cfg["data"] |= {"max_length": 96, "eval_fraction": 0.15}
    cfg["output"] |= {"eval_steps": 4}
    run_train(cfg, nproc=2)
    out = Path(cfg["output_dir"])
    rows = read_metrics(out)
    _assert_loss_falls(rows)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) >= 3 and evals[-1] < evals[0]  # held-out loss over 6 samples sharded across both ranks
    assert rows[0]["trained_tokens"] > 0 and (out / "loss_curve.png").stat().st_size > 1000
    final = _weights(out / "final")
    base = _weights(tiny_model_dir)
    assert final.keys() == base.keys()  # ZeRO-3 partitions were consolidated, none is missing or empty
    for name, w in base.items():
        assert final[name].shape == w.shape
    assert any(not torch.equal(final[n], base[n]) for n in base)
    _assert_serves_alpaca(out / "final")


def test_grad_accumulation_normalises_by_trained_tokens(run_train: RunTrain, base_config: dict[str, Any]) -> None:
    """Two micro-batches of one row accumulated give the same losses and weights as one micro-batch of two rows."""
    outs = []
    for mb, gas in [(2, 1), (1, 2)]:
        cfg = dict(base_config)
        cfg["output_dir"] = f"{base_config['output_dir']}-{mb}x{gas}"
        cfg["batching"] = {"mode": "padded", "micro_batch_size": mb}
        cfg["optim"] = cfg["optim"] | {"grad_accum": gas, "max_steps": 6, "lr": 3e-3}
        run_train(cfg)
        outs.append(Path(cfg["output_dir"]))
    a, b = (read_metrics(o) for o in outs)
    assert [r["trained_tokens"] for r in a] == [r["trained_tokens"] for r in b]
    assert len({r["trained_tokens"] for r in a}) > 1  # the micro-batches differ in trained tokens
    torch.testing.assert_close([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5, atol=1e-6)
    wa, wb = (_weights(o / "final") for o in outs)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def test_grad_norm_is_logged_at_every_zero_stage(run_train: RunTrain, base_config: dict[str, Any]) -> None:
    """ZeRO-0 (a plain torch optimizer, whose norm DeepSpeed does not keep) logs the same gradient norms as ZeRO-2
    on the same run: the norm of the step's accumulated gradients, before clipping."""
    norms = []
    for stage in (0, 2):
        cfg = base_config | {"deepspeed": {"stage": stage}, "output_dir": f"{base_config['output_dir']}-z{stage}"}
        cfg["optim"] = cfg["optim"] | {"grad_accum": 2, "max_steps": 3, "lr": 3e-3, "clip": 0.5}
        run_train(cfg)
        norms.append([r["grad_norm"] for r in read_metrics(Path(cfg["output_dir"]))])
    zero0, zero2 = norms
    assert len(zero0) == 3 and all(n > 0.5 for n in zero2)  # above the clip: the norm logged is the one before it
    torch.testing.assert_close(zero0, zero2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_after_kill_9_reproduces_the_uninterrupted_run(
    run_train: RunTrain, base_config: dict[str, Any], lora: bool
) -> None:
    cfg = dict(base_config)
    cfg["optim"] = cfg["optim"] | {"max_steps": 9, "lr": 3e-3}
    cfg["output"] = cfg["output"] | {"save_steps": 3}
    if lora:  # a LoRA checkpoint holds the adapter's weights, not the frozen base model's
        cfg["lora"] = {"enabled": True, "r": 4, "alpha": 8, "target_modules": "all-linear"}
        cfg["output_dir"] = f"{base_config['output_dir']}-lora"
    run_train(cfg)
    straight = read_metrics(Path(cfg["output_dir"]))

    straight_dir = Path(cfg["output_dir"])
    cfg["output_dir"] = f"{straight_dir}-killed"
    out = Path(cfg["output_dir"])
    killed = run_train(cfg, env=kill_after(5), check=False)
    assert killed.returncode == -9
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert not (out / "final").exists()
    if lora:  # checkpoints leave the frozen base model out: only the adapter's weights are saved
        from huarizo.trainer.checkpoint import safe_load

        states = safe_load(out / "checkpoints" / "step-3" / "mp_rank_00_model_states.pt")
        names = list(states["module"])
        assert any("lora_A" in n for n in names) and not any("base_layer" in n or "norm" in n for n in names)

    resumed = run_train(cfg)
    assert "resumed at 3" in resumed.stdout
    again = read_metrics(out)
    assert [r["step"] for r in again] == list(range(1, 10))
    torch.testing.assert_close([r["loss"] for r in again], [r["loss"] for r in straight], rtol=1e-6, atol=1e-7)
    wa, wb = _weights(straight_dir / "final"), _weights(out / "final")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name])

    cfg["optim"]["seed"] = 7  # another data order: resuming from these checkpoints would splice two runs
    refused = run_train(cfg, check=False)
    assert refused.returncode == 1 and "output.resume=false" in refused.stderr


def test_zero3_resume_loads_its_partitions_safely(run_train: RunTrain, base_config: dict[str, Any]) -> None:
    """ZeRO-3 checkpoints (partitioned weights and optimiser state) load through the weights-only loader."""
    cfg = base_config | {"deepspeed": {"stage": 3}}
    cfg["optim"] = cfg["optim"] | {"max_steps": 4}
    cfg["output"] = cfg["output"] | {"save_steps": 2}
    killed = run_train(cfg, env=kill_after(3), check=False)
    assert killed.returncode == -9
    resumed = run_train(cfg)
    assert "resumed at 2" in resumed.stdout
    assert [r["step"] for r in read_metrics(Path(cfg["output_dir"]))] == [1, 2, 3, 4]


PLANTED = """
import builtins, sys, torch

class Payload:
    def __reduce__(self):
        return (builtins.open, (sys.argv[2], "w"))  # unpickling it creates the marker file

torch.save({"module": Payload(), "step": 3}, sys.argv[1])
"""


@pytest.mark.parametrize("planted", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_planted_pickle_in_checkpoints_never_runs(
    run_train: RunTrain, base_config: dict[str, Any], tmp_path: Path, planted: str
) -> None:
    """Whoever can write into a run folder cannot make resume run code: a checkpoint file that would create a file
    when unpickled is refused (one line naming it), and the file is never created."""
    cfg = dict(base_config)
    cfg["optim"] = cfg["optim"] | {"max_steps": 4}
    cfg["output"] = cfg["output"] | {"save_steps": 2}
    run_train(cfg)
    step = Path(cfg["output_dir"]) / "checkpoints" / "step-4"
    assert (step / planted).exists()
    marker = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", PLANTED, str(step / planted), str(marker)], check=True)
    cfg["optim"]["max_steps"] = 6
    proc = run_train(cfg, check=False)
    assert proc.returncode == 1 and not marker.exists()
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {step / planted}: refused to load") and "io.open" in line  # builtins.open
    assert "Traceback" not in proc.stderr


def _peak_rss_mb(cmd: list[str], env: dict[str, str]) -> float:
    """Run a command; the peak resident memory of that process (not of earlier children), in MiB."""
    import os

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    return usage.ru_maxrss / 1024


def test_a_50_mb_record_trains_in_the_memory_of_a_run_without_it(base_config: dict[str, Any], tmp_path: Path) -> None:
    """Records are cut by characters (a bound derived from max_length) before they are tokenized: a 50 MB record
    used to take 9.4 GB and 114 s to tokenize; now the run's peak memory stays within 1.5x of the run without it."""
    import json
    import random

    import yaml

    records = json.loads((REPO / "configs/train/data/tiny-alpaca.json").read_text())
    rng = random.Random(0)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "wizards",
        "quietly",
        "hex",
        "jolly",
        "dwarves",
    ]
    huge = " ".join(rng.choice(words) for _ in range(10_000_000))[:50_000_000]
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in records))
    big.write_text(small.read_text() + json.dumps({"instruction": "Summarize.", "input": "", "output": huge}) + "\n")
    del huge
    assert big.stat().st_size > 50_000_000
    peaks = {}
    for data in (small, big):
        cfg = base_config | {"output_dir": str(tmp_path / f"out-{data.stem}")}
        cfg["data"] = cfg["data"] | {"files": [str(data)]}
        cfg["optim"] = cfg["optim"] | {"max_steps": 1}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        peaks[data.stem] = _peak_rss_mb(
            [sys.executable, "-m", "huarizo.trainer", str(tmp_path / "cfg.yaml")], train_env()
        )
    stats = json.loads((tmp_path / "out-big" / "data_stats.json").read_text())
    assert stats["truncated"] == 1 and stats["samples"] == len(records) + 1  # the record was trained on, cut
    assert peaks["big"] < 1.5 * peaks["small"], peaks


def test_lora_trains_and_merges(run_train: RunTrain, base_config: dict[str, Any], tiny_model_dir: Path) -> None:
    cfg = dict(base_config)
    cfg["lora"] = {
        "enabled": True,
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
    }
    cfg["optim"] = cfg["optim"] | {"lr": 3e-2, "epochs": 4}
    run_train(cfg)
    out = Path(cfg["output_dir"])
    _assert_loss_falls(read_metrics(out))
    assert (out / "adapter" / "adapter_config.json").exists()
    merged, base = _weights(out / "final"), _weights(tiny_model_dir)
    assert merged.keys() == base.keys()  # a plain model: no lora_ keys left
    changed = {n for n in base if not torch.equal(merged[n], base[n])}
    assert changed and all(n.split(".")[-2] in ("q_proj", "v_proj", "up_proj") for n in changed)
    _assert_serves_alpaca(out / "final")

    target = out / "merged-by-cli"
    huarizo = str(Path(sys.executable).parent / "huarizo")
    proc = subprocess.run(
        [
            huarizo,
            "merge-lora",
            "--base",
            str(tiny_model_dir),
            "--adapter",
            str(out / "adapter"),
            "--target",
            str(target),
        ],
        env=train_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    by_cli = _weights(target)
    for name in merged:
        torch.testing.assert_close(by_cli[name], merged[name])


def test_tiny_cpu_recipe_contract(shared_data: Path, tmp_path: Path) -> None:
    """`huarizo train configs/train/tiny-cpu.yaml --set data.files=[PATH] --set output_dir=DIR` (ZeRO-2, CPU)."""
    data = shared_data / "alpaca_format_samples" / "llamafactory_alpaca_en_demo.json"
    out = tmp_path / "run"
    huarizo = str(Path(sys.executable).parent / "huarizo")
    proc = subprocess.run(
        [
            huarizo,
            "train",
            str(REPO / "configs/train/tiny-cpu.yaml"),
            "--set",
            f"data.files=[{data}]",
            "--set",
            f"output_dir={out}",
            "--set",
            "optim.max_steps=30",
            "--set",
            "output.progress=false",
        ],
        env=train_env(HUARIZO_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 31)) and all(isinstance(r["loss"], float) for r in rows)
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"
    assert (out / "ds_config.json").read_text().count('"stage": 2') == 1

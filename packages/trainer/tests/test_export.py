"""The model folder a run writes, read by tools that are not Huarizo: transformers' `generate()` stops at the
template's end of turn by itself, TRL's `assistant_only_loss` trains the tokens Huarizo trains, and the folder says
which template every file was rendered with (a run that would save a template none of its files used is refused)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from huarizo.formats import load, to_conversations, tokenize_conversations, write_records
from huarizo.formats.templates import chat_messages, get_template
from huarizo.trainer import DataConfig
from huarizo.trainer.data import DataError, check_files

from .conftest import TINY_CPU, train_env

ANSWER = "The capital of Peru is Lima."


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny model trained by heart on one ChatML answer. `data.template` is left at its default (alpaca): the
    file's own template is the one every record was rendered with, so it is the one the folder must carry."""
    tmp = tmp_path_factory.mktemp("chatml-run")
    data = tmp / "one.json"
    data.write_text(json.dumps([{"instruction": "What is the capital of Peru?", "input": "", "output": ANSWER}] * 32))
    cfg = yaml.safe_load(TINY_CPU.read_text())
    cfg |= {
        "output_dir": str(tmp / "out"),
        "model": cfg["model"] | {"ref": str(tiny_model_dir)},
        "data": {"files": [{"path": str(data), "template": "chatml"}], "max_length": 128},
        "optim": {"lr": 1e-2, "max_steps": 60, "warmup_ratio": 0.0},
        "output": {"progress": False, "save_steps": 0},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "huarizo.trainer", str(tmp / "cfg.yaml")],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "out" / "final"


# Run in a fresh interpreter with transformers only: what any other tool does with the folder.
PLAIN_TRANSFORMERS = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
ids = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of Peru?"}], add_generation_prompt=True, return_tensors="pt",
    return_dict=True,
)["input_ids"]
out = model.generate(ids, max_new_tokens=40, do_sample=False)
new = out[0, ids.shape[1]:].tolist()
print(json.dumps({
    "text": tok.decode(new), "tokens": len(new), "eos": model.generation_config.eos_token_id,
    "huarizo_loaded": any(m.startswith("huarizo") for m in sys.modules),
}))
"""


def test_generate_stops_at_the_end_of_turn_without_huarizo(chatml_run: Path, tiny_tokenizer: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(chatml_run)],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["huarizo_loaded"]
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert got["eos"] == [im_end, tiny_tokenizer.eos_token_id]  # ChatML ends a turn at <|im_end|>, not at </s>
    assert got["text"] == ANSWER + "<|im_end|>"  # the answer, then the end of turn, where generate() stopped
    assert got["tokens"] < 40


def test_folder_carries_the_template_its_records_were_rendered_with(chatml_run: Path) -> None:
    from transformers import AutoTokenizer

    from huarizo.formats.templates import template_for_tokenizer

    assert template_for_tokenizer(AutoTokenizer.from_pretrained(chatml_run)).name == "chatml"
    record = json.loads((chatml_run / "huarizo_templates.json").read_text())
    assert record["chat_template"] == "chatml" and list(record["files"].values()) == ["chatml"]


def test_trl_assistant_only_loss_accepts_the_folder_and_trains_the_same_tokens(
    chatml_run: Path, shared_data: Path, tmp_path: Path
) -> None:
    """TRL's SFTTrainer with `assistant_only_loss=True` on the real data (999 Alpaca records, 500 ShareGPT
    conversations): it takes the folder's template as training-compatible, its labels are Huarizo's, and it trains."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    tok = AutoTokenizer.from_pretrained(chatml_run)
    assert is_chat_template_stop_token_trained(tok)
    convs = [
        c
        for rel in ("alpaca_format_samples/llamafactory_alpaca_en_demo.json", "fastchat/dummy_conversation.json")
        for r in load(shared_data / rel)
        for c in to_conversations(r)
    ]
    assert len(convs) == 1499
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        assistant_only_loss=True,
        max_length=None,
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        dataset_num_proc=None,
    )
    model = AutoModelForCausalLM.from_pretrained(chatml_run)
    dataset = Dataset.from_list([{"messages": chat_messages(c)} for c in convs])
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    assert trainer.chat_template is None  # TRL uses the folder's own template: it has generation marks

    samples, stats = tokenize_conversations(convs, get_template("chatml"), tok, 10**6)
    assert stats.kept == len(convs) and stats.resegmented == 0
    for row, sample in zip(trainer.train_dataset, samples, strict=True):
        batch = trainer.data_collator([row])
        assert batch["input_ids"][0].tolist() == sample.input_ids.tolist()
        assert batch["labels"][0].tolist() == sample.labels.tolist()
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.state.log_history[-1]["train_loss"] > 0


def test_a_template_mix_with_nothing_to_serve_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        write_records(path, [{"instruction": "Say hi.", "output": "hi"}])
    mix = {"files": [{"path": a, "template": "vicuna_v1.1"}, {"path": b, "template": "chatml"}]}
    with pytest.raises(DataError, match=r"several templates .*a\.jsonl: vicuna_v1\.1.*b\.jsonl: chatml"):
        check_files(DataConfig.model_validate(mix))
    check_files(DataConfig.model_validate(mix | {"template": "chatml"}))  # the one to serve, named

    cfg = yaml.safe_load(TINY_CPU.read_text()) | {"output_dir": str(tmp_path / "out"), "data": mix}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str))))
    huarizo = str(Path(sys.executable).parent / "huarizo")
    proc = subprocess.run(
        [huarizo, "train", str(tmp_path / "mix.yaml")], env=train_env(), capture_output=True, text=True
    )
    assert proc.returncode == 1 and "several templates" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

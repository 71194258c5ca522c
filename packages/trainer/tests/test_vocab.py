"""Vocabulary extension on tiny models built here: old ids kept, Chinese text takes fewer tokens, training the new
rows lowers the loss, LoRA with modules_to_save + merge + `huarizo serve` answer with the extended tokenizer, and
bad corpora or bases get one-line errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from huarizo.formats.cli import main
from huarizo.formats.models.tiny import CORPUS as TINY_CORPUS
from huarizo.trainer.vocab import VOCAB_RECORD, extend_vocab, han_count, tokens_per_han

from .conftest import RunTrain, read_metrics

DATA = Path(__file__).parent / "data"
CORPUS, HELDOUT = DATA / "zh_corpus.txt", DATA / "zh_heldout.txt"
ENGLISH = [
    "Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep well.",
    "def add(a, b):\n    return a + b  # `code` and **markdown**\n\n\n- lists",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n</s>",
]
ANSWER = "羊驼的毛又轻又暖和，可以织成围巾和帽子。"


@pytest.fixture(scope="module")
def extended(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model extended with tokens learned on the Chinese corpus."""
    out = tmp_path_factory.mktemp("extended") / "model"
    extend_vocab(str(tiny_model_dir), [CORPUS], 600, out, eval_files=[HELDOUT])
    return out


def test_existing_ids_are_kept_and_chinese_takes_fewer_tokens(tiny_model_dir: Path, extended: Path) -> None:
    base, ext = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(extended)
    old, new = base.get_vocab(), ext.get_vocab()
    assert all(new[token] == i for token, i in old.items())
    assert len(ext) == len(base) + 600
    assert sorted(set(new.values()) - set(old.values())) == list(range(len(base), len(base) + 600))
    assert (ext.bos_token_id, ext.eos_token_id, ext.pad_token_id) == (base.bos_token_id, base.eos_token_id, 3)
    for text in ENGLISH:  # text without the new pieces tokenizes as before
        assert ext(text).input_ids == base(text).input_ids
    heldout = HELDOUT.read_text(encoding="utf-8")
    before, after = tokens_per_han(base, [heldout]), tokens_per_han(ext, [heldout])
    assert before > 3.0 and after < 0.5 * before, (before, after)  # held-out text, not the corpus the tokens came from
    assert ext.decode(ext(heldout, add_special_tokens=False).input_ids) == heldout
    record = json.loads((extended / VOCAB_RECORD).read_text(encoding="utf-8"))
    assert record["first_new_id"] == len(base) and record["added"] == 600
    assert record["tokens_per_han"][str(HELDOUT)] == pytest.approx([before, after])
    card = (extended / "README.md").read_text(encoding="utf-8")
    assert "huarizo extend-vocab" in card and "zh_corpus.txt" in card and f"{before:.2f} → {after:.2f}" in card


def test_new_rows_start_as_the_mean_of_the_rows_they_replace(tiny_model_dir: Path, extended: Path) -> None:
    base_tok, ext_tok = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(extended)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # plain transformers loads the extended folder
    model = AutoModelForCausalLM.from_pretrained(extended)
    old_emb, emb = base.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert emb.shape[0] == len(ext_tok) == model.config.vocab_size
    assert torch.equal(emb[: old_emb.shape[0]], old_emb)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    whole = [t for t in ("羊驼", "农场", "的") if len(ext_tok.tokenize(t)) == 1]
    assert whole, "the corpus' most frequent words should be single tokens"
    for text in whole:
        new_id = ext_tok.convert_tokens_to_ids(ext_tok.tokenize(text))[0]
        parts = base_tok(text, add_special_tokens=False).input_ids
        torch.testing.assert_close(emb[new_id], old_emb[parts].mean(0), rtol=0, atol=1e-6)


def _untied_byte_fallback_model(folder: Path) -> Path:
    """A tiny untied Llama with a sentencepiece-style tokenizer (byte-fallback BPE, `▁` for spaces), as LLaMA's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]]
    tok.train_from_iterator(
        TINY_CORPUS.splitlines() * 4, trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_byte_fallback_base_gets_characters_and_both_embeddings(tmp_path: Path) -> None:
    base_dir = _untied_byte_fallback_model(tmp_path / "base")
    result = extend_vocab(str(base_dir), [CORPUS], 300, tmp_path / "ext")
    base, ext = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(tmp_path / "ext")
    assert all(ext.get_vocab()[t] == i for t, i in base.get_vocab().items())
    assert base.tokenize("的")[-3:] == ["<0xE7>", "<0x9A>", "<0x84>"]  # a byte-fallback base spells 的 in 3 bytes
    assert ext.tokenize("的")[-1] == "的" and "的" in result.added  # the most frequent characters come first
    assert result.tokens_per_han_after < 0.5 * result.tokens_per_han_before
    for text in ENGLISH[:2]:
        assert ext(text).input_ids == base(text).input_ids
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ext")
    old = AutoModelForCausalLM.from_pretrained(base_dir)
    new_id = ext.convert_tokens_to_ids("的")
    parts = base.convert_tokens_to_ids(["<0xE7>", "<0x9A>", "<0x84>"])
    for get in ("get_input_embeddings", "get_output_embeddings"):  # both matrices grow, untied
        w, w0 = getattr(model, get)().weight, getattr(old, get)().weight
        assert w.shape[0] == len(ext)
        assert torch.equal(w[: w0.shape[0]], w0)
        torch.testing.assert_close(w[new_id], w0[parts].mean(0), rtol=0, atol=1e-6)


def _zh_records(path: Path) -> Path:
    """Alpaca records that continue the corpus' sentences."""
    sentences = [s + "。" for line in CORPUS.read_text(encoding="utf-8").splitlines() for s in line.split("。") if s]
    records = [{"instruction": "请把这句话写完整。", "input": s[:4], "output": s} for s in sentences if len(s) > 8]
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def test_training_only_the_new_rows_lowers_the_loss(
    run_train: RunTrain, base_config: dict[str, Any], extended: Path, tmp_path: Path
) -> None:
    cfg = dict(base_config)
    cfg["model"] = {"ref": str(extended), "dtype": "float32", "new_tokens_only": True}
    cfg["data"] = {"files": [str(_zh_records(tmp_path / "zh.json"))], "template": "alpaca", "max_length": 128}
    cfg["batching"] = {"mode": "packed", "micro_batch_size": 4}
    cfg["optim"] = {"lr": 1e-2, "max_steps": 40, "warmup_ratio": 0.0, "schedule": "constant"}
    run_train(cfg)
    losses = [r["loss"] for r in read_metrics(Path(cfg["output_dir"]))]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    before, after = (
        load_file(extended / "model.safetensors"),
        load_file(Path(cfg["output_dir"]) / "final" / "model.safetensors"),
    )
    first = json.loads((extended / VOCAB_RECORD).read_text())["first_new_id"]
    emb = "model.embed_tokens.weight"
    assert torch.equal(after[emb][:first], before[emb][:first])  # old rows: bit for bit
    assert not torch.equal(after[emb][first:], before[emb][first:])  # new rows trained
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != emb)  # everything else frozen
    card = (Path(cfg["output_dir"]) / "final" / "README.md").read_text(encoding="utf-8")
    assert "only the embedding rows of the tokens added by extend-vocab were trained" in card
    assert "zh.json" in card and "last loss" in card and "template**: alpaca" in card


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.enabled=true", "set lora.enabled=false"),
        ("deepspeed.stage=3", "needs deepspeed.stage 0, 1 or 2"),
        ("optim.weight_decay=0.1", "needs optim.weight_decay=0"),
    ],
)
def test_new_tokens_only_refuses_what_would_touch_other_weights(override: str, message: str) -> None:
    from huarizo.formats.config import ConfigError
    from huarizo.trainer import TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig.load(None, ["model.new_tokens_only=true", override])


@pytest.mark.skipif(importlib.util.find_spec("huarizo.serve") is None, reason="huarizo-serve is not installed")
def test_lora_with_modules_to_save_merges_and_serves_the_extended_vocabulary(
    run_train: RunTrain, base_config: dict[str, Any], extended: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    from huarizo.serve import ServeConfig, start_server

    question = "羊驼的毛有什么用？"
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"instruction": question, "input": "", "output": ANSWER}] * 32, ensure_ascii=False))
    cfg = dict(base_config)
    cfg["model"] = {"ref": str(extended), "dtype": "float32"}
    cfg["data"] = {"files": [str(data)], "template": "chatml", "max_length": 128}
    cfg["optim"] = {"lr": 1e-2, "max_steps": 60, "warmup_ratio": 0.0}
    cfg["lora"] = {"enabled": True, "r": 8, "alpha": 16, "modules_to_save": ["embed_tokens", "lm_head"]}
    run_train(cfg)
    out = Path(cfg["output_dir"])
    final = out / "final"

    ext_tok, base_tok = AutoTokenizer.from_pretrained(final), AutoTokenizer.from_pretrained(tiny_model_dir)
    answer_ids = ext_tok(ANSWER, add_special_tokens=False).input_ids
    assert len(answer_ids) < len(base_tok(ANSWER, add_special_tokens=False).input_ids) / 2
    assert any(i >= len(base_tok) for i in answer_ids)

    model = AutoModelForCausalLM.from_pretrained(final)  # plain transformers
    prompt = ext_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = torch.tensor([prompt if isinstance(prompt, list) else prompt["input_ids"]])
    gen = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1] :].tolist()
    assert ext_tok.decode(gen, skip_special_tokens=True).strip() == ANSWER

    with start_server(ServeConfig(model=str(final), port=0, model_name="zh")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
        reply = client.chat.completions.create(
            model="zh", messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0
        )
    assert reply.choices[0].message.content.strip() == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens <= len(answer_ids) + 2

    # the adapter, merged onto the original (smaller) base, grows it and gives the same model
    merged = tmp_path / "merged-on-original"
    assert main(["merge-lora", "--base", str(tiny_model_dir), "--adapter", str(out / "adapter"),
                 "--target", str(merged)]) == 0  # fmt: skip
    a, b = load_file(final / "model.safetensors"), load_file(merged / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (final / "README.md").read_text(encoding="utf-8")
    assert "fully trained modules: ['embed_tokens', 'lm_head']" in card and "template**: chatml" in card
    card = (merged / "README.md").read_text(encoding="utf-8")
    assert "huarizo merge-lora" in card and "template**: chatml" in card and "modules_to_save=" in card


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line the CLI printed (transformers' progress bars may come before it), checked to be one line."""
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: "), last
    return last


def test_merging_an_adapter_without_embeddings_onto_the_original_base_is_refused(
    extended: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(extended), LoraConfig(r=4, target_modules=["q_proj"])
    )
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(extended).save_pretrained(adapter)
    code = main(["merge-lora", "--base", str(tiny_model_dir), "--adapter", str(adapter),
                 "--target", str(tmp_path / "m")])  # fmt: skip
    err = _error(capsys)
    assert code == 1
    assert "carries no embeddings for the new ones" in err and "modules_to_save" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "corpus file not found"),
        (lambda p: (p.write_text("\n \n", encoding="utf-8"), p)[1], "the corpus file is empty"),
        (lambda p: (p.write_bytes("好的\n".encode() + b"\xff\xfe bad\n"), p)[1], "line 2: not UTF-8 text"),
        (lambda p: (p.write_text("ok\nfine\x00bad", encoding="utf-8"), p)[1], "line 2: NUL byte"),
    ],
)
def test_bad_corpus_is_one_line_error(
    make: Any, message: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = make(tmp_path / "corpus.txt")
    code = main(["extend-vocab", "--base", str(tiny_model_dir), "--corpus", str(corpus), "--add", "10",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = _error(capsys)
    assert code == 1
    assert str(corpus) in err and message in err
    assert not (tmp_path / "out").exists()


def test_a_corpus_with_nothing_new_and_a_base_without_tokenizer(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    english = tmp_path / "en.txt"
    english.write_text("the the the\n", encoding="utf-8")
    code = main(["extend-vocab", "--base", str(tiny_model_dir), "--corpus", str(english), "--add", "5",
                 "--out", str(tmp_path / "out"), "--min-frequency", "1000"])  # fmt: skip
    err = _error(capsys)
    assert code == 1 and "teaches no token the base tokenizer lacks" in err

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    code = main(["extend-vocab", "--base", str(bare), "--corpus", str(CORPUS), "--add", "5",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = _error(capsys)
    assert code == 1 and f"error: {bare}: no usable tokenizer" in err, err


def test_cli_reports_tokens_per_han_character(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["extend-vocab", "--base", str(tiny_model_dir), "--corpus", str(CORPUS), "--add", "200",
                 "--out", str(tmp_path / "out"), "--eval", str(HELDOUT)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "added 200 tokens (ids 512-711)" in out and f"tokens per Han character on {HELDOUT}:" in out
    assert han_count(HELDOUT.read_text(encoding="utf-8")) > 700

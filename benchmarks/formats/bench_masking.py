"""Tokenize + mask distinct records: Huarizo's `tokenize_conversations` against transformers' own way.

Records: the 999 Alpaca-format records and the 805 AlpacaEval records (Alpaca's template), and the 500 ShareGPT
conversations (Vicuna v1.1's), 2,304 in all, each once: nothing repeats. Tokenizers: a byte-level BPE (GPT-2 style,
8k tokens, trained on the records on the spot), Gemma 3's (the embedded model's: 262k tokens, whitespace runs as
added tokens) and a SentencePiece-style one (Llama 2's layout: `▁` for spaces, byte fallback; 8k, trained on the spot).

- Huarizo: render, tokenize (one batched call), mask and verify every record.
- The peer: `tokenizer.apply_chat_template(conversations, return_assistant_tokens_mask=True)` on the batch, with the
  chat template Huarizo exports (`{% generation %}` around the trained text): the same ids and mask, not verified.
  The records where both give the same ids and mask are counted.
- The floor: the tokenizer's batch call on the rendered texts alone (no mask).

The three run in turns, ROUNDS times; each figure is the median, in CPU seconds of this process (the tokenizer runs
on one thread), which other load on the machine does not skew; wall time is printed beside it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import IGNORE_INDEX, Conversation, get_template, load, to_conversations, tokenize_conversations
from huarizo.formats.templates import chat_messages, chat_template_for

MAX_LENGTH = 2048
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SOURCES = {  # file, format, template
    "alpaca": ("alpaca_format_samples/llamafactory_alpaca_en_demo.json", "auto", "alpaca"),
    "alpacaeval": ("alpaca_eval/example_outputs_805.json", "alpaca", "alpaca"),
    "sharegpt": ("fastchat/dummy_conversation.json", "auto", "vicuna_v1.1"),
}


def sentencepiece_like(texts: list[str]) -> Any:
    """A BPE laid out as Llama 2's tokenizer.json: spaces written `▁` and one put in front of every piece of text
    between special tokens (a normalizer, no pre-tokenizer), byte fallback for characters it has no token for, BOS
    added. Trained as SentencePiece trains, never merging across a space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", *[f"<0x{b:02X}>" for b in range(256)]]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=special, show_progress=False))
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="module")
def records(shared_data: Path) -> dict[str, list[Conversation]]:
    return {
        name: [c for r in load(shared_data / path, fmt) for c in to_conversations(r)]
        for name, (path, fmt, _) in SOURCES.items()
    }


def tokenizer_named(name: str, records: dict[str, list[Conversation]]) -> Any:
    from huarizo.formats.models import load_tokenizer, train_tokenizer

    texts = [m.content for convs in records.values() for c in convs for m in c.messages]
    if name == "gemma3":
        return load_tokenizer("embedded")
    return train_tokenizer(texts, vocab_size=8000) if name == "bytelevel" else sentencepiece_like(texts)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, out


@pytest.mark.parametrize("tokenizer", ["bytelevel", "gemma3", "sentencepiece"])
def test_masking_distinct_records(
    benchmark: Any, figures: Any, records: dict[str, list[Conversation]], tokenizer: str
) -> None:
    tok = tokenizer_named(tokenizer, records)
    jobs = []
    for name, convs in records.items():
        template = get_template(SOURCES[name][2])
        jobs.append((convs, template, chat_template_for(template, tok), [chat_messages(c) for c in convs]))
    n = sum(len(job[0]) for job in jobs)

    def huarizo() -> list[Any]:
        return [tokenize_conversations(convs, template, tok, MAX_LENGTH)[0] for convs, template, _, _ in jobs]

    def transformers_way() -> list[Any]:
        out = []
        for _, _, jinja, messages in jobs:
            tok.chat_template = jinja
            out.append(
                tok.apply_chat_template(
                    messages,
                    return_assistant_tokens_mask=True,
                    return_dict=True,
                    truncation=True,
                    max_length=MAX_LENGTH,
                )
            )
        return out

    rendered = [
        ["".join(s.text for s in template.render(c, eos=tok.eos_token, bos=tok.bos_token)) for c in convs]
        for convs, template, _, _ in jobs
    ]

    def tokenizer_alone() -> list[Any]:
        return [tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"] for texts in rendered]

    times: dict[str, list[tuple[float, float]]] = {"huarizo": [], "apply_chat_template": [], "tokenizer": []}
    outputs: dict[str, Any] = {}

    def peers() -> None:  # before each Huarizo round, outside its timing
        for key, fn in (("apply_chat_template", transformers_way), ("tokenizer", tokenizer_alone)):
            cpu, wall, outputs[key] = timed(fn)
            times[key].append((cpu, wall))

    def ours() -> None:
        cpu, wall, outputs["huarizo"] = timed(huarizo)
        times["huarizo"].append((cpu, wall))

    benchmark.pedantic(ours, setup=peers, rounds=ROUNDS, iterations=1)

    same = 0
    for samples, hf in zip(outputs["huarizo"], outputs["apply_chat_template"], strict=True):
        for sample, ids, mask in zip(samples, hf["input_ids"], hf["assistant_masks"], strict=True):
            trained = [int(label != IGNORE_INDEX) for label in sample.labels]
            same += sample.input_ids.tolist() == ids and trained == mask
    kept = sum(len(s) for s in outputs["huarizo"])
    assert kept == n  # no record is dropped at this length

    rate = {k: n / statistics.median(c for c, _ in v) for k, v in times.items()}
    wall = {k: n / statistics.median(w for _, w in v) for k, v in times.items()}
    ratio = rate["huarizo"] / rate["apply_chat_template"]
    figures.baseline("apply_chat_template", "transformers apply_chat_template(return_assistant_tokens_mask=True)")
    figures.baseline("tokenizer", "the tokenizer's batch call alone, no mask")
    figures.add("records_per_cpu_s", rate["huarizo"], "records/CPU-s", "higher", "Huarizo, verified")
    figures.add("apply_chat_template_records_per_cpu_s", rate["apply_chat_template"], "records/CPU-s", "higher")
    figures.add("tokenizer_records_per_cpu_s", rate["tokenizer"], "records/CPU-s", "higher")
    figures.add("ratio_vs_apply_chat_template", ratio, "x", "higher", "CPU-time ratio")
    figures.add("share_of_tokenizer_speed", rate["huarizo"] / rate["tokenizer"], "x", "higher")
    figures.add("identical_to_apply_chat_template", same / n, "share", "higher", "same ids and mask")
    benchmark.extra_info.update(records=n, tokenizer=tokenizer, vocab=len(tok))
    print(
        f"\n[formats masking, {tokenizer}, {len(tok):,} tokens] {n:,} distinct records, records per CPU-second "
        f"(wall): Huarizo {rate['huarizo']:,.0f} ({wall['huarizo']:,.0f}), apply_chat_template "
        f"{rate['apply_chat_template']:,.0f} ({wall['apply_chat_template']:,.0f}), tokenizer alone "
        f"{rate['tokenizer']:,.0f} ({wall['tokenizer']:,.0f}): x{ratio:.2f} vs apply_chat_template; same ids and "
        f"mask on {same:,} of {n:,}"
    )

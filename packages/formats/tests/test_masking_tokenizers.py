"""Masking with byte-level BPE tokenizers of several pre-tokenizations (GPT-2, Llama 3, Qwen 2) on real and tricky
text: a batch gives what the tokenizer gives one record at a time, and truncation inside a character verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import Conversation, Message, get_template, load, to_conversations, tokenize_conversations
from huarizo.formats.models.tiny import SPECIAL_TOKENS

# Pre-tokenizer regexes of the Llama 3 and Qwen 2 tokenizers (a Split before a regex-free ByteLevel).
LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# Text that is hard on whitespace handling: runs of spaces, tabs, newlines after spaces, non-breaking and
# ideographic spaces, separators Python takes for whitespace and Unicode does not (\x1c), contractions, digits, CJK,
# emoji, combining marks and special tokens written in plain text.
TRICKY = [
    "a",
    "B",
    "word",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    " \n",
    "\u00a0",
    "\u3000",
    "\x1c",
    "\x85",
    "'s",
    "'ll",
    "12345",
    ".",
    "**",
    ":",
    "中文",
    "😀",
    "e\u0301",
    "</s>",
    "<|im_start|>",
]


def build_tokenizer(texts: list[str], split: str | None = None, normalizer: Any = None) -> Any:
    """A byte-level BPE trained on `texts`: GPT-2 pre-tokenization, or a Split on `split` then ByteLevel."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )


def tricky_conversations(n: int) -> list[Conversation]:
    """`n` seeded conversations made of TRICKY pieces, answers with and without surrounding whitespace."""
    import random

    rng = random.Random(0)

    def text() -> str:
        return "".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 30))).strip("\u00a0\u3000") or "x"

    convs = []
    for _ in range(n):
        turns = []
        for _ in range(rng.randint(1, 3)):
            answer = text()
            if rng.random() < 0.3:
                answer = rng.choice([" ", "\n", "  "]) + answer + rng.choice(["", " ", "\n"])
            turns += [Message(role="user", content=text()), Message(role="assistant", content=answer)]
        convs.append(Conversation(messages=turns))
    return convs


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> list[Conversation]:
    sharegpt = [c for r in load(shared_data / "fastchat/dummy_conversation.json")[:200] for c in to_conversations(r)]
    alpaca = [
        c
        for r in load(shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json")[:200]
        for c in to_conversations(r)
    ]
    return sharegpt + alpaca + tricky_conversations(200)


def texts_of(convs: list[Conversation]) -> list[str]:
    return [m.content for c in convs for m in c.messages] + TRICKY * 5


@pytest.mark.parametrize(
    ("split", "template"),
    [(None, "alpaca"), (None, "vicuna_v1.1"), (None, "chatml"), (LLAMA3, "vicuna_v1.1"), (QWEN2, "chatml")],
)
def test_ids_are_the_tokenizers_own(corpus: list[Conversation], split: str | None, template: str) -> None:
    """Each record's ids are the tokenizer's encoding of its whole rendered text, except where an answer shares a
    token with its prompt (counted as resegmented); every answer's mask verifies."""
    tok = build_tokenizer(texts_of(corpus), split)
    tpl = get_template(template)
    samples, stats = tokenize_conversations(corpus, tpl, tok, 1024)
    assert stats.kept == len(corpus)
    texts = ["".join(s.text for s in tpl.render(c, eos=tok.eos_token, bos=tok.bos_token)) for c in corpus]
    whole = tok(texts, add_special_tokens=tpl.add_special_tokens)["input_ids"]
    same = sum(s.input_ids.tolist() == w[:1024] for s, w in zip(samples, whole, strict=True))
    assert same == len(corpus) - stats.resegmented and same > 0.8 * len(corpus)


def test_answers_cut_inside_a_character_verify(gpt2_like: Any) -> None:
    """Truncation that splits a multi-byte character (byte tokens of a character the tokenizer never saw) passes
    verification, and gives what the tokenizer gives."""
    convs = [
        Conversation(
            messages=[Message(role="user", content="x " * (i % 40)), Message(role="assistant", content="\ua66e" * 30)]
        )
        for i in range(300)
    ]
    tpl = get_template("vicuna_v1.1")
    samples, stats = tokenize_conversations(convs, tpl, gpt2_like, 240)  # the answers start at 157-235 tokens
    assert stats.truncated == stats.kept == len(convs)
    answers = [gpt2_like.decode([t for t in s.labels if t != -100]) for s in samples]
    assert sum(a.endswith("\ufffd") for a in answers) > 100  # the last character cut in two
    assert samples == [s for c in convs for s in tokenize_conversations([c], tpl, gpt2_like, 240)[0]]


@pytest.fixture(scope="module")
def gpt2_like() -> Any:
    return build_tokenizer(TRICKY * 50 + ["the quick brown fox jumps over the lazy dog's back"] * 20)

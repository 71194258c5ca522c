"""The cached byte-level encoder reproduces the tokenizer exactly, and masking falls back when it cannot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huarizo.formats import Conversation, Message, get_template, load, to_conversations, tokenize_conversations
from huarizo.formats.bytelevel import ByteLevelEncoder
from huarizo.formats.models.tiny import SPECIAL_TOKENS

# Pre-tokenizer regexes of the Llama 3 and Qwen 2 tokenizers (a Split before a regex-free ByteLevel).
LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# Text that is hard on a whitespace-driven chunker: runs of spaces, tabs, newlines after spaces, non-breaking and
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
def test_cached_path_gives_what_the_tokenizer_gives(
    corpus: list[Conversation], split: str | None, template: str
) -> None:
    tok = build_tokenizer(texts_of(corpus), split)
    tpl = get_template(template)
    samples, stats = tokenize_conversations(corpus, tpl, tok, 1024)
    assert stats.cached == len(corpus)
    one_by_one = [s for c in corpus for s in tokenize_conversations([c], tpl, tok, 1024)[0]]
    assert samples == one_by_one  # each call with one record uses the tokenizer itself


def test_answers_cut_inside_a_character_verify_on_the_cached_path(gpt2_like: Any) -> None:
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
    assert stats.cached == stats.truncated == stats.kept == len(convs)
    answers = [gpt2_like.decode([t for t in s.labels if t != -100]) for s in samples]
    assert sum(a.endswith("\ufffd") for a in answers) > 100  # the last character cut in two
    assert samples == [s for c in convs for s in tokenize_conversations([c], tpl, gpt2_like, 240)[0]]


@pytest.fixture(scope="module")
def gpt2_like() -> Any:
    return build_tokenizer(TRICKY * 50 + ["the quick brown fox jumps over the lazy dog's back"] * 20)


@given(st.lists(st.lists(st.sampled_from(TRICKY), max_size=12).map("".join), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_encoder_matches_the_tokenizer_on_any_text(gpt2_like: Any, segments: list[str]) -> None:
    backend = gpt2_like.backend_tokenizer
    encoder = ByteLevelEncoder.for_tokenizer(backend)
    assert encoder is not None
    text = "".join(segments)
    (whole,) = encoder.encode_batch([text])
    assert whole.ids().tolist() == backend.encode(text, add_special_tokens=False).ids
    for segment, (ids, head, last, alone) in zip(segments, encoder._table.cut(segments), strict=True):
        parts = encoder._split(segment)  # the vectorised cut gives the chunks the per-text one gives
        assert (head, last, alone) == (parts[0], parts[-1], len(parts) == 1)
        assert ids == encoder.encode_batch([segment])[0].ids().tobytes()
    (got,) = encoder.encode_segments([segments], b"")
    if got is not None:  # None: a token crosses a segment boundary, which the caller then handles
        ids, ends = got
        assert ids.tolist() == backend.encode(text, add_special_tokens=False).ids
        starts = [0, *ends[:-1]]
        assert [encoder.decode(ids[a:b]) for a, b in zip(starts, ends, strict=True)] == segments


def test_tokenizers_it_cannot_reproduce_are_used_directly(corpus: list[Conversation]) -> None:
    from tokenizers import normalizers

    tok = build_tokenizer(texts_of(corpus), normalizer=normalizers.Replace("\x00", ""))  # any normalizer
    assert ByteLevelEncoder.for_tokenizer(tok.backend_tokenizer) is None
    tpl = get_template("vicuna_v1.1")
    samples, stats = tokenize_conversations(corpus, tpl, tok, 1024)
    assert stats.cached == 0
    assert samples == [s for c in corpus for s in tokenize_conversations([c], tpl, tok, 1024)[0]]


def test_a_chunk_that_does_not_decode_back_sends_the_batch_to_the_tokenizer(caplog: pytest.LogCaptureFixture) -> None:
    # Trained without the full byte alphabet: "é" has no token, the tokenizer drops it, the cached encoder notices.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["USER: ASSISTANT: say yes or no </s>"] * 20, trainers.BpeTrainer(special_tokens=["</s>"], show_progress=False)
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    convs = [
        Conversation(messages=[Message(role="user", content=f"say café {i}"), Message(role="assistant", content="yes")])
        for i in range(300)
    ]
    with caplog.at_level(logging.WARNING, logger="huarizo.formats.masking"):
        samples, stats = tokenize_conversations(convs, get_template("vicuna_v1.1"), fast, 512)
    assert stats.cached == 0 and stats.kept == 300
    assert "cannot reproduce this tokenizer" in caplog.text
    trained = [t for t, lab in zip(samples[0].input_ids, samples[0].labels, strict=True) if lab != -100]
    assert fast.decode(trained).strip() == "yes</s>"

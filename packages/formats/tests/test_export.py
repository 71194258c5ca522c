"""The exported chat template against transformers and TRL on the real data: `apply_chat_template(...,
return_assistant_tokens_mask=True)` on a folder's tokenizer gives Huarizo's input ids and trained positions.

The one expected difference: where an answer's first characters merge with the prompt's last ones into one token in a
whole-text encoding (Alpaca's `### Response:` followed directly by `**Yes**` gives `:**`), Huarizo encodes prompt and
answer apart, as a server sees the prompt alone. Those records are counted, and must differ only at that token.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import IGNORE_INDEX, Conversation, Message, get_template, load, to_conversations
from huarizo.formats import tokenize_conversations as mask
from huarizo.formats.templates import ChatTemplate, chat_messages, chat_template_for, list_templates

REGISTRY = [n for n in list_templates() if n != "hf" and isinstance(get_template(n), ChatTemplate)]
DATA = {
    "alpaca": "alpaca_format_samples/llamafactory_alpaca_en_demo.json",  # 999 records, 412 with an input
    "sharegpt": "fastchat/dummy_conversation.json",  # 500 conversations of 1 to 3 turns
}
# Answers that start with punctuation, which a whole-text encoding can merge with the prompt's last character.
MERGING = ["**Yes**, it is.", ":) Sure.", "...and then it rained.", "*Note*: none."]


def _convs(shared_data: Path, data: str) -> list[Conversation]:
    return [c for r in load(shared_data / DATA[data]) for c in to_conversations(r)]


def _only_at_answer_starts(tok: Any, mine: list[int], theirs: list[int], trained: list[bool], hf: list[int]) -> None:
    """`mine` and `theirs` encode the same text and differ only in short runs that hold an answer's first token;
    elsewhere the trained positions are the same."""
    assert tok.decode(mine) == tok.decode(theirs)
    matcher = difflib.SequenceMatcher(None, mine, theirs, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            assert trained[i1:i2] == [bool(m) for m in hf[j1:j2]]
            continue
        assert i2 - i1 <= 3 and j2 - j1 <= 3, (op, tok.decode(mine[i1:i2]), tok.decode(theirs[j1:j2]))
        assert any(trained[k] and (k == 0 or not trained[k - 1]) for k in range(i1, min(i2 + 1, len(trained))))


def check_export(tok: Any, name: str, convs: list[Conversation]) -> int:
    """Compare every conversation; returns how many merge at an answer's start (all of them resegmented)."""
    template = get_template(name)
    tok.chat_template = chat_template_for(template, tok)
    samples, stats = mask(convs, template, tok, 10**6)
    assert stats.kept == len(convs)
    merged = 0
    for conv, sample in zip(convs, samples, strict=True):
        out = tok.apply_chat_template(chat_messages(conv), return_assistant_tokens_mask=True, return_dict=True)
        trained = [label != IGNORE_INDEX for label in sample.labels]
        if out["input_ids"] == sample.input_ids.tolist():
            assert out["assistant_masks"] == [int(t) for t in trained], conv.id
        else:
            merged += 1
            _only_at_answer_starts(tok, sample.input_ids.tolist(), out["input_ids"], trained, out["assistant_masks"])
    assert merged == stats.resegmented
    return merged


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("name", REGISTRY)
def test_exported_template_masks_like_huarizo(shared_data: Path, tiny_tokenizer: Any, name: str, data: str) -> None:
    try:
        assert check_export(tiny_tokenizer, name, _convs(shared_data, data)) == 0  # byte-level: no merge here
    finally:
        tiny_tokenizer.chat_template = None


@pytest.fixture(scope="module")
def merging_tokenizer() -> Any:
    """A tiny byte-level tokenizer that has learnt `:**` and `::` as tokens (as real vocabularies have)."""
    from huarizo.formats.models.tiny import CORPUS, train_tokenizer

    return train_tokenizer(CORPUS.splitlines() * 4 + ["Response:**Yes**, it is. Response::) Sure."] * 40)


@pytest.mark.parametrize("name", REGISTRY)
def test_answers_merging_with_the_prompt_differ_only_at_that_token(merging_tokenizer: Any, name: str) -> None:
    convs = [
        Conversation(messages=[Message(role="user", content="Say something."), Message(role="assistant", content=a)])
        for a in MERGING
    ]
    merged = check_export(merging_tokenizer, name, convs)
    assert merged == (2 if name == "alpaca" else 0)  # only `### Response:` is followed directly by the answer


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTRY)
def test_exported_template_masks_like_huarizo_with_gemmas_tokenizer(shared_data: Path, name: str) -> None:
    """Gemma 3's tokenizer (whitespace runs as added tokens, no pre-tokenizer split): Alpaca's `### Response:`
    merges with the answer's first characters in about 7% of the 999 records; every other layout never merges."""
    from huarizo.formats.models import load_tokenizer

    tok = load_tokenizer("embedded")
    merged = {data: check_export(tok, name, _convs(shared_data, data)) for data in sorted(DATA)}
    if name == "alpaca":
        assert 20 <= merged["alpaca"] <= 100 and merged["sharegpt"] == 0, merged
    else:
        assert merged == {"alpaca": 0, "sharegpt": 0}

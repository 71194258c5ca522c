"""Tokenize-and-mask: only answers are trained, every record is verified, truncation is counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import (
    IGNORE_INDEX,
    Conversation,
    MaskError,
    Message,
    get_template,
    load,
    to_conversations,
    tokenize_conversations,
)
from huarizo.formats.templates import ALPACA


def trained_runs(sample: Any) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for tid, lab in zip(sample.input_ids, sample.labels, strict=True):
        on = lab != IGNORE_INDEX
        if on and not prev:
            runs.append([])
        if on:
            assert lab == tid
            runs[-1].append(tid)
        prev = on
    return runs


def test_vicuna_multi_turn_trains_every_answer(shared_data: Path, tiny_tokenizer: Any) -> None:
    convs = [c for r in load(shared_data / "fastchat/dummy_conversation.json") for c in to_conversations(r)]
    samples, stats = tokenize_conversations(convs, get_template("vicuna_v1.1"), tiny_tokenizer, 2048)
    assert stats.kept == len(convs) == 500 and not stats.dropped
    for conv, sample in zip(convs, samples, strict=True):
        answers = [m.content for m in conv.messages if m.role == "assistant"]
        runs = trained_runs(sample)
        assert len(runs) == len(answers)
        for run, answer in zip(runs, answers, strict=True):
            assert tiny_tokenizer.decode(run).strip() == answer.strip() + "</s>"
        assert sample.input_ids[0] == tiny_tokenizer.bos_token_id


def stanford_alpaca_labels(tok: Any, conv: Conversation, max_length: int) -> tuple[list[int], list[int]]:
    """The Stanford Alpaca way: tokenize source and full text separately, mask by the source's length."""
    source = ALPACA.generation_prompt(Conversation(messages=conv.messages[:-1]))
    full = source + conv.messages[-1].content + tok.eos_token
    ids = tok(full, max_length=max_length, truncation=True)["input_ids"]
    n_src = len(tok(source, max_length=max_length, truncation=True)["input_ids"])
    return ids, [IGNORE_INDEX] * n_src + ids[n_src:]


def test_alpaca_labels_match_stanford_where_its_prefix_assumption_holds(shared_data: Path, tiny_tokenizer: Any) -> None:
    recs = load(shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json")[:300]
    convs = [c for r in recs for c in to_conversations(r)]
    samples, stats = tokenize_conversations(convs, ALPACA, tiny_tokenizer, 512)
    compared = 0
    by_id = dict(zip(range(len(convs)), convs, strict=True))
    assert stats.kept == len(samples)
    kept = iter(samples)
    for i in range(len(convs)):
        conv = by_id[i]
        ids, labels = stanford_alpaca_labels(tiny_tokenizer, conv, 512)
        if all(x == IGNORE_INDEX for x in labels):
            continue
        sample = next(kept)
        source_ids = tiny_tokenizer(ALPACA.generation_prompt(Conversation(messages=conv.messages[:-1])))["input_ids"]
        if ids[: len(source_ids)] == source_ids:
            assert sample.input_ids.tolist() == ids and sample.labels.tolist() == labels
            compared += 1
    assert compared > 250


def test_truncation_drops_records_without_a_trained_token(tiny_tokenizer: Any) -> None:
    long_prompt = Conversation(
        messages=[Message(role="user", content="word " * 400), Message(role="assistant", content="short")]
    )
    fits = Conversation(messages=[Message(role="user", content="hi"), Message(role="assistant", content="long " * 50)])
    samples, stats = tokenize_conversations([long_prompt, fits], get_template("alpaca"), tiny_tokenizer, 64)
    assert stats.dropped["no trained token after truncation"] == 1 and stats.kept == 1
    assert len(samples[0].input_ids) == 64 and samples[0].num_trained > 0 and stats.truncated == 2


def test_answer_sharing_a_token_with_the_prompt_is_encoded_by_segments(tiny_tokenizer: Any) -> None:
    # "### Response:" + "**bold**" can merge into one ":**" token in a whole-text encoding.
    conv = Conversation(messages=[Message(role="user", content="Say it"), Message(role="assistant", content="**Yes**")])
    samples, _ = tokenize_conversations([conv], ALPACA, tiny_tokenizer, 256)
    (run,) = trained_runs(samples[0])
    assert tiny_tokenizer.decode(run) == "**Yes**</s>"


def test_unrepresentable_answer_raises_instead_of_training_garbage(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["USER: ASSISTANT: hello world"], trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    conv = Conversation(messages=[Message(role="user", content="hello"), Message(role="assistant", content="bonjour")])
    with pytest.raises(MaskError, match="do not decode to the answer") as info:
        tokenize_conversations([conv], get_template("vicuna_v1.1"), fast, 128)
    assert "bonjour" in str(info.value) and "<unk>" in str(info.value)


@pytest.mark.parametrize("where", ["answer", "prompt"])
def test_a_huge_record_is_cut_by_characters_and_keeps_the_tokenizers_first_tokens(
    tiny_tokenizer: Any, where: str
) -> None:
    """A 1 MB record is cut before it is tokenized (at a bound derived from max_length), and its sample is exactly
    the first max_length tokens of the whole text as the tokenizer encodes it."""
    from huarizo.formats.masking import char_limit

    huge = "".join(f"{w} " if i % 7 else f"{w},\n" for i, w in enumerate(["sea", "wind", "over", "tall"] * 60_000))
    user, answer = (huge, "Short answer.") if where == "prompt" else ("Write a long text.", huge)
    conv = Conversation(messages=[Message(role="user", content=user), Message(role="assistant", content=answer)])
    assert char_limit(tiny_tokenizer.backend_tokenizer, 256) < len(huge) // 50
    samples, stats = tokenize_conversations([conv], ALPACA, tiny_tokenizer, 256)
    whole = tiny_tokenizer(ALPACA.generation_prompt(Conversation(messages=conv.messages[:1])) + answer)["input_ids"]
    assert stats.truncated == 1
    if where == "prompt":
        assert not samples and stats.dropped["no trained token after truncation"] == 1
        return
    (sample,) = samples
    assert sample.input_ids.tolist() == whole[:256]
    prompt = len(tiny_tokenizer(ALPACA.generation_prompt(Conversation(messages=conv.messages[:1])))["input_ids"])
    assert sample.labels.tolist() == [IGNORE_INDEX] * prompt + whole[prompt:256]

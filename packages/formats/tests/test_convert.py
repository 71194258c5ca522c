"""Conversion between formats: lossless round trips on the real files, clear errors where it cannot be lossless."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from huarizo.formats import AlpacaRecord, ConversionError, ShareGPTConversation, convert, load

ALPACA_FILES = ["alpaca_format_samples/llamafactory_alpaca_en_demo.json", "alpaca_eval/example_outputs_805.json"]


@pytest.mark.parametrize("rel", ALPACA_FILES)
@pytest.mark.parametrize("via", ["sharegpt", "openai"])
def test_alpaca_round_trip_is_lossless(shared_data: Path, rel: str, via: str) -> None:
    recs = load(shared_data / rel)
    there = convert(recs, via)
    assert len(there) == len(recs)
    assert convert(there, "alpaca") == recs


def test_sharegpt_openai_round_trip_is_lossless(shared_data: Path) -> None:
    convs = load(shared_data / "fastchat/dummy_conversation.json")
    assert convert(convert(convs, "openai"), "sharegpt") == convs


def test_seed_tasks_split_into_instances_and_regroup(shared_data: Path) -> None:
    seeds = load(shared_data / "stanford_alpaca/seed_tasks.jsonl")
    alpaca = convert(seeds, "alpaca")
    assert len(alpaca) == sum(len(s.instances) for s in seeds)
    assert alpaca[0].metadata["seed_id"] == seeds[0].id
    assert convert(convert(seeds, "sharegpt"), "seed-tasks") == seeds
    assert convert(alpaca, "seed-tasks") == seeds


def test_alpaca_input_is_joined_for_chat_formats() -> None:
    rec = AlpacaRecord(instruction="Translate to French.", input="Good morning", output="Bonjour")
    (sg,) = convert([rec], "sharegpt")
    assert sg.conversations[0].value == "Translate to French.\n\nGood morning"
    assert sg.metadata["alpaca_input"] == "Good morning"


def test_multi_turn_to_alpaca_needs_a_choice(shared_data: Path) -> None:
    convs = load(shared_data / "fastchat/dummy_conversation.json")
    multi = next(c for c in convs if len(c.conversations) > 2)
    with pytest.raises(ConversionError, match="pass --first-turn or --last-turn"):
        convert([multi], "alpaca")
    (first,) = convert([multi], "alpaca", turn="first")
    (last,) = convert([multi], "alpaca", turn="last")
    assert first.instruction == multi.conversations[0].value
    assert last.output == multi.conversations[-1].value


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
nonblank = text.filter(lambda s: bool(s.strip()))


@given(instruction=nonblank, input=text, output=text, extra=st.dictionaries(st.sampled_from(["src", "k"]), text))
def test_property_alpaca_round_trips(instruction: str, input: str, output: str, extra: dict[str, str]) -> None:
    rec = AlpacaRecord(instruction=instruction, input=input, output=output, metadata=extra)
    for via in ("sharegpt", "openai"):
        assert convert(convert([rec], via), "alpaca") == [rec]


@given(turns=st.lists(st.tuples(text, text), min_size=1, max_size=4), system=st.none() | text)
def test_property_sharegpt_round_trips(turns: list[tuple[str, str]], system: str | None) -> None:
    body = [{"from": f, "value": v} for h, g in turns for f, v in (("human", h), ("gpt", g))]
    lead = [{"from": "system", "value": system}] if system is not None else []
    conv = ShareGPTConversation.model_validate({"id": "c1", "conversations": lead + body})
    assert convert(convert([conv], "openai"), "sharegpt") == [conv]

"""Judge prompts carry each answer verbatim; verdicts parse strictly (never guessed)."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from huarizo.formats import Question
from huarizo.judge import parse_pair, parse_rating
from huarizo.judge.prompts import pair_messages, single_messages


def test_parse_pair_strict() -> None:
    assert parse_pair("A is clearer.\n[[A]]") == "A"
    assert parse_pair("[[ B ]]") == "B" and parse_pair("Tie: [[C]]") == "C"
    assert parse_pair("[[A]] ... on reflection [[A]]") == "A"
    assert parse_pair("first [[A]] then [[B]]") is None  # conflicting
    assert parse_pair("A is better") is None and parse_pair("[A]") is None and parse_pair("[[D]]") is None


def test_parse_rating_strict() -> None:
    assert parse_rating("Rating: [[7]]") == 7 and parse_rating("Rating: [[8.5]]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("[[0]]") is None
    assert parse_rating("[[3]] or maybe [[4]]") is None and parse_rating("Rating: 7") is None


def test_answers_verbatim_and_reference_only_where_it_belongs() -> None:
    odd = "Answer with [[brackets]], <tags>\n\n  and   spacing"
    q = Question("1", ["What is 2+2?"], "math", ["4"])
    msgs, ref = single_messages(q, [odd], 0)
    assert ref and odd in msgs[-1]["content"] and "<reference solution" in msgs[-1]["content"]
    msgs, ref = pair_messages(Question("2", ["Write a poem"], "writing", ["a poem"]), [odd], ["other"], 0)
    assert not ref and odd in msgs[-1]["content"] and "other" in msgs[-1]["content"]
    two = Question("3", ["Q1", "Q2"], "writing")
    msgs, _ = single_messages(two, ["R1", "R2"], 1)
    body = msgs[-1]["content"]
    assert body.index("R1") < body.index("Q2") < body.index("R2") and "turn 2" in body


@given(st.text(alphabet=st.characters(blacklist_characters="[]")), st.sampled_from("ABC"), st.text())
def test_one_verdict_anywhere_is_found_and_none_is_never_guessed(noise: str, v: str, tail: str) -> None:
    assert parse_pair(f" {v}\n") == v  # a verdict-only reply is the bare letter
    assume(noise.strip() not in ("A", "B", "C"))
    assert parse_pair(noise) is None
    assert parse_pair(f"{noise}[[{v}]]{tail.replace('[', '(')}") == v

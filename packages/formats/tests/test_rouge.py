"""Exact ROUGE-L: `rouge_score`'s numbers (its tokenizer, its LCS, its F1 formula), from the bit-parallel LCS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize

from huarizo.formats import CJKTokenizer, DefaultTokenizer, lcs_length, rouge_l, rouge_l_f1


@given(st.lists(st.integers(0, 5), max_size=40), st.lists(st.integers(0, 5), max_size=40))
@settings(max_examples=300, deadline=None)
def test_bit_parallel_lcs_equals_dynamic_programming(a: list[int], b: list[int]) -> None:
    expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
    assert lcs_length(a, b) == expected


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_default_tokenizer_is_rouge_scores(text: str) -> None:
    assert DefaultTokenizer().tokenize(text) == tokenize.tokenize(text, None)


def test_f1_formula_is_rouge_scores() -> None:
    a, b = ["write", "a", "poem", "about", "the", "sea"], ["write", "a", "short", "poem", "about", "a", "sea"]
    ref = rouge_scorer._score_lcs(a, b).fmeasure
    assert rouge_l_f1(lcs_length(a, b), len(a), len(b)) == ref


def test_rouge_l_is_rouge_scores_on_real_answers(shared_data: Path) -> None:
    path = shared_data / "self_instruct/human_eval/predictions/text-davinci-003_predictions.jsonl"
    rows = [json.loads(line) for line in path.open()][:60]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for row in rows:
        want = scorer.score(row["target"], row["response"])["rougeL"].fmeasure
        assert rouge_l(row["response"], row["target"]) == want


def test_cjk_tokenizer_scores_chinese_that_the_default_one_cannot() -> None:
    assert rouge_l("今天天气很好", "今天天气不好") == 0.0  # rouge_score's tokenizer keeps no Chinese character
    assert rouge_l("今天天气很好", "今天天气不好", CJKTokenizer()) == pytest.approx(5 / 6)
    assert DefaultTokenizer().tokenize("今天 ok") == ["ok"]

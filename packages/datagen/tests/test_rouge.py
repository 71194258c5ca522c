"""The fast ROUGE-L filter makes exactly rouge_score's decisions."""

from __future__ import annotations

import random
import re

import pytest

from huarizo.datagen.rouge import (
    CJKTokenizer,
    DefaultTokenizer,
    NoveltyIndex,
    novelty_filter,
)
from huarizo.formats.testing import rouge_score_filter


def _vary(text: str, rng: random.Random) -> str:
    """A realistic near-duplicate: a word dropped, swapped or added, or a new opening."""
    words = text.split()
    op = rng.randrange(4)
    if op == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif op == 1 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["please", "briefly", "also", "carefully", "the"]))
    else:
        words = [rng.choice(["Now", "Please", "Can you"]), *words]
    return " ".join(words)


def test_exact_on_real_instructions_with_near_duplicates(instructions: list[str]) -> None:
    """~320 real instructions (seed tasks, user-oriented, Alpaca samples, AlpacaEval) plus 70 variations of them.

    (All ~2,200 against rouge_score take minutes: the slow test below and `benchmarks/datagen/bench_filter.py`.)
    """
    rng = random.Random(0)
    base = rng.sample(instructions[:427], 150) + rng.sample(instructions[427:], 170)
    candidates = base + [_vary(rng.choice(base), rng) for _ in range(70)]
    rng.shuffle(candidates)
    pool, cands = candidates[:40], candidates[40:]
    for threshold in (0.5, 0.7):
        fast = [m is None for m in novelty_filter(cands, pool, threshold=threshold)]
        ref = rouge_score_filter(cands, pool, threshold=threshold)
        assert fast == ref, f"threshold {threshold}"
        assert 0 < sum(fast) < len(cands)


@pytest.mark.slow
def test_exact_on_all_real_instructions(instructions: list[str]) -> None:
    fast = [m is None for m in novelty_filter(instructions)]
    assert fast == rouge_score_filter(instructions)


def test_index_skips_most_pairs(instructions: list[str]) -> None:
    index = NoveltyIndex(0.7)
    kept = sum(index.add_if_novel(t) is None for t in instructions)
    all_pairs = kept * len(instructions) // 2
    assert index.pairs_scored < all_pairs / 20


def test_match_reports_the_similar_instruction() -> None:
    index = NoveltyIndex(0.7)
    index.add("Write a short poem about the ocean at night.")
    match = index.add_if_novel("Write a short poem about the ocean at dawn.")
    assert match is not None and match.index == 0 and match.score > 0.7
    assert index.add_if_novel("Explain how vaccines train the immune system.") is None
    assert len(index) == 2


CHINESE = [
    "写一首关于大海的短诗。",
    "写一首关于大海的诗。",
    "解释光合作用的过程。",
    "请解释光合作用是如何进行的。",
    "把下面的句子翻译成英文。",
    "将下面这句话翻译成英文。",
    "列出五种健康的早餐食物。",
    "给出三个提高睡眠质量的建议。",
    "给出三个改善睡眠质量的建议。",
    "用Python写一个函数计算阶乘。",
    "用 Python 写一个计算阶乘的函数。",
    "总结这篇文章的主要观点。",
    "总结下面文章的主要观点。",
    "判断这条评论是正面还是负面。",
    "判断下面的评论是正面的还是负面的。",
    "描述你理想中的周末。",
    "为一家咖啡店想一个口号。",
    "为咖啡店想一个广告口号。",
    "日本語で自己紹介を書いてください。",
    "日本語で短い自己紹介を書いてください。",
    "한국의 전통 음식을 소개해 주세요.",
    "한국 전통 음식을 소개해 주세요.",
]


def test_cjk_tokenizer_splits_characters_and_keeps_words() -> None:
    assert CJKTokenizer().tokenize("用Python写Code 3次") == ["用", "python", "写", "code", "3", "次"]
    assert DefaultTokenizer().tokenize("写一首关于大海的短诗。") == []  # why the option exists


def test_cjk_filter_is_exact_and_catches_paraphrases() -> None:
    rng = random.Random(1)
    cands = CHINESE + [s[: len(s) // 2] + rng.choice("的了很也") + s[len(s) // 2 :] for s in rng.choices(CHINESE, k=40)]
    rng.shuffle(cands)
    for threshold in (0.5, 0.7):
        fast = [m is None for m in novelty_filter(cands, threshold=threshold, tokenizer="cjk")]
        assert fast == rouge_score_filter(cands, threshold=threshold, tokenizer="cjk")
        assert sum(fast) < len(cands) / 2
    # Under the default tokenizer every Chinese instruction has no tokens, so nothing is ever matched.
    no_ascii = [c for c in cands if not re.search("[A-Za-z0-9]", c)]
    assert all(m is None for m in novelty_filter(no_ascii))

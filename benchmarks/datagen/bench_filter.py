"""ROUGE-L novelty filter: the original sequential filter through rouge_score vs Huarizo's exact one.

1. All ~2,200 real instructions in ../shared/data (seed tasks, user-oriented, Alpaca samples, AlpacaEval), in one run:
   both filters, identical kept set asserted, speed ratio printed (target >= 100x).
2. 52,000 candidates built from those instructions with realistic variation (words dropped, swapped, inserted,
   replaced; clauses borrowed from other instructions; new openings), the Alpaca-52K scale: Huarizo's filter alone
   (target < 5 minutes on 2 cores; rouge_score would need days).

    pytest benchmarks/datagen/bench_filter.py -s -o python_files='bench_*.py'
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from huarizo.datagen.rouge import NoveltyIndex, novelty_filter
from huarizo.formats.testing import rouge_score_filter


def real_instructions(shared: Path) -> list[str]:
    out = []
    for name in ("stanford_alpaca/seed_tasks.jsonl", "self_instruct/human_eval/user_oriented_instructions.jsonl"):
        out += [json.loads(line)["instruction"] for line in (shared / name).read_text().splitlines()]
    for name in ("alpaca_format_samples/llamafactory_alpaca_en_demo.json", "alpaca_eval/example_outputs_805.json"):
        out += [r["instruction"] for r in json.loads((shared / name).read_text())]
    return out


def vary(rng: random.Random, base: list[str], vocab: list[str]) -> str:
    """A new candidate from a real instruction with 1-4 realistic edits."""
    words = rng.choice(base).split()
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif op == 1 and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["also", "briefly", "please", "in detail", "the"]))
        elif op == 3 and words:
            words[rng.randrange(len(words))] = rng.choice(vocab)
        elif op == 4:
            other = rng.choice(base).split()
            words += ["and", *other[len(other) // 2 :]]
        else:
            words = [rng.choice(["Now,", "Please", "Can you", "Quickly", "In one paragraph,"]), *words]
    return " ".join(words)


def test_filter_vs_rouge_score(benchmark, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    instructions = real_instructions(shared_data)
    fast = benchmark.pedantic(lambda: novelty_filter(instructions), rounds=3, iterations=1)
    t_fast = benchmark.stats.stats.min
    t0 = time.perf_counter()
    ref = rouge_score_filter(instructions)
    t_ref = time.perf_counter() - t0
    assert [m is None for m in fast] == ref
    print(
        f"\n[filter] {len(instructions)} real instructions, {sum(ref)} kept (identical): rouge_score sequential "
        f"{t_ref:.1f} s, huarizo {t_fast:.3f} s -> {t_ref / t_fast:.0f}x faster"
    )
    assert t_ref / t_fast >= 100


def test_filter_52k(benchmark, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    base = real_instructions(shared_data)
    rng = random.Random(0)
    vocab = sorted({w for t in base for w in t.split()})
    candidates = base + [vary(rng, base, vocab) for _ in range(52_000 - len(base))]
    rng.shuffle(candidates)
    index = NoveltyIndex(0.7)

    def run() -> int:
        nonlocal index
        index = NoveltyIndex(0.7)
        return sum(index.add_if_novel(t) is None for t in candidates)

    kept = benchmark.pedantic(run, rounds=1, iterations=1)
    secs = benchmark.stats.stats.min
    print(
        f"\n[filter] 52,000 candidates: {kept} kept in {secs:.1f} s ({len(candidates) / secs:.0f} candidates/s, "
        f"{index.pairs_scored:,} LCS computed out of ~{kept * len(candidates) // 2:,} pairs)"
    )
    assert secs < 300

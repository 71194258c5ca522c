"""Tokenize + mask Alpaca records: Huarizo's `tokenize_conversations` vs the Stanford Alpaca way.

Baseline (Stanford Alpaca's `preprocess`): tokenize the source and the full text of each example one call at a time
(`return_tensors="pt"`, `padding="longest"`), then mask the first len(source) tokens. Both use the same fast tokenizer,
a byte-level BPE trained on the spot on the records. Labels must be identical wherever the baseline's prefix
assumption holds.

The machine's speed drifts by a third over minutes, so the two are measured in turns: a third of the baseline, then
a whole Huarizo run (52,000 records, a fresh call each time, caches included), three times over. Neither side runs
with the other's outputs in memory as they came out: Huarizo's are freed, the baseline's (kept to compare labels)
are packed into one tensor each, outside the timing, since tens of thousands of live small tensors slow down
whatever runs next in the process by a fifth.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from huarizo.formats import IGNORE_INDEX, Conversation, load, to_conversations, tokenize_conversations
from huarizo.formats.templates import ALPACA
from huarizo.formats.tiny import train_tokenizer

N_RECORDS = 52_000
MAX_LENGTH = 512
ROUNDS = 3


def stanford_preprocess(tok: Any, sources: list[str], targets: list[str]) -> tuple[list[Any], list[Any]]:
    """Stanford Alpaca's `preprocess`: one tokenizer call per string, mask by the source's token count."""

    def tokenize(strings: list[str]) -> tuple[list[Any], list[int]]:
        out = [tok(s, return_tensors="pt", padding="longest", max_length=MAX_LENGTH, truncation=True) for s in strings]
        ids = [t.input_ids[0] for t in out]
        lens = [t.input_ids.ne(tok.pad_token_id).sum().item() for t in out]
        return ids, lens

    examples = [s + t for s, t in zip(sources, targets, strict=True)]
    input_ids, _ = tokenize(examples)
    _, source_lens = tokenize(sources)
    labels = copy.deepcopy(input_ids)
    for label, n in zip(labels, source_lens, strict=True):
        label[:n] = IGNORE_INDEX
    return input_ids, labels


def _packed(ids: list[Any], labels: list[Any], sources: list[str]) -> Iterator[tuple[Any, Any, str]]:
    """The baseline's outputs as one tensor each, split back into records only when iterated (the split makes a
    small tensor per record, which is what packing avoids while Huarizo runs)."""
    return _unpacked(torch.cat(ids), torch.cat(labels), [len(x) for x in ids], sources)


def _unpacked(ids: Any, labels: Any, lengths: list[int], sources: list[str]) -> Iterator[tuple[Any, Any, str]]:
    yield from zip(ids.split(lengths), labels.split(lengths), sources, strict=True)


def sources_and_targets(tok: Any, convs: list[Conversation]) -> tuple[list[str], list[str]]:
    sources = [ALPACA.generation_prompt(Conversation(messages=c.messages[:-1])) for c in convs]
    return sources, [c.messages[-1].content + tok.eos_token for c in convs]


def test_masking_vs_stanford_alpaca(benchmark: Any, shared_data: Path) -> None:
    records = load(shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json")
    tok = train_tokenizer([f"{r.instruction} {r.input} {r.output}" for r in records], vocab_size=8000)
    convs = [c for r in records for c in to_conversations(r)]
    convs = (convs * (N_RECORDS // len(convs) + 1))[:N_RECORDS]
    sources, targets = sources_and_targets(tok, convs)
    cuts = [N_RECORDS * k // ROUNDS for k in range(ROUNDS + 1)]
    parts = pairwise(cuts)
    baseline_s = 0.0
    pending: list[Iterator[tuple[Any, Any, str]]] = []  # the last baseline part, compared after Huarizo's next run
    result: dict[str, Any] = {}
    compared = kept = 0

    def compare() -> None:
        # Identical labels wherever the baseline's assumption (source tokens are a prefix of the full text's) holds.
        nonlocal compared, kept
        for ids, labels, src in (row for part in pending for row in part):
            if bool((labels == IGNORE_INDEX).all()):
                continue
            sample = result["samples"][kept]
            kept += 1
            src_ids = tok(src, max_length=MAX_LENGTH, truncation=True)["input_ids"]
            if ids.tolist()[: len(src_ids)] == src_ids:
                assert sample.input_ids.tolist() == ids.tolist() and sample.labels.tolist() == labels.tolist()
                compared += 1
        pending.clear()

    def baseline_part() -> None:
        """Before each Huarizo run (outside its timing): check the last part, time the next third of the baseline."""
        nonlocal baseline_s
        compare()
        result.clear()  # neither side runs with the other's outputs still in memory
        lo, hi = next(parts)
        start = time.perf_counter()
        ids, labels = stanford_preprocess(tok, sources[lo:hi], targets[lo:hi])
        baseline_s += time.perf_counter() - start
        pending.append(_packed(ids, labels, sources[lo:hi]))

    def ours() -> None:
        result["samples"], result["stats"] = tokenize_conversations(convs, ALPACA, tok, MAX_LENGTH)

    benchmark.pedantic(ours, setup=baseline_part, rounds=ROUNDS, iterations=1)
    compare()
    ours_s = benchmark.stats.stats.mean
    stats = result["stats"]
    ratio = baseline_s / ours_s
    benchmark.extra_info.update(
        records=N_RECORDS, baseline_s=baseline_s, ours_s=ours_s, ratio=ratio, identical_labels=compared
    )
    print(
        f"\n[formats masking] {N_RECORDS} records: Stanford Alpaca way {baseline_s:.1f} s "
        f"({N_RECORDS / baseline_s:,.0f} rec/s), Huarizo {ours_s:.2f} s ({N_RECORDS / ours_s:,.0f} rec/s, mean of "
        f"{ROUNDS}): {ratio:.1f}x; identical labels on {compared} records where the prefix assumption holds; "
        f"{stats.cached} records on the cached byte-level path, {stats.resegmented} encoded by segments, "
        f"{sum(stats.dropped.values())} dropped"
    )


def test_masking_distinct_records(benchmark: Any, shared_data: Path) -> None:
    """The same comparison on records that are all different (no repeats to fill the cache): the floor."""
    records = load(shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json")
    outputs = load(shared_data / "alpaca_eval/example_outputs_805.json", "alpaca")
    convs = [c for r in [*records, *outputs] for c in to_conversations(r)]
    tok = train_tokenizer([f"{r.instruction} {r.input} {r.output}" for r in records], vocab_size=8000)
    sources, targets = sources_and_targets(tok, convs)
    start = time.perf_counter()
    stanford_preprocess(tok, sources, targets)
    baseline_s = time.perf_counter() - start

    result: dict[str, Any] = {}

    def ours() -> None:
        result["stats"] = tokenize_conversations(convs, ALPACA, tok, MAX_LENGTH)[1]

    benchmark.pedantic(ours, rounds=1, iterations=1)
    ours_s = benchmark.stats.stats.mean
    ratio = baseline_s / ours_s
    benchmark.extra_info.update(records=len(convs), baseline_s=baseline_s, ours_s=ours_s, ratio=ratio)
    print(
        f"\n[formats masking, distinct] {len(convs)} different records: Stanford Alpaca way "
        f"{len(convs) / baseline_s:,.0f} rec/s, Huarizo {len(convs) / ours_s:,.0f} rec/s: {ratio:.1f}x "
        f"({result['stats'].cached} on the cached path)"
    )

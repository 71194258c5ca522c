"""Tokenized data, packing and the exact tensors the engine is given."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from huarizo.formats import IGNORE_INDEX, read_records, to_conversations, write_records
from huarizo.trainer import BatchingConfig, DataConfig, Schedule, collate, load_samples, pack


def _engine_batches(samples, mode: str, max_length: int, micro: int = 2):  # type: ignore[no-untyped-def]
    cfg = BatchingConfig(mode=mode, micro_batch_size=micro)  # type: ignore[arg-type]
    schedule = Schedule.build(
        [len(s) for s in samples], cfg, max_length, world_size=2, grad_accum=1, epochs=1, max_steps=None, seed=1
    )
    for step in schedule.steps:
        for rank in step:
            for rows in rank:
                yield rows, collate(rows, samples, pad_id=0, packed=mode == "packed")


def _segments(batch: dict[str, torch.Tensor], r: int) -> list[tuple[int, int]]:
    """(start, end) of each sample in row r, from the position ids the model sees."""
    pos = batch["position_ids"][r].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return list(itertools.pairwise(starts))


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("alpaca_format_samples/llamafactory_alpaca_en_demo.json", "alpaca"),
        ("fastchat/dummy_conversation.json", "vicuna_v1.1"),
    ],
)
@pytest.mark.parametrize("mode", ["packed", "grouped", "padded"])
def test_engine_labels_are_the_assistant_text(
    shared_data: Path, tiny_tokenizer, tmp_path: Path, path: str, template: str, mode: str
) -> None:  # type: ignore[no-untyped-def]
    """Decoding the targets of every sample in every micro-batch gives exactly its answers, each with its EOS."""
    subset = tmp_path / "subset.jsonl"
    write_records(subset, read_records(shared_data / path).records[:80])
    convs = [c for r in read_records(subset).records for c in to_conversations(r)]
    samples, _, stats = load_samples(DataConfig(files=[subset], template=template, max_length=4096), tiny_tokenizer, 0)
    assert len(samples) == len(convs) == 80 and stats.truncated == 0
    if template == "vicuna_v1.1":
        assert max(len(c.turns) for c in convs) >= 4  # multi-turn conversations are in the mix
    seen: list[int] = []
    for rows, batch in _engine_batches(samples, mode, 4096, micro=1 if mode == "packed" else 3):
        for r, row in enumerate(rows):
            segs = _segments(batch, r)
            for i, (a, b) in zip(row, segs, strict=False):
                sample = samples[i]
                assert b - a == len(sample) and batch["input_ids"][r, a:b].tolist() == sample.input_ids.tolist()
                tgt = batch["targets"][r, a:b].tolist()
                assert tgt[-1] == IGNORE_INDEX  # a sample's last token predicts nothing: no loss across borders
                answers = [m.content for m in convs[i].turns if m.role == "assistant"]
                want = "".join(f"{ans}{tiny_tokenizer.eos_token}" for ans in answers)
                got = tiny_tokenizer.decode([t for t in tgt if t != IGNORE_INDEX])
                assert "".join(got.split()) == "".join(want.split())
                seen.append(i)
            end = sum(len(samples[i]) for i in row)
            assert (batch["targets"][r, end:] == IGNORE_INDEX).all()  # padding is never trained
    assert len(seen) == len(set(seen)) >= 0.75 * len(samples)


def test_pack_fits_every_sample_once() -> None:
    lengths = [5, 9, 3, 7, 1, 10, 2, 8, 4, 6] * 30
    order = list(range(len(lengths)))
    rows = pack(lengths, order, capacity=12, window=64)
    assert sorted(i for row in rows for i in row) == order
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    fill = sum(lengths) / (12 * len(rows))
    assert fill > 0.9


def test_schedule_is_deterministic_and_disjoint_across_ranks() -> None:
    lengths = [(i * 37) % 50 + 5 for i in range(200)]
    cfg = BatchingConfig(mode="packed", micro_batch_size=2)
    kw = {"world_size": 2, "grad_accum": 2, "epochs": 2, "max_steps": None, "seed": 3}
    a, b = Schedule.build(lengths, cfg, 64, **kw), Schedule.build(lengths, cfg, 64, **kw)  # type: ignore[arg-type]
    assert a.steps == b.steps
    first_epoch = [
        i for step in a.steps[: a.steps_per_epoch] for rank in step for mb in rank for row in mb for i in row
    ]
    assert len(first_epoch) == len(set(first_epoch))  # no sample twice within an epoch, across ranks
    assert len(a.steps) == 2 * a.steps_per_epoch


def test_mixing_weights_and_mixed_layout_augmentation(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, [{"instruction": f"Count to {i}.", "input": "", "output": f"1 to {i}."} for i in range(10)])
    write_records(b, [{"instruction": f"Name {i}.", "input": "x", "output": f"Name {i} is fine."} for i in range(20)])
    cfg = DataConfig.model_validate(
        {"files": [{"path": a, "weight": 2}, {"path": b, "weight": 0.5, "template": "mixed:3"}], "eval_fraction": 0.1}
    )
    train, evals, stats = load_samples(cfg, tiny_tokenizer, seed=0)
    assert stats.records == {str(a): 10, str(b): 20}
    assert len(train) + len(evals) == 2 * 10 + 10 and len(evals) == 3
    texts = {tiny_tokenizer.decode(s.input_ids) for s in train + evals}
    assert not any("Name" in t and "### Instruction" in t for t in texts)  # b is rendered with mixed layouts
    assert len({t.split("Name")[0] for t in texts if "Name" in t}) > 1  # ... and more than one of them

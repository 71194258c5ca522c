"""`huarizo filter` and RecordFilter: each check, rejects with reasons, the summary, exactness through the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from huarizo.datagen import FilterConfig, RecordFilter, filter_file
from huarizo.formats import load, write_records
from huarizo.formats.cli import main
from huarizo.formats.testing import rouge_score_filter


def _rec(instruction: str, output: str = "An answer.", input: str = "") -> dict[str, str]:
    return {"instruction": instruction, "input": input, "output": output}


RECORDS = [
    _rec("Describe the picture of a sunset over the harbour."),  # keywords
    _rec("Summarize."),  # length
    _rec("- Explain how tides work in simple words."),  # start: punctuation
    _rec("¿Explain why the sky looks blue during the day?"),  # start: non-ASCII
    _rec("Explain how a refrigerator keeps food cold.", output="  "),  # empty-output
    _rec("Translate the sentence into French.", input="Good morning.", output="Bonjour."),
    _rec("Translate the sentence into French.", input="Good morning.", output="Bonjour."),  # duplicate
    _rec("Name the capital of the country.", input="Peru", output="Lima"),
    _rec("Name the capital of the country.", input="Peru", output="Cusco"),  # conflict (both)
    _rec("Explain how a refrigerator keeps food cold at home.", output="By moving heat out."),
    _rec("Explain how a refrigerator keeps the food cold at home.", output="A pump moves heat."),  # rouge
    _rec("Translate the sentence into French.", input="Thank you.", output="Merci."),  # another instance: kept
]


def test_each_check_rejects_with_its_reason() -> None:
    result = RecordFilter(FilterConfig()).filter(RECORDS)
    reasons = {id(r.record): r.reason for r in result.rejected}
    got = [reasons.get(id(r), "kept") for r in RECORDS]
    assert got == [
        "keywords",
        "length",
        "start",
        "start",
        "empty-output",
        "kept",
        "duplicate",
        "conflict",
        "conflict",
        "kept",
        "rouge",
        "kept",
    ]
    rouge = next(r for r in result.rejected if r.reason == "rouge")
    assert "ROUGE-L" in rouge.detail and "refrigerator" in rouge.detail
    assert result.counts == {
        "start": 2,
        "conflict": 2,
        "keywords": 1,
        "length": 1,
        "empty-output": 1,
        "duplicate": 1,
        "rouge": 1,
    }


def test_checks_can_be_chosen() -> None:
    result = RecordFilter(FilterConfig(checks=["keywords", "duplicate"])).filter(RECORDS)
    assert result.counts == {"keywords": 1, "duplicate": 1}
    with pytest.raises(ValueError, match="unknown check"):
        FilterConfig(checks=["spelling"])


def test_pool_instructions_reject_candidates() -> None:
    f = RecordFilter(FilterConfig(), pool=["Write a haiku about the winter snow."])
    result = f.filter([_rec("Write a haiku about the winter snow!"), _rec("Plan a three-day trip to Rome.")])
    assert [r["instruction"] for r in result.kept] == ["Plan a three-day trip to Rome."]


def test_cli_writes_kept_rejects_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, RECORDS)
    assert main(["filter", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rejected: conflict" in printed and "kept" in printed and "total" in printed
    assert len(load(out, "alpaca")) == 3
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 9 and all(r["reason"] for r in rejects)
    assert main(["filter", str(src), str(out), "--checks", "rouge"]) == 0
    assert len(load(out, "alpaca")) == len(RECORDS) - 2  # only the ROUGE-L check: the rephrasing and the duplicate


def test_cli_exact_against_rouge_score_with_a_pool(shared_data: Path, tmp_path: Path) -> None:
    """The CLI's ROUGE-L decisions on real Alpaca-format samples, with the 175 seed tasks as pool."""
    seeds = shared_data / "stanford_alpaca/seed_tasks.jsonl"
    samples = json.loads((shared_data / "alpaca_format_samples/llamafactory_alpaca_en_demo.json").read_text())
    rng = random.Random(3)
    picked = rng.sample(samples, 250)
    picked += [{**r, "instruction": r["instruction"].replace(" the ", " a ", 1)} for r in rng.sample(picked, 50)]
    seen, unique = set(), []
    for r in picked:  # the CLI treats a repeated instruction as another instance of one task
        if r["instruction"] not in seen:
            seen.add(r["instruction"])
            unique.append(r)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, unique)
    assert main(["filter", str(src), str(out), "--pool", str(seeds), "--checks", "rouge"]) == 0
    kept = [r.instruction for r in load(out, "alpaca")]
    pool = [json.loads(line)["instruction"] for line in seeds.read_text().splitlines()]
    ref = rouge_score_filter([r["instruction"] for r in unique], pool)
    assert kept == [r["instruction"] for r, ok in zip(unique, ref, strict=True) if ok]
    assert len(kept) < len(unique)


def test_bad_input_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "Fine.", "output": "ok"}\n{"input": "no instruction", "output": "x"}\n')
    assert main(["filter", str(src), str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2" in err and "instruction" in err


def test_instruction_only_files_are_filtered_before_any_instance_exists(tmp_path: Path) -> None:
    """Self-Instruct filters instructions before it has instances: records with no output get the instruction
    checks (and exact duplicates), and are written back with all their fields."""
    rows = [
        {"instruction": "Describe the picture of a sunset over the harbour.", "most_similar": {}},  # keywords
        {"instruction": "Summarize."},  # length
        {"instruction": "Explain how a refrigerator keeps food cold at home.", "avg_similarity_score": 0.1},
        {"instruction": "Explain how a refrigerator keeps the food cold at home."},  # rouge
        {"instruction": "Plan a three-day trip to Rome."},
        {"instruction": "Plan a three-day trip to Rome."},  # duplicate
    ]
    src, out = tmp_path / "machine_instructions.jsonl", tmp_path / "kept.jsonl"
    write_records(src, rows)
    result = filter_file(src, out)
    assert result.instructions_only and result.kept == 2 and result.rejected == 4
    assert result.reasons == {"keywords": 1, "length": 1, "rouge": 1, "duplicate": 1}
    assert [json.loads(line) for line in out.read_text().splitlines()] == [rows[2], rows[4]]  # fields kept
    rejects = [json.loads(line) for line in result.outputs["rejects"].read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["keywords", "length", "rouge", "duplicate"]
    assert result.counts == {"records": 6, "kept": 2, "rejected": 4}


def test_instruction_only_real_file_matches_rouge_score(shared_data: Path, tmp_path: Path) -> None:
    """The 252 user-oriented Self-Instruct instructions (no top-level output), with Alpaca's 175 seed tasks as pool,
    through the CLI: the kept instructions are exactly those rouge_score's sequential filter keeps."""
    src = shared_data / "self_instruct/human_eval/user_oriented_instructions.jsonl"
    pool = shared_data / "stanford_alpaca/seed_tasks.jsonl"
    out = tmp_path / "kept.jsonl"
    argv = ["filter", str(src), str(out), "--pool", str(pool), "--checks", "rouge", "--rouge-threshold", "0.5"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    pool_instructions = [json.loads(line)["instruction"] for line in pool.read_text().splitlines()]
    ref = rouge_score_filter([r["instruction"] for r in rows], pool_instructions, threshold=0.5)
    assert kept == [r for r, ok in zip(rows, ref, strict=True) if ok]
    assert 0 < len(kept) < len(rows) and all("instances" in r and "motivation_app" in r for r in kept)

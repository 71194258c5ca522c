"""Reading, validating and writing record files, on the real data and on broken input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from huarizo.formats import (
    AlpacaRecord,
    HuarizoError,
    JsonlAppender,
    RecordError,
    ShareGPTConversation,
    atomic_file,
    atomic_folder,
    load,
    read_records,
    write_json_atomic,
    write_records,
)

REAL = {
    "stanford_alpaca/seed_tasks.jsonl": ("seed-tasks", 175),
    "fastchat/dummy_conversation.json": ("sharegpt", 500),
    "alpaca_format_samples/llamafactory_alpaca_en_demo.json": ("alpaca", 999),
    "alpaca_eval/example_outputs_805.json": ("alpaca", 805),
}


def huarizo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "import sys; from huarizo.formats.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("rel", sorted(REAL))
def test_real_files_validate(shared_data: Path, rel: str) -> None:
    fmt, count = REAL[rel]
    result = read_records(shared_data / rel)
    assert result.format == fmt
    assert len(result.records) == count
    assert not result.errors


def test_unknown_fields_are_kept(shared_data: Path) -> None:
    rec = load(shared_data / "alpaca_eval/example_outputs_805.json")[0]
    assert rec.metadata["generator"] == "example"
    assert rec.to_json()["dataset"] == rec.metadata["dataset"]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"instruction": "a", "output": ', None, "invalid JSON"),
        ('{"instruction": "a"}', "output", "missing required field"),
        ('{"instruction": "a", "output": 3}', "output", "string"),
        ('{"instruction": "   ", "output": "x"}', "instruction", "instruction is empty"),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_bad_alpaca_line_names_file_line_and_field(tmp_path: Path, line: str, field: str | None, message: str) -> None:
    good = '{"instruction": "Say hi", "output": "hi"}'
    path = write(tmp_path / "data.jsonl", f"{good}\n{line}\n{good}\n")
    with pytest.raises(RecordError) as info:
        load(path, "alpaca")
    err = info.value
    assert err.file == str(path) and err.where == "line 2" and err.field == field
    assert message in str(err)
    skipped = read_records(path, "alpaca", skip_invalid=True)
    assert len(skipped.records) == 2 and len(skipped.errors) == 1


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}], "expected 'human'"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "turn 1 is from 'human'"),
        ([], "conversation is empty"),
        ([{"from": "robot", "value": "a"}], "conversations.0.from"),
    ],
)
def test_bad_sharegpt(tmp_path: Path, turns: list[dict[str, str]], message: str) -> None:
    path = write(tmp_path / "c.json", json.dumps([{"id": "ok", "conversations": turns}]))
    with pytest.raises(RecordError, match="record 0") as info:
        load(path, "sharegpt")
    assert message in str(info.value)


def test_bom_and_crlf_are_read(tmp_path: Path) -> None:
    body = '{"instruction": "a", "output": "b"}\r\n{"instruction": "c", "input": "d", "output": "e"}\r\n'
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + body.encode())
    recs = load(path)
    assert [r.instruction for r in recs] == ["a", "c"] and recs[1].input == "d"


def test_ten_megabyte_record(tmp_path: Path) -> None:
    big = "x" * 10_000_000
    path = write(tmp_path / "big.jsonl", json.dumps({"instruction": "long", "output": big}) + "\n")
    assert load(path)[0].output == big


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_write_read_round_trip(tmp_path: Path, suffix: str) -> None:
    recs = [AlpacaRecord(instruction=f"task {i}", input="in" if i % 2 else "", output=f"out {i}") for i in range(5)]
    path = tmp_path / f"out{suffix}"
    assert write_records(path, recs) == 5
    assert load(path) == recs


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "keep.jsonl"
    write_records(path, [AlpacaRecord(instruction="a", output="b")])
    before = path.read_bytes()

    def broken():  # type: ignore[no-untyped-def]
        yield AlpacaRecord(instruction="c", output="d")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_records(path, broken())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jsonl"]


def test_atomic_folder_and_json_leave_the_old_content_on_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        write_json_atomic(tmp / "config.json", {"layers": 2, "path": tmp_path})
    assert json.loads((target / "config.json").read_text()) == {"layers": 2, "path": str(tmp_path)}
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "config.json").write_text("{half")
        raise RuntimeError("killed while saving")
    assert json.loads((target / "config.json").read_text())["layers"] == 2
    with pytest.raises(RuntimeError), atomic_file(target / "config.json") as fh:
        fh.write("{half")
        raise RuntimeError("killed while writing")
    assert json.loads((target / "config.json").read_text())["layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and os.listdir(target) == ["config.json"]


def test_appender_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "out')
    with JsonlAppender(path) as app:
        assert app.existing() == [{"instruction": "a", "output": "b"}]
        app.append([AlpacaRecord(instruction="e", output="f")])
    assert [r.instruction for r in load(path)] == ["a", "e"]


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(HuarizoError, match=r"unknown file type '\.csv'"):
        load(write(tmp_path / "x.csv", "a,b"))


def test_cli_validate(tmp_path: Path, shared_data: Path) -> None:
    ok = huarizo("validate", str(shared_data / "fastchat/dummy_conversation.json"))
    assert ok.returncode == 0 and "500 records (sharegpt), 500 valid, 0 invalid" in ok.stdout
    bad = write(tmp_path / "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": ""}\n')
    res = huarizo("validate", str(bad), "--format", "alpaca")
    assert res.returncode == 1
    assert f"{bad}: line 2: field 'instruction'" in res.stdout and "Traceback" not in res.stderr


def test_cli_convert_skip_invalid_writes_rejects(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": 1}\nnot json\n')
    out = tmp_path / "out.json"
    res = huarizo("convert", str(src), str(out), "--to", "sharegpt", "--format", "alpaca", "--skip-invalid")
    assert res.returncode == 0, res.stderr
    convs = load(out, "sharegpt")
    assert len(convs) == 1 and isinstance(convs[0], ShareGPTConversation)
    rejects = [json.loads(x) for x in (tmp_path / "out.json.rejects.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rejects] == ["line 2", "line 3"]
    strict = huarizo("convert", str(src), str(tmp_path / "o2.json"), "--to", "sharegpt", "--format", "alpaca")
    assert strict.returncode == 1 and "line 2" in strict.stderr and not (tmp_path / "o2.json").exists()


def test_cli_convert_a_conversation_it_cannot_convert(tmp_path: Path) -> None:
    """Multi-turn ShareGPT to Alpaca: an error naming the file and the line, or with --skip-invalid a reject."""
    turns = [["human", "hi"], ["gpt", "hello"], ["human", "and?"], ["gpt", "bye"]]
    rows = [
        {"id": "one", "conversations": [{"from": f, "value": v} for f, v in turns[:2]]},
        {"id": "two", "conversations": [{"from": f, "value": v} for f, v in turns]},
    ]
    src = write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    strict = huarizo("convert", str(src), str(tmp_path / "strict.json"), "--to", "alpaca")
    assert strict.returncode == 1 and f"{src}: line 2" in strict.stderr and "--first-turn" in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "strict.json").exists()
    out = tmp_path / "out.json"
    res = huarizo("convert", str(src), str(out), "--to", "alpaca", "--skip-invalid")
    assert res.returncode == 0, res.stderr
    assert [r.instruction for r in load(out, "alpaca")] == ["hi"]
    (reject,) = [json.loads(x) for x in (tmp_path / "out.json.rejects.jsonl").read_text().splitlines()]
    assert reject["where"] == "line 2" and "--first-turn" in reject["reason"]


def test_cli_convert_regroups_seed_tasks(tmp_path: Path, shared_data: Path) -> None:
    seeds = shared_data / "stanford_alpaca/seed_tasks.jsonl"
    alpaca, back = tmp_path / "alpaca.jsonl", tmp_path / "seeds.jsonl"
    assert huarizo("convert", str(seeds), str(alpaca), "--to", "alpaca").returncode == 0
    res = huarizo("convert", str(alpaca), str(back), "--to", "seed-tasks")
    assert res.returncode == 0, res.stderr
    assert load(back, "seed-tasks") == load(seeds, "seed-tasks")

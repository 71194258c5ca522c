"""Every way a data or config file can be bad, through the reader, the config loader and the formats commands
(validate, convert, render, config): one line naming the file, the line (for bytes, the byte offset) and the cause;
exit 1; no traceback; no output file touched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from huarizo.formats import ConfigError, HuarizoConfig, HuarizoError, read_records

GOOD = b'{"instruction": "Say hi.", "output": "hi"}\n'
DEEP = b"[" * 100_000 + b"]" * 100_000
LATIN1_JSON = b'[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "\xff", "output": "c"}\n]'
LATIN1_AT = LATIN1_JSON.index(b"\xff")


def _unreadable(path: Path) -> None:
    """A file that cannot be read, even by root: reading /proc/self/mem at offset 0 fails with EIO."""
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux's /proc")
    path.symlink_to("/proc/self/mem")


# class -> (file name, how to make it, where, cause): the message must be `{file}: {where}: {cause...}`.
Case = tuple[str, Callable[[Path], object], str | None, str]
DATA: dict[str, Case] = {
    "missing": ("nope.jsonl", lambda p: None, None, "no such file"),
    "folder": ("dir.jsonl", lambda p: p.mkdir(), None, "is a folder, not a data file"),
    "unreadable": ("mem.jsonl", _unreadable, "line 1", "cannot read it (Input/output error)"),
    "not-utf8-jsonl": (
        "latin1.jsonl",
        lambda p: p.write_bytes(GOOD + b'{"instruction": "caf\xe9", "output": "x"}\n'),
        "line 2",
        f"not UTF-8 text (byte 0xe9 at byte offset {len(GOOD) + 20}: invalid continuation byte)",
    ),
    "not-utf8-json": (
        "latin1.json",
        lambda p: p.write_bytes(LATIN1_JSON),
        "line 3",
        f"not UTF-8 text (byte 0xff at byte offset {LATIN1_AT}: invalid start byte)",
    ),
    "deep-jsonl": (
        "deep.jsonl",
        lambda p: p.write_bytes(GOOD + b'{"instruction": "a", "output": "b", "x": ' + DEEP + b"}\n"),
        "line 2",
        "JSON nested too deeply (more than about 1,000 levels)",
    ),
    "deep-json": (
        "deep.json",
        lambda p: p.write_bytes(b"[\n" + GOOD.strip() + b",\n" + DEEP + b"\n]"),
        "record 1 (line 3)",
        "JSON nested too deeply",
    ),
    "empty-jsonl": ("empty.jsonl", lambda p: p.write_bytes(b"\n\n"), None, "no records"),
    "empty-json": ("empty.json", lambda p: p.write_bytes(b"[]"), None, "no records"),
    "invalid-json": (
        "broken.json",
        lambda p: p.write_bytes(b'[{"instruction": "a",\n "output": }]'),
        "line 2",
        "invalid JSON",
    ),
    "not-parquet": ("fake.parquet", lambda p: p.write_bytes(b"PAR1 not really"), None, "not a readable Parquet file"),
    "unknown-type": ("data.csv", lambda p: p.write_bytes(b"a,b\n"), None, "unknown file type '.csv'"),
}


def make(tmp_path: Path, case: Case) -> tuple[Path, str]:
    """The bad file, and the start of the message that must name it."""
    name, build, where, cause = case
    path = tmp_path / name
    build(path)
    return path, f"{path}: " + (f"{where}: " if where else "") + cause


@pytest.mark.parametrize("kind", sorted(DATA))
def test_reader_names_file_line_and_cause(tmp_path: Path, kind: str) -> None:
    path, message = make(tmp_path, DATA[kind])
    with pytest.raises(HuarizoError) as info:
        read_records(path, "alpaca")
    assert str(info.value).startswith(message)


def test_empty_is_fine_where_the_caller_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert read_records(path, allow_empty=True).records == []


def huarizo(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from huarizo.formats.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


# A bad line inside an otherwise readable file is a bad record: `validate` lists it (stdout), the others stop at it.
PER_RECORD = {"not-utf8-jsonl", "deep-jsonl"}


@pytest.mark.parametrize("command", ["validate", "convert", "render"])
@pytest.mark.parametrize("kind", sorted(DATA))
def test_formats_commands_report_one_line(tmp_path: Path, kind: str, command: str) -> None:
    path, message = make(tmp_path, DATA[kind])
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    args = {
        "validate": ["validate", str(path), "--format", "alpaca"],
        "convert": ["convert", str(path), str(out), "--to", "sharegpt", "--format", "alpaca"],
        "render": ["render", str(path), "--template", "alpaca", "--format", "alpaca"],
    }[command]
    proc = huarizo(*args)
    if command == "validate" and kind in PER_RECORD:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and not proc.stderr.strip()
        assert "2 records (alpaca), 1 valid, 1 invalid" in proc.stdout and message in proc.stdout
    else:
        assert one_error_line(proc).startswith(message)
    assert out.read_text() == "keep me\n"  # nothing already written is touched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # no temporary file left


def test_convert_to_a_folder_or_an_unwritable_place(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(GOOD)
    (tmp_path / "dir.jsonl").mkdir()
    line = one_error_line(huarizo("convert", str(src), str(tmp_path / "dir.jsonl"), "--to", "sharegpt"))
    assert line == f"{tmp_path / 'dir.jsonl'}: is a folder; give the name of the file to write"
    line = one_error_line(huarizo("convert", str(src), "/proc/huarizo/out.jsonl", "--to", "sharegpt"))
    assert line.startswith("/proc/huarizo/out.jsonl: cannot write it (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "{data}", "--template", "alpaca", "-n", "0"], "-n: must be at least 1 (got 0)"),
        (["render", "{data}", "--template", "alpaca", "--max-length", "0"], "--max-length: must be at least 1 (got 0)"),
        (["validate", "{data}", "--max-errors", "-1"], "--max-errors: must be at least 0 (got -1)"),
    ],
)
def test_out_of_range_flags_name_the_flag(tmp_path: Path, args: list[str], message: str) -> None:
    data = tmp_path / "ok.jsonl"
    data.write_bytes(GOOD)
    assert one_error_line(huarizo(*[a.format(data=data) for a in args])) == message


class Recipe(HuarizoConfig):
    name: str = "x"


CONFIGS: dict[str, Case] = {
    "missing": ("nope.yaml", lambda p: None, None, "no such config file"),
    "folder": ("dir.yaml", lambda p: p.mkdir(), None, "is a folder, not a config file"),
    "unreadable": ("mem.yaml", _unreadable, None, "cannot read it (Input/output error)"),
    "not-utf8": (
        "latin1.yaml",
        lambda p: p.write_bytes(b"# a recipe\nname: caf\xe9\n"),
        "line 2",
        "not UTF-8 text (byte 0xe9 at byte offset 20: invalid continuation byte)",
    ),
    "invalid-yaml": ("bad.yaml", lambda p: p.write_bytes(b"name: a\noptim: [\n"), "line 3", "not valid YAML"),
    "deep-yaml": ("deep.yaml", lambda p: p.write_bytes(b"name: " + DEEP), None, "YAML nested too deeply"),
    "not-a-mapping": ("list.yaml", lambda p: p.write_bytes(b"- a\n- b\n"), None, "the top level must be a mapping"),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_loader_names_file_line_and_cause(tmp_path: Path, kind: str) -> None:
    path, message = make(tmp_path, CONFIGS[kind])
    with pytest.raises(ConfigError) as info:
        Recipe.load(path)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_command_reports_one_line(tmp_path: Path, kind: str) -> None:
    """`huarizo config show` (every command's config goes through the same loader)."""
    from huarizo.formats.config import config_classes

    name = next(iter(sorted(config_classes())), None)
    if name is None:
        pytest.skip("no config class installed")
    path, message = make(tmp_path, CONFIGS[kind])
    assert one_error_line(huarizo("config", "show", name, str(path))).startswith(message)

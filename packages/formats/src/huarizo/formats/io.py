"""Reading and writing record files: JSON arrays, JSONL and Parquet, chosen by extension.

Reading streams JSONL line by line; errors name the file, the line (JSONL) or record index (JSON, Parquet) and the
field. Every way a file can fail to read (a folder, no permission, bytes that are not UTF-8, JSON nested deeper than
the parser's stack, no records at all) is a `HuarizoError` naming the file, the line (and for bytes, the byte offset)
and the cause. Writing is atomic (temporary file + rename: `atomic_file`, `write_text_atomic`, `write_json_atomic`, and
`atomic_folder` for a whole folder such as a model); `JsonlAppender` appends resumably for long-running jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from huarizo.formats.errors import HuarizoError, RecordError
from huarizo.formats.schemas import FORMATS

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


def file_kind(path: str | os.PathLike[str]) -> str:
    """`jsonl`, `json` or `parquet`, from the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise HuarizoError(f"{path}: unknown file type {suffix or '(none)'!r}; use .jsonl, .json or .parquet")
    return _SUFFIXES[suffix]


@dataclass(frozen=True)
class RawRecord:
    """A record as read from disk, before validation, with its location for error messages."""

    file: str
    where: str
    data: Any


def _cannot_read(name: str, exc: OSError) -> HuarizoError:
    if isinstance(exc, IsADirectoryError):
        return HuarizoError(f"{name}: is a folder, not a data file")
    return HuarizoError(f"{name}: cannot read it ({exc.strerror or exc})")


def _not_utf8(data: bytes, exc: UnicodeDecodeError, offset: int = 0) -> tuple[str, str]:
    """(`line N`, the cause) of bytes that are not UTF-8; `offset` is where `data` starts in the file."""
    at = offset + exc.start
    line = data.count(b"\n", 0, exc.start) + 1
    return f"line {line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {at}: {exc.reason})"


_TOO_DEEP = "JSON nested too deeply (more than about 1,000 levels)"


def _deep_record(text: str, limit: int = 500) -> str:
    """Where a JSON document first nests deeper than `limit`: `record K (line N)` of its top-level array, or
    `line N`."""
    depth, line, in_str, esc = 0, 1, False, False
    record, record_line = -1, 1
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth == 2:
                record, record_line = record + 1, line
            if depth > limit:
                return f"record {record} (line {record_line})" if record >= 0 else f"line {line}"
        elif ch in "]}":
            depth -= 1
        if ch == "\n":
            line += 1
    return f"line {line}"


def iter_raw(path: str | os.PathLike[str]) -> Iterator[RawRecord | RecordError]:
    """Yield each record of a file as a dict, or a `RecordError` for a line that is not a JSON object.

    Raises `HuarizoError` naming the file (and the line) when the file itself cannot be read.
    """
    name, kind = str(path), file_kind(path)
    if not Path(path).exists():
        raise HuarizoError(f"{name}: no such file")
    if Path(path).is_dir():
        raise HuarizoError(f"{name}: is a folder, not a data file")
    if kind == "jsonl":
        yield from _iter_jsonl(name)
    elif kind == "json":
        yield from _iter_json(name)
    else:
        import polars as pl

        try:
            frame = pl.read_parquet(name)
        except OSError as exc:
            raise _cannot_read(name, exc) from None
        except Exception as exc:  # polars raises its own error types for a file that is not Parquet
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HuarizoError(f"{name}: not a readable Parquet file ({first})") from None
        for i, row in enumerate(frame.iter_rows(named=True)):
            yield RawRecord(name, f"row {i}", {k: v for k, v in row.items() if v is not None})


def _iter_jsonl(name: str) -> Iterator[RawRecord | RecordError]:
    try:
        fh = open(name, "rb")  # noqa: SIM115 (closed below; errors while reading are reported with their line)
    except OSError as exc:
        raise _cannot_read(name, exc) from None
    with fh:
        offset = 0
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except OSError as exc:
                raise HuarizoError(f"{name}: line {lineno + 1}: cannot read it ({exc.strerror or exc})") from None
            if not raw:
                return
            lineno += 1
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, start = raw[3:], start + 3
            where = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RecordError(name, where, None, _not_utf8(raw, exc, start)[1])
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RecordError(name, where, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            except RecursionError:
                yield RecordError(name, where, None, _TOO_DEEP)
                continue
            yield RawRecord(name, where, data)


def _iter_json(name: str) -> Iterator[RawRecord | RecordError]:
    try:
        with open(name, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise _cannot_read(name, exc) from None
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        where, cause = _not_utf8(raw[bom:], exc, bom)
        raise RecordError(name, where, None, cause) from None
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(name, f"line {exc.lineno}", None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RecordError(name, _deep_record(text), None, _TOO_DEEP) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RecordError(name, "top level", None, "expected a JSON array of records")
    for i, item in enumerate(data):
        yield RawRecord(name, f"record {i}", item)


def detect_format(data: Any) -> str | None:
    """Guess a record's format from its keys: `sharegpt`, `openai`, `seed-tasks` or `alpaca`."""
    if not isinstance(data, dict):
        return None
    for key, fmt in (("conversations", "sharegpt"), ("messages", "openai"), ("instances", "seed-tasks")):
        if key in data:
            return fmt
    return "alpaca" if "instruction" in data else None


def _record_errors(raw: RawRecord, exc: ValidationError) -> list[RecordError]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing required field"
        out.append(RecordError(raw.file, raw.where, loc, msg))
    return out


def parse_record(raw: RawRecord, fmt: str) -> BaseModel:
    """Validate one raw record as `fmt`; raises `RecordError` naming the field."""
    if not isinstance(raw.data, dict):
        raise RecordError(raw.file, raw.where, None, f"expected a JSON object, got {type(raw.data).__name__}")
    try:
        return FORMATS[fmt].model_validate(raw.data)
    except ValidationError as exc:
        errors = _record_errors(raw, exc)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RecordError(first.file, first.where, first.field, first.message + more) from None


@dataclass
class ReadResult:
    """Records read from a file, with the errors of the records that were skipped."""

    format: str
    records: list[Any] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)


def read_records(
    path: str | os.PathLike[str], fmt: str = "auto", *, skip_invalid: bool = False, allow_empty: bool = False
) -> ReadResult:
    """Read and validate every record of a file.

    With `skip_invalid` the invalid records are left out and reported in `errors`; otherwise the first one raises.
    A file without any record is an error ("no records") unless `allow_empty`.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise HuarizoError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # With `auto`, the first readable record decides the format (default alpaca when there is none).
    result = ReadResult(format="alpaca" if fmt == "auto" else fmt)
    detected = fmt != "auto"
    for item in iter_raw(path):
        if not detected and isinstance(item, RawRecord):
            found = detect_format(item.data)
            if found is None:
                raise RecordError(item.file, item.where, None, "cannot tell the format from its keys; pass --format")
            result.format, detected = found, True
        try:
            if isinstance(item, RecordError):
                raise item
            result.records.append(parse_record(item, result.format))
            result.locations.append(item.where)
        except RecordError as err:
            if not skip_invalid:
                raise
            result.errors.append(err)
    if not allow_empty and not result.records and not result.errors:
        raise HuarizoError(f"{path}: no records (the file is empty)")
    return result


def load(path: str | os.PathLike[str], fmt: str = "auto", *, allow_empty: bool = False) -> list[Any]:
    """Read a file strictly: every record must be valid (and there must be one, unless `allow_empty`)."""
    return read_records(path, fmt, allow_empty=allow_empty).records


def _jsonable(record: Any) -> Any:
    return record.to_json() if hasattr(record, "to_json") else record


def dumps_line(record: Any) -> str:
    """One record as a JSONL line (with the newline)."""
    return json.dumps(_jsonable(record), ensure_ascii=False) + "\n"


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing (text in UTF-8, or bytes with `mode="wb"`); when the block
    ends it replaces `path` in one rename, so a reader (or a crash) never sees half a file. On an error the temporary
    file is removed and `path` is left as it was. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_file`); returns the path."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as indented JSON (UTF-8, a final newline; values JSON does not know are written as strings)
    atomically; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside `target` to fill (a model, a checkpoint); when the block ends it replaces `target`
    (an existing folder is removed first), so a crash never leaves half a folder under the final name. On an error
    the temporary folder is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_records(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write records atomically (temporary file, then rename), in the format the extension names. Returns the count."""
    path = Path(path)
    kind = file_kind(path)
    if path.is_dir():
        raise HuarizoError(f"{path}: is a folder; give the name of the file to write")
    rows = [_jsonable(r) for r in records]
    try:
        with atomic_file(path, "wb" if kind == "parquet" else "w") as fh:
            if kind == "jsonl":
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            elif kind == "json":
                json.dump(rows, fh, ensure_ascii=False, indent=2)
                fh.write("\n")
            else:
                import polars as pl

                pl.DataFrame(rows).write_parquet(fh)
    except OSError as exc:
        raise HuarizoError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    return len(rows)


class JsonlAppender:
    """Append records to a JSONL file so that a job killed at any moment can resume.

    On open, a last line cut off by a crash is truncated away; `existing()` returns the records already there.
    Each `append` writes whole lines and flushes them to the OS.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _repair(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def existing(self) -> list[dict[str, Any]]:
        """The records already in the file."""
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def append(self, records: Iterable[Any]) -> None:
        """Append records as whole lines."""
        self._fh.write("".join(dumps_line(r) for r in records))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

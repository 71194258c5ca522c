"""Reading and writing record files: JSON arrays, JSONL and Parquet, chosen by extension.

Reading streams JSONL line by line; errors name the file, the line (JSONL) or record index (JSON, Parquet) and the
field. Writing is atomic (temporary file + rename); `JsonlAppender` appends resumably for long-running jobs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
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


def iter_raw(path: str | os.PathLike[str]) -> Iterator[RawRecord | RecordError]:
    """Yield each record of a file as a dict, or a `RecordError` for a line that is not a JSON object."""
    name, kind = str(path), file_kind(path)
    if not Path(path).exists():
        raise HuarizoError(f"{name}: no such file")
    if kind == "jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"line {lineno}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield RecordError(name, where, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
                    continue
                yield RawRecord(name, where, data)
    elif kind == "json":
        try:
            with open(path, encoding="utf-8-sig") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}"
            raise RecordError(name, where, None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise RecordError(name, "top level", None, "expected a JSON array of records")
        for i, item in enumerate(data):
            yield RawRecord(name, f"record {i}", item)
    else:
        import polars as pl

        for i, row in enumerate(pl.read_parquet(str(path)).iter_rows(named=True)):
            yield RawRecord(name, f"row {i}", {k: v for k, v in row.items() if v is not None})


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


def read_records(path: str | os.PathLike[str], fmt: str = "auto", *, skip_invalid: bool = False) -> ReadResult:
    """Read and validate every record of a file.

    With `skip_invalid` the invalid records are left out and reported in `errors`; otherwise the first one raises.
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
    return result


def load(path: str | os.PathLike[str], fmt: str = "auto") -> list[Any]:
    """Read a file strictly: every record must be valid."""
    return read_records(path, fmt).records


def _jsonable(record: Any) -> Any:
    return record.to_json() if hasattr(record, "to_json") else record


def dumps_line(record: Any) -> str:
    """One record as a JSONL line (with the newline)."""
    return json.dumps(_jsonable(record), ensure_ascii=False) + "\n"


def write_records(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write records atomically (temporary file, then rename), in the format the extension names. Returns the count."""
    path = Path(path)
    kind = file_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_jsonable(r) for r in records]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if kind == "jsonl":
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            elif kind == "json":
                json.dump(rows, fh, ensure_ascii=False, indent=2)
                fh.write("\n")
        if kind == "parquet":
            import polars as pl

            pl.DataFrame(rows).write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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

"""Errors Huarizo shows to users: the `huarizo` command prints them without a traceback."""

from __future__ import annotations


class HuarizoError(Exception):
    """Base of every user-facing error; its message says what is wrong and where."""


class RecordError(HuarizoError, ValueError):
    """A record that cannot be read or validated: names the file, the line or record, and the field."""

    def __init__(self, file: str, where: str, field: str | None, message: str) -> None:
        self.file, self.where, self.field, self.message = file, where, field, message
        loc = f"{file}: {where}" + (f": field {field!r}" if field else "")
        super().__init__(f"{loc}: {message}")


class ConversionError(HuarizoError, ValueError):
    """A record that cannot be represented in the target format."""

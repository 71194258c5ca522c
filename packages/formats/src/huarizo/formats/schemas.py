"""Typed records for every data format Huarizo reads and writes.

Each on-disk format has its own model (`SeedTask`, `AlpacaRecord`, `ShareGPTConversation`, `OpenAIConversation`);
all of them convert to and from the internal `Conversation`. Fields a model does not know are kept in
`metadata`, so provenance survives a round trip.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant"]


class _Record(BaseModel):
    """Base for on-disk records: unknown keys are collected into `metadata`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    known: ClassVar[tuple[str, ...]] = ()

    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_unknown(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.known) | {"metadata"}
        aliases = {f.alias for f in cls.model_fields.values() if f.alias}
        extra = {k: v for k, v in data.items() if k not in known and k not in aliases}
        if not extra:
            return data
        kept = {k: v for k, v in data.items() if k not in extra}
        kept["metadata"] = {**extra, **(data.get("metadata") or {})}
        return kept

    def to_json(self) -> dict[str, Any]:
        """The record as it is written to disk: known fields first, then metadata keys at top level."""
        out = self.model_dump(by_alias=True, exclude={"metadata"})
        for key, value in self.metadata.items():
            out.setdefault(key, value)
        return out


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


class Instance(BaseModel):
    """One input/output example of a seed task."""

    model_config = ConfigDict(extra="forbid")
    input: str = ""
    output: str


class SeedTask(_Record):
    """A human-written seed task (Self-Instruct / Alpaca `seed_tasks.jsonl`)."""

    known = ("id", "name", "instruction", "instances", "is_classification")
    id: str
    name: str = ""
    instruction: str
    instances: list[Instance] = Field(min_length=1)
    is_classification: bool = False

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str) -> str:
        return _not_blank(v, "instruction")


class AlpacaRecord(_Record):
    """An Alpaca instruction-tuning record: instruction, optional input, output."""

    known = ("instruction", "input", "output")
    instruction: str
    input: str = ""
    output: str

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str) -> str:
        return _not_blank(v, "instruction")


class ShareGPTTurn(BaseModel):
    """One turn of a ShareGPT conversation."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Literal["human", "gpt", "system"] = Field(alias="from")
    value: str


class ShareGPTConversation(_Record):
    """A ShareGPT conversation: alternating human / gpt turns, optionally led by one system turn."""

    known = ("id", "conversations")
    id: str
    conversations: list[ShareGPTTurn]

    @model_validator(mode="after")
    def _alternates(self) -> ShareGPTConversation:
        turns = self.conversations
        if not turns:
            raise ValueError("conversation is empty")
        body = turns[1:] if turns[0].from_ == "system" else turns
        if not body:
            raise ValueError("conversation has only a system turn")
        for i, turn in enumerate(body):
            want = "human" if i % 2 == 0 else "gpt"
            if turn.from_ != want:
                pos = i + (len(turns) - len(body))
                raise ValueError(
                    f"turn {pos} is from {turn.from_!r}, expected {want!r} (turns must alternate human/gpt)"
                )
        return self


class OpenAIMessage(BaseModel):
    """An OpenAI chat message."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class OpenAIConversation(_Record):
    """A chat in OpenAI's fine-tuning layout: `{"messages": [{"role", "content"}, ...]}`."""

    known = ("messages",)
    messages: list[OpenAIMessage] = Field(min_length=1)


class Message(BaseModel):
    """One message of the internal `Conversation`.

    `input` is the Alpaca task input of a user turn, kept apart from the instruction so the Alpaca template can use
    its with-input layout; every other template shows it after the content, separated by a blank line.
    """

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str
    input: str = ""

    @property
    def text(self) -> str:
        """The content as a chat model sees it (instruction and input joined)."""
        return f"{self.content}\n\n{self.input}" if self.input else self.content


class Conversation(BaseModel):
    """The internal form every format converts to: optional system message, then user/assistant alternating."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    messages: list[Message]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _alternates(self) -> Conversation:
        msgs = self.messages
        if not msgs:
            raise ValueError("conversation is empty")
        body = msgs[1:] if msgs[0].role == "system" else msgs
        for i, m in enumerate(body):
            want = "user" if i % 2 == 0 else "assistant"
            if m.role != want:
                raise ValueError(f"message {i + len(msgs) - len(body)} has role {m.role!r}, expected {want!r}")
            if m.input and m.role != "user":
                raise ValueError("only user messages carry an input")
        return self

    @property
    def system(self) -> str | None:
        """The system message, if any."""
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def turns(self) -> list[Message]:
        """The messages after the system message."""
        return self.messages[1:] if self.system is not None else list(self.messages)


FORMATS: dict[str, type[_Record]] = {
    "alpaca": AlpacaRecord,
    "sharegpt": ShareGPTConversation,
    "openai": OpenAIConversation,
    "seed-tasks": SeedTask,
}
"""Format name -> record model, as used by `--format` / `--to`."""

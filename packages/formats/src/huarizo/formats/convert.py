"""Conversion between formats, through the internal `Conversation`.

Round trips that can be lossless are: Alpaca <-> ShareGPT <-> OpenAI keep the Alpaca input apart (as
`alpaca_input`) and every unknown field; seed tasks -> conversations -> seed tasks regroups the instances.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from huarizo.formats.errors import ConversionError
from huarizo.formats.schemas import (
    AlpacaRecord,
    Conversation,
    Instance,
    Message,
    OpenAIConversation,
    OpenAIMessage,
    SeedTask,
    ShareGPTConversation,
    ShareGPTTurn,
)

Turn = Literal["error", "first", "last"]
_SG_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}
_ROLE_SG = {v: k for k, v in _SG_ROLE.items()}


def content_id(conv: Conversation) -> str:
    """A stable id derived from a conversation's messages (used when a record has none)."""
    payload = json.dumps([m.model_dump() for m in conv.messages], sort_keys=True, ensure_ascii=False)
    return "h-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def _split_input(messages: list[Message], metadata: dict[str, Any]) -> None:
    """Restore the Alpaca input that `_join_input` folded into the first user message."""
    extra = metadata.pop("alpaca_input", None)
    if not extra:
        return
    for i, m in enumerate(messages):
        if m.role == "user":
            suffix = f"\n\n{extra}"
            if m.content.endswith(suffix):
                messages[i] = Message(role="user", content=m.content[: -len(suffix)], input=extra)
            else:
                metadata["alpaca_input"] = extra
            return


def to_conversations(record: Any) -> list[Conversation]:
    """Convert any format's record into internal conversations (a seed task gives one per instance)."""
    if isinstance(record, Conversation):
        return [record]
    meta = dict(record.metadata)
    if isinstance(record, AlpacaRecord):
        system = meta.pop("system", None)
        msgs = [Message(role="system", content=system)] if system is not None else []
        msgs += [
            Message(role="user", content=record.instruction, input=record.input),
            Message(role="assistant", content=record.output),
        ]
        conv_id = meta.pop("id", None)
        return [Conversation(id=conv_id, messages=msgs, metadata=meta)]
    if isinstance(record, ShareGPTConversation):
        msgs = [Message(role=_SG_ROLE[t.from_], content=t.value) for t in record.conversations]  # type: ignore[arg-type]
        _split_input(msgs, meta)
        return [Conversation(id=record.id, messages=msgs, metadata=meta)]
    if isinstance(record, OpenAIConversation):
        msgs = [Message(role=m.role, content=m.content) for m in record.messages]
        _split_input(msgs, meta)
        return [Conversation(id=meta.pop("id", None), messages=msgs, metadata=meta)]
    if isinstance(record, SeedTask):
        out = []
        for k, inst in enumerate(record.instances):
            seed_meta = {"seed_id": record.id, "seed_name": record.name, "is_classification": record.is_classification}
            out.append(
                Conversation(
                    id=f"{record.id}-{k}" if len(record.instances) > 1 else record.id,
                    messages=[
                        Message(role="user", content=record.instruction, input=inst.input),
                        Message(role="assistant", content=inst.output),
                    ],
                    metadata={**seed_meta, **meta},
                )
            )
        return out
    raise ConversionError(f"cannot convert {type(record).__name__}")


def _pick_turn(conv: Conversation, turn: Turn, where: str) -> tuple[Message, Message]:
    body = conv.turns
    pairs = [(body[i], body[i + 1]) for i in range(0, len(body) - 1, 2)]
    if len(body) % 2:
        raise ConversionError(f"{where}: conversation ends with a user message that has no answer")
    if len(pairs) > 1 and turn == "error":
        raise ConversionError(
            f"{where}: conversation has {len(pairs)} user turns, an Alpaca record holds one; "
            "pass --first-turn or --last-turn to keep one of them"
        )
    return pairs[0] if turn == "first" else pairs[-1]


def _id_meta(conv: Conversation) -> dict[str, Any]:
    return {"id": conv.id} if conv.id is not None and conv.id != content_id(conv) else {}


def _input_meta(conv: Conversation) -> tuple[list[Message], dict[str, Any]]:
    meta: dict[str, Any] = {}
    users = [m for m in conv.messages if m.role == "user"]
    if users and users[0].input:
        meta["alpaca_input"] = users[0].input
    if any(m.input for m in users[1:]):
        raise ConversionError("only the first user message of a conversation can carry an Alpaca input")
    return conv.messages, meta


def from_conversation(conv: Conversation, fmt: str, *, turn: Turn = "error", where: str = "record") -> Any:
    """Convert an internal conversation to one record of `fmt` (alpaca, sharegpt, openai, seed-tasks)."""
    if fmt == "alpaca":
        user, answer = _pick_turn(conv, turn, where)
        meta = {**_id_meta(conv), **conv.metadata}
        if conv.system is not None:
            meta["system"] = conv.system
        return AlpacaRecord(instruction=user.content, input=user.input, output=answer.content, metadata=meta)
    if fmt in ("sharegpt", "openai"):
        msgs, meta = _input_meta(conv)
        meta.update(conv.metadata)
        if fmt == "sharegpt":
            turns = [ShareGPTTurn.model_validate({"from": _ROLE_SG[m.role], "value": m.text}) for m in msgs]
            return ShareGPTConversation(id=conv.id or content_id(conv), conversations=turns, metadata=meta)
        meta = {**_id_meta(conv), **meta}
        return OpenAIConversation(messages=[OpenAIMessage(role=m.role, content=m.text) for m in msgs], metadata=meta)
    if fmt == "seed-tasks":
        user, answer = _pick_turn(conv, turn, where)
        meta = dict(conv.metadata)
        seed_id = meta.pop("seed_id", None) or conv.id or content_id(conv)
        return SeedTask(
            id=seed_id,
            name=meta.pop("seed_name", ""),
            instruction=user.content,
            instances=[Instance(input=user.input, output=answer.content)],
            is_classification=bool(meta.pop("is_classification", False)),
            metadata=meta,
        )
    raise ConversionError(f"unknown target format {fmt!r}")


def convert(
    records: Iterable[Any],
    to: str,
    *,
    turn: Turn = "error",
    where: Sequence[str] | None = None,
    rejects: list[tuple[str, ConversionError]] | None = None,
) -> list[Any]:
    """Convert records of any format to `to`. Seed tasks split into instances are regrouped when converted back.

    `where` names each record in errors (default "record i"). With `rejects`, a record that cannot be converted is
    left out (all of it) and noted there with its error, instead of raising."""
    out: list[Any] = []
    for i, record in enumerate(records):
        name = where[i] if where is not None else f"record {i}"
        try:
            new = [(conv, from_conversation(conv, to, turn=turn, where=name)) for conv in to_conversations(record)]
        except ConversionError as exc:
            if rejects is None:
                raise
            rejects.append((name, exc))
            continue
        for conv, rec in new:
            prev = out[-1] if out else None
            if to == "seed-tasks" and isinstance(prev, SeedTask) and prev.id == rec.id and "seed_id" in conv.metadata:
                prev.instances.extend(rec.instances)
            else:
                out.append(rec)
    return out

"""`huarizo chat`: a multi-turn chat in the terminal that streams the answer as it is generated.

Commands: `/reset` starts over, `/save FILE` writes the conversation as ShareGPT (.json or .jsonl), `/exit`.
Ctrl-D or Ctrl-C at the prompt quits; Ctrl-C while the model writes stops that answer, which the conversation (and
`/save`) keeps as far as it was written.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TextIO

from huarizo.formats import Conversation, HuarizoError, Message, from_conversation, write_records
from huarizo.serve.engine import Delta
from huarizo.serve.model import ServedModel

HELP = "commands: /reset (new conversation), /save FILE (ShareGPT .json/.jsonl), /exit; Ctrl-D quits"


def chat_loop(
    served: ServedModel,
    *,
    max_tokens: int = 256,
    temperature: float = 0.7,
    system: str | None = None,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> list[Message]:
    """Run the chat until EOF or Ctrl-C at the prompt; returns the messages of the last conversation."""
    if read is input:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    messages: list[Message] = [Message(role="system", content=system)] if system else []
    start = list(messages)
    print(f"huarizo chat: {served.name} (template {served.template.name}). {HELP}", file=out, flush=True)
    while True:
        try:
            line = read("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            print("\nbye", file=out, flush=True)
            return messages
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return messages
        if line == "/reset":
            messages = list(start)
            print("(conversation reset)", file=out, flush=True)
            continue
        if line.startswith("/save"):
            _save(messages, line[5:].strip(), out)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=out, flush=True)
            continue
        messages.append(Message(role="user", content=line))
        ids = served.chat_prompt(Conversation(messages=messages))
        room = served.context_length - len(ids)
        if room < 1:
            messages.pop()
            print("(the conversation no longer fits the context: /reset)", file=out, flush=True)
            continue
        params = served.params(chat=True, max_tokens=min(max_tokens, room), temperature=temperature)
        print("assistant> ", end="", file=out, flush=True)
        stream = served.engine.stream(ids, params)
        shown: list[str] = []
        interrupted = False
        try:
            for ev in stream:
                if isinstance(ev, Delta):  # kept before it is printed: Ctrl-C may land between the two
                    shown.append(ev.text)
                    print(ev.text, end="", file=out, flush=True)
        except KeyboardInterrupt:  # the answer stops here; the history keeps what was written
            stream.close()
            interrupted = True
            print(" (stopped)", end="", file=out, flush=True)
        print(file=out, flush=True)
        answer = "".join(shown)
        if interrupted and not answer:  # nothing written: the question goes too, so turns keep alternating
            messages.pop()
        else:
            messages.append(Message(role="assistant", content=answer))


def _save(messages: list[Message], path: str, out: TextIO) -> None:
    if not path:
        print("usage: /save FILE.json", file=out, flush=True)
        return
    if not any(m.role == "assistant" for m in messages):
        print("(nothing to save yet)", file=out, flush=True)
        return
    try:
        record = from_conversation(Conversation(messages=messages), "sharegpt")
        write_records(path, [record])
    except (HuarizoError, OSError) as exc:
        print(f"cannot save: {exc}", file=out, flush=True)
        return
    print(f"saved {len(messages)} messages to {path}", file=out, flush=True)

"""`huarizo chat`: a multi-turn chat in the terminal that streams the answer as it is generated.

Commands: `/reset` starts over, `/save FILE` writes the conversation as ShareGPT (.json or .jsonl), `/exit`.
Ctrl-D or Ctrl-C at the prompt quits; Ctrl-C while the model writes stops that answer, which the conversation (and
`/save`) keeps as far as it was written.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, TextIO

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
    chat = _Chat(served, max_tokens, temperature, system, out)
    chat.say(f"huarizo chat: {served.name} (template {served.template.name}). {HELP}")
    while True:
        try:
            line = read("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            chat.say("\nbye")
            return chat.messages
        if line in ("/exit", "/quit"):
            return chat.messages
        if line.startswith("/"):
            chat.command(line)
        elif line:
            chat.ask(line)


class _Chat:
    """One terminal conversation: its messages, the commands, and answers streamed as they are generated."""

    def __init__(
        self, served: ServedModel, max_tokens: int, temperature: float, system: str | None, out: TextIO
    ) -> None:
        self.served, self.max_tokens, self.temperature, self.out = served, max_tokens, temperature, out
        self.start: list[Message] = [Message(role="system", content=system)] if system else []
        self.messages = list(self.start)

    def say(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def command(self, line: str) -> None:
        """`/reset`, `/save FILE`; anything else is an unknown command."""
        if line == "/reset":
            self.messages = list(self.start)
            self.say("(conversation reset)")
        elif line.startswith("/save"):
            _save(self.messages, line[5:].strip(), self.out)
        else:
            self.say(f"unknown command {line.split()[0]}; {HELP}")

    def ask(self, line: str) -> None:
        """Send the user's line and stream the answer; Ctrl-C stops the answer where it is."""
        self.messages.append(Message(role="user", content=line))
        ids = self.served.chat_prompt(Conversation(messages=self.messages))
        room = self.served.context_length - len(ids)
        if room < 1:
            self.messages.pop()
            self.say("(the conversation no longer fits the context: /reset)")
            return
        params = self.served.params(chat=True, max_tokens=min(self.max_tokens, room), temperature=self.temperature)
        self.say("assistant> ", end="")
        answer, interrupted = self._stream(ids, params)
        if interrupted and not answer:  # nothing written: the question goes too, so turns keep alternating
            self.messages.pop()
        else:
            self.messages.append(Message(role="assistant", content=answer))

    def _stream(self, ids: list[int], params: Any) -> tuple[str, bool]:
        """The answer as far as it was written, and whether Ctrl-C stopped it."""
        stream = self.served.engine.stream(ids, params)
        shown: list[str] = []
        interrupted = False
        try:
            for ev in stream:
                if isinstance(ev, Delta):  # kept before it is printed: Ctrl-C may land between the two
                    shown.append(ev.text)
                    self.say(ev.text, end="")
        except KeyboardInterrupt:  # the answer stops here; the history keeps what was written
            stream.close()
            interrupted = True
            self.say(" (stopped)", end="")
        self.say("")
        return "".join(shown), interrupted


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

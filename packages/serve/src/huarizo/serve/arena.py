"""The arena: people compare two models' answers blind, item by item, and their votes go to an append-only JSONL.

Answers come from files (a question file and two answer files, as huarizo-judge reads them) or live: two models
(`served`, the model this server serves, or any litellm endpoint) answer each question of a question file, or each
prompt a voter writes. A live item is answered once, both answers appearing together (speed gives no hint), and its
answers are kept in `answers.jsonl` (MT-bench's answer layout; prompts voters wrote in `questions.jsonl`), so that
`huarizo judge grade` can grade exactly what people voted on.

Each voter sees each item's two answers in an order drawn for that voter and item (a keyed hash: the same after a
reload or a restart) and recorded with the vote. One vote per voter and item: a second one is refused. A vote is
written as one line and flushed to the disk (fsync) before it is acknowledged, under a lock, so concurrent voters
never interleave and an acknowledged vote survives a crash; a line cut off by a crash (never acknowledged) is
dropped at the next start. One server at a time holds an arena folder.

`votes.jsonl`, one line per vote::

    {"voter": "ana", "time": "2026-12-01T10:00:00.123Z", "item": "3", "shown": ["vicuna-13b", "alpaca-13b"],
     "vote": "A", "winner": "vicuna-13b", "models": ["alpaca-13b", "vicuna-13b"], "category": "generic"}

`shown` is the order the voter saw (A, B); `vote` is `A`, `B`, `tie` or `both_bad`; `models` are the arena's two
models, the first answer file's (or first live) model first.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huarizo.formats import (
    Conversation,
    EndpointConfig,
    HuarizoError,
    Message,
    QuestionSet,
    load_answer_files,
    load_questions,
    write_json_atomic,
)
from huarizo.serve.config import SERVED, ArenaConfig
from huarizo.serve.engine import EngineError
from huarizo.serve.model import ServedModel

log = logging.getLogger("huarizo.serve")

VOTES = ("A", "B", "tie", "both_bad")
"""What a voter may answer: A is better, B is better, a tie, both are bad."""
MAX_PROMPT_CHARS = 8000
"""Longest prompt a voter may write (live arena without a question file)."""
FREE_CATEGORY = "arena"
"""The category of the prompts voters write."""


class ArenaError(HuarizoError):
    """An arena that cannot start (bad files, a folder of another arena), or a request it cannot serve."""


class AlreadyVoted(ArenaError):
    """This voter has voted on this item already."""


class UnknownItem(ArenaError):
    """No such item (or not one this voter may vote on)."""


@dataclass
class Item:
    """One comparison: the question's turns, and each model's answer turns (empty until answered, live)."""

    item_id: str
    turns: tuple[str, ...]
    category: str
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    owner: str | None = None  # a prompt a voter wrote: only that voter gets it


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DurableLog:
    """An append-only JSONL file: each `append` writes whole lines in one `write` and fsyncs them before returning.
    On open, a last line cut off by a crash is truncated away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            data = os.pread(self._fd, size, 0)
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("%s: dropping a last line cut off by a crash (%d bytes)", path, size - keep)
                os.ftruncate(self._fd, keep)
                os.fsync(self._fd)
        if new:  # make the file's own entry durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, record) of every line; a line that is not a JSON object is an error naming it."""
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise ArenaError(f"{self.path}: line {n}: not JSON ({exc})") from None
                if not isinstance(rec, dict):
                    raise ArenaError(f"{self.path}: line {n}: expected a JSON object")
                yield n, rec

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write the records as whole lines and flush them to the disk."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


class _Side:
    """One live model: this server's own (through its engine) or a litellm endpoint."""

    def __init__(self, endpoint: EndpointConfig, served: ServedModel, cfg: ArenaConfig, cache: Path) -> None:
        self.cfg, self.served = cfg, served
        if endpoint.model == SERVED:
            self.name, self.client = served.name, None
            return
        if importlib.util.find_spec("litellm") is None:
            raise ArenaError(
                f"arena.models: {endpoint.model} is asked through litellm: pip install 'huarizo-serve[arena]'"
            )
        self.name, self.client = endpoint.model.rsplit("/", 1)[-1], endpoint.client("chat", cache_dir=str(cache))

    async def _reply(self, messages: list[Message]) -> str:
        if self.client is not None:
            from huarizo.formats.llm import LLMError

            sent = [{"role": m.role, "content": m.content} for m in messages]
            try:
                got = await self.client.acomplete(
                    sent, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature
                )
            except LLMError as exc:
                raise ArenaError(str(exc)) from None
            return got.text
        ids = self.served.chat_prompt(Conversation(messages=messages))
        room = self.served.context_length - len(ids)
        if room < 1:
            raise ArenaError(
                f"the question has {len(ids)} tokens; {self.name}'s context is {self.served.context_length}"
            )
        params = self.served.params(
            chat=True, max_tokens=min(self.cfg.max_tokens, room), temperature=self.cfg.temperature
        )
        try:
            done = await asyncio.to_thread(self.served.engine.generate, ids, params)
        except EngineError as exc:
            raise ArenaError(str(exc)) from None
        if done.reason == "error":
            raise ArenaError(f"{self.name} failed to answer: {done.error}")
        return done.text

    async def answer(self, turns: tuple[str, ...]) -> tuple[str, ...]:
        """The model's answer to each turn, each turn seeing its own earlier replies."""
        messages: list[Message] = []
        replies: list[str] = []
        for turn in turns:
            messages.append(Message(role="user", content=turn))
            replies.append(await self._reply(messages))
            messages.append(Message(role="assistant", content=replies[-1]))
        return tuple(replies)


class Arena:
    """The arena of one server: its items, its two models, and the votes (see the module's docstring)."""

    def __init__(self, cfg: ArenaConfig, served: ServedModel) -> None:
        assert cfg.out is not None  # the config requires it for an enabled arena
        self.cfg, self.out = cfg, Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.out / "arena.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise ArenaError(f"{self.out}: another server is using this arena folder") from None
        self._logs: list[DurableLog] = []
        try:
            self._open(served)
        except BaseException:
            self.close()
            raise

    def _open(self, served: ServedModel) -> None:
        cfg = self.cfg
        self.live = bool(cfg.models)
        self.items: dict[str, Item] = {}
        self.sides: list[_Side] = []
        questions = load_questions(cfg.questions) if cfg.questions else None
        if questions is not None:
            self.items = {q.question_id: Item(q.question_id, tuple(q.turns), q.category) for q in questions.questions}
        if self.live:
            self.sides = [_Side(e, served, cfg, self.out / "cache") for e in cfg.models]
            self.models = (self.sides[0].name, self.sides[1].name)
        else:
            assert questions is not None  # the config requires questions for answer files
            self.models = self._read_answer_files(questions)
        if self.models[0] == self.models[1]:
            raise ArenaError(f"arena: both models are called {self.models[0]!r}: give them different names")
        self.fixed = bool(cfg.questions)  # a fixed list of items (progress n of N); else voters write prompts
        self._seed = self._identity()
        self.votes = self._log("votes.jsonl")
        self._voted: dict[str, set[str]] = {}
        for n, rec in self.votes.records():
            voter, item = rec.get("voter"), rec.get("item")
            if not isinstance(voter, str) or not isinstance(item, str):
                raise ArenaError(f"{self.votes.path}: line {n}: a vote needs a voter and an item")
            self._voted.setdefault(voter, set()).add(item)
        if self.live:
            self.asked = self._log("questions.jsonl") if not self.fixed else None
            self.answered = self._log("answers.jsonl")
            self._load_live()
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._write_lock = threading.Lock()

    def _log(self, name: str) -> DurableLog:
        self._logs.append(DurableLog(self.out / name))
        return self._logs[-1]

    def _read_answer_files(self, questions: QuestionSet) -> tuple[str, str]:
        answers = load_answer_files(self.cfg.answers, questions)
        if len(answers) != 2:
            found = ", ".join(sorted(answers)) or "none"
            raise ArenaError(f"arena: the answer files must hold two models' answers (found: {found})")
        models = (*answers,)
        for item in list(self.items.values()):
            if all(item.item_id in answers[m] for m in models):
                item.answers = {m: tuple(answers[m][item.item_id].turns) for m in models}
            else:
                del self.items[item.item_id]
        if not self.items:
            raise ArenaError(
                f"arena: no question of {self.cfg.questions} is answered by both {models[0]} and {models[1]}"
            )
        return models[0], models[1]

    def _identity(self) -> bytes:
        """The arena's models and order seed, kept in `arena.json`: a folder holds the votes of one pair of models."""
        path = self.out / "arena.json"
        if path.exists():
            try:
                known = json.loads(path.read_text(encoding="utf-8"))
                models, seed = tuple(known["models"]), bytes.fromhex(known["order_seed"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ArenaError(f"{path}: not an arena description ({exc})") from None
            if models != self.models:
                raise ArenaError(
                    f"{self.out} holds votes on {models[0]} vs {models[1]}; this arena compares {self.models[0]} vs "
                    f"{self.models[1]}: use another arena.out"
                )
            return seed
        seed = secrets.token_bytes(16)
        desc = {
            "models": list(self.models),
            "order_seed": seed.hex(),
            "source": "live" if self.live else "files",
            "questions": self.cfg.questions,
            "answers": self.cfg.answers,
            "created": _now(),
        }
        write_json_atomic(path, desc)
        return seed

    def _load_live(self) -> None:
        if self.asked is not None:
            for n, rec in self.asked.records():
                turns = rec.get("turns")
                if not isinstance(turns, list) or not turns:
                    raise ArenaError(f"{self.asked.path}: line {n}: field 'turns': expected a list of strings")
                qid = str(rec.get("question_id"))
                self.items[qid] = Item(qid, tuple(turns), FREE_CATEGORY, owner=rec.get("voter"))
        for n, rec in self.answered.records():
            item = self.items.get(str(rec.get("question_id")))
            try:
                model, turns = rec["model_id"], tuple(rec["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise ArenaError(f"{self.answered.path}: line {n}: not an MT-bench answer record") from None
            if item is not None and model in self.models:
                item.answers[model] = turns

    # ---- what voters see ------------------------------------------------------------------------------------------

    def order(self, voter: str, item_id: str) -> tuple[str, str]:
        """The order (A, B) in which `voter` sees the models on `item_id`: drawn once, the same on every call."""
        bit = hmac.new(self._seed, f"{voter}\0{item_id}".encode(), hashlib.sha256).digest()[0] & 1
        return self.models if bit == 0 else (self.models[1], self.models[0])

    def voted(self, voter: str) -> int:
        """How many votes `voter` has given."""
        return len(self._voted.get(voter, ()))

    @property
    def total(self) -> int | None:
        """How many items there are to vote on (None when voters write their prompts)."""
        return len(self.items) if self.fixed else None

    def _todo(self, voter: str) -> Item | None:
        done = self._voted.get(voter, set())
        for item in self.items.values():
            if item.item_id not in done and (self.fixed or item.owner == voter):
                return item
        return None

    async def next_item(self, voter: str) -> dict[str, Any] | None:
        """The next item `voter` has not voted on, as the page shows it (answers in the voter's order, no model
        names); None when there is none (all voted, or, for written prompts, none waiting)."""
        item = self._todo(voter)
        if item is None:
            return None
        await self._answered(item)
        return self._view(voter, item)

    async def ask(self, voter: str, prompt: str) -> dict[str, Any]:
        """A prompt written by `voter` (live arena without a question file): both models answer it; the item."""
        if not self.live or self.fixed:
            raise UnknownItem("this arena has a fixed list of questions: prompts cannot be added")
        prompt = prompt.strip()
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise ArenaError(f"a prompt has 1 to {MAX_PROMPT_CHARS} characters (got {len(prompt)})")
        if self._todo(voter) is not None:
            raise ArenaError("vote on your last prompt's answers first")
        item_id = str(len(self.items) + 1)
        item = self.items[item_id] = Item(item_id, (prompt,), FREE_CATEGORY, owner=voter)
        assert self.asked is not None
        record = {"question_id": item_id, "category": FREE_CATEGORY, "turns": [prompt], "voter": voter, "time": _now()}
        await asyncio.to_thread(self._write, self.asked, [record])
        await self._answered(item)
        return self._view(voter, item)

    def _view(self, voter: str, item: Item) -> dict[str, Any]:
        a, b = self.order(voter, item.item_id)
        return {
            "item": item.item_id,
            "category": item.category,
            "turns": list(item.turns),
            "answers": [list(item.answers[a]), list(item.answers[b])],
            "voted": self.voted(voter),
            "total": self.total,
        }

    async def _answered(self, item: Item) -> None:
        """Make sure both models have answered `item` (live: answered once, whoever asks first; others wait)."""
        if all(m in item.answers for m in self.models):
            return
        task = self._pending.get(item.item_id)
        if task is None:
            task = self._pending[item.item_id] = asyncio.create_task(self._generate(item))
            task.add_done_callback(lambda _: self._pending.pop(item.item_id, None))
        await asyncio.shield(task)  # a voter who leaves does not cancel the answers others wait for

    async def _generate(self, item: Item) -> None:
        replies = await asyncio.gather(*(side.answer(item.turns) for side in self.sides))
        stamp = _now()
        records = [
            {
                "question_id": item.item_id,
                "model_id": side.name,
                "choices": [{"index": 0, "turns": list(turns)}],
                "answer_id": f"{item.item_id}-{side.name}",
                "tstamp": stamp,
            }
            for side, turns in zip(self.sides, replies, strict=True)
        ]
        await asyncio.to_thread(self._write, self.answered, records)
        for side, turns in zip(self.sides, replies, strict=True):
            item.answers[side.name] = turns

    def _write(self, target: DurableLog, records: list[dict[str, Any]]) -> None:
        with self._write_lock:
            target.append(records)

    # ---- votes ----------------------------------------------------------------------------------------------------

    def vote(self, voter: str, item_id: str, vote: str) -> dict[str, Any]:
        """Record `voter`'s vote on `item_id` (durably, before returning) and reveal the models: the vote record.
        Raises `AlreadyVoted` for a second vote on the item, `UnknownItem` for an item the voter cannot vote on."""
        if vote not in VOTES:
            raise ArenaError(f"vote: one of {', '.join(VOTES)} (got {vote!r})")
        item = self.items.get(item_id)
        if item is None or (not self.fixed and item.owner != voter):
            raise UnknownItem(f"no item {item_id!r} to vote on")
        if not all(m in item.answers for m in self.models):
            raise UnknownItem(f"item {item_id!r} has not been answered yet")
        shown = self.order(voter, item_id)
        winner = {"A": shown[0], "B": shown[1]}.get(vote, vote)
        record = {
            "voter": voter,
            "time": _now(),
            "item": item_id,
            "shown": list(shown),
            "vote": vote,
            "winner": winner,
            "models": list(self.models),
            "category": item.category,
        }
        with self._write_lock:
            done = self._voted.setdefault(voter, set())
            if item_id in done:
                raise AlreadyVoted(f"{voter} has already voted on item {item_id}")
            self.votes.append([record])
            done.add(item_id)
        return record

    def close(self) -> None:
        """Close the files and release the folder."""
        for task in getattr(self, "_pending", {}).values():
            task.cancel()
        for lg in self._logs:
            lg.close()
        self._logs = []
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the folder's lock
            self._lock_fd = -1

"""`huarizo judge answer`: a model answers a question set, concurrently, cached and resumable.

Answers are appended to a JSONL file in MT-bench's answer layout (`question_id, answer_id, model_id,
choices[{index, turns}]`, plus the server's model `fingerprint` when it reports one) as each question completes, so a
run killed at any moment (even `kill -9`) resumes where it stopped with no answer lost or written twice. A rerun keeps
the answers of the same model: when the server reports a fingerprint, answers given under another fingerprint (a
model retrained and served under its old name) are moved aside to `OUT.<fingerprint>.jsonl` and asked again.
Multi-turn questions are answered turn by turn, each turn seeing the model's own earlier replies. Every request is
cached by its hash, so a rerun pays nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huarizo.formats import JsonlAppender, ProgressBar, Question, load_questions, write_records
from huarizo.formats import cache_dir as huarizo_cache
from huarizo.formats.llm import LLMClient, LLMError
from huarizo.judge.config import AnswerConfig
from huarizo.judge.results import AnswerResult, JudgeIncomplete


def default_cache() -> str:
    """Where model calls are cached unless a config says otherwise."""
    return str(huarizo_cache() / "llm")


async def _answer_one(cfg: AnswerConfig, client: LLMClient, q: Question, model_id: str) -> dict[str, Any]:
    from huarizo.judge.prompts import completion_prompt

    template = None
    if cfg.template:
        from huarizo.formats import get_template

        template = get_template(cfg.template)
    turns: list[str] = []
    finish: list[str | None] = []
    stop: list[str | int | None] = []
    messages: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    for user in q.turns:
        messages.append({"role": "user", "content": user})
        params: dict[str, Any] = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        if template is not None:
            resp = await client.acomplete(completion_prompt(messages, template), stop=template.stop_strings(), **params)
        else:
            resp = await client.acomplete(messages, **params)
        turns.append(resp.text.strip())
        finish.append(resp.finish_reason)
        stop.append(resp.stop_reason)
        messages.append({"role": "assistant", "content": turns[-1]})
    choice = {"index": 0, "turns": turns, "finish_reasons": finish, "stop_reasons": stop}
    return {
        "question_id": q.question_id,
        "answer_id": f"{model_id}:{q.question_id}",
        "model_id": model_id,
        "choices": [choice],
        "tstamp": time.time(),
    }


def ended_by_itself(finish_reason: str | None, stop_reason: str | int | None) -> bool:
    """Whether a turn ended at the model's own end of turn (not at `max_tokens`, nor cut by a stop string such as a
    template's section header that a base model writes again): `finish_reason` stop, `stop_reason` not a string."""
    return finish_reason == "stop" and not isinstance(stop_reason, str)


def ending_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How the turns of answer records ended: `turns`, `ended` (by the model itself), `cut` (at a stop string),
    `length` (at max_tokens); records written before finish reasons were recorded count in `turns` only."""
    counts = {"turns": 0, "ended": 0, "cut": 0, "length": 0}
    for rec in records:
        choice = rec["choices"][0]
        finish, stop = choice.get("finish_reasons") or [], choice.get("stop_reasons") or []
        counts["turns"] += len(choice["turns"])
        for i, reason in enumerate(finish):
            why = stop[i] if i < len(stop) else None
            key = "ended" if ended_by_itself(reason, why) else "cut" if reason == "stop" else "length"
            counts[key] += reason in ("stop", "length")
    return counts


def _aside(out: Path, fingerprint: Any) -> Path:
    """Where answers given under another fingerprint go: `OUT.<fingerprint>.jsonl`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", str(fingerprint or "unknown"))[:16]
    return out.with_name(f"{out.stem}.{name}{out.suffix}")


def _set_aside(out: Path, model_id: str, fingerprint: str | None) -> tuple[set[str], int]:
    """Ids already answered by this model (and fingerprint, when the server reports one); this model_id's answers
    under another fingerprint are moved aside. Returns (answered ids, how many were moved)."""
    if not out.exists():
        return set(), 0
    with JsonlAppender(out) as app:  # repairs a torn last line
        rows = app.existing()
    mine = [r for r in rows if r.get("model_id") == model_id]
    stale = {id(r): r for r in mine if fingerprint and r.get("fingerprint") != fingerprint}
    by_file: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    for r in stale.values():
        by_file[_aside(out, r.get("fingerprint"))].append(r)
    for path, old in by_file.items():
        with JsonlAppender(path, fsync=True) as aside:
            aside.append(old)
    if stale:
        write_records(out, [r for r in rows if id(r) not in stale])
    return {str(r.get("question_id")) for r in mine if id(r) not in stale}, len(stale)


def answer(cfg: AnswerConfig, *, progress: bool = True, on_answer: Callable[[], None] | None = None) -> AnswerResult:
    """Answer every question not yet answered by this model in `cfg.out` (`on_answer` is called after each one).
    Each answer records why its turns ended (`finish_reasons`, `stop_reasons`); the result counts them (`ended`: by
    the model itself). Raises `JudgeIncomplete` (carrying the result) when some questions failed; their answers come
    on a rerun."""
    start = time.monotonic()
    qs = load_questions(cfg.questions).questions[: cfg.limit]
    model_id = cfg.model_id or cfg.endpoint.model.rsplit("/", 1)[-1]
    client = cfg.endpoint.client("completion" if cfg.template else "chat", cache_dir=default_cache())
    fingerprint = client.server_fingerprint()
    out = Path(cfg.out)
    done, replaced = _set_aside(out, model_id, fingerprint)
    todo = [q for q in qs if q.question_id not in done]
    with JsonlAppender(out, fsync=True) as app:
        failures = asyncio.run(_run(cfg, client, todo, model_id, fingerprint, app, progress, on_answer))
        mine = [r for r in app.existing() if r.get("model_id") == model_id]
    counts = {
        "questions": len(qs),
        "answered": len(todo) - len(failures),
        "kept": len(qs) - len(todo),
        "replaced": replaced,
        "failed": len(failures),
        **ending_counts(mine),
    }
    result = AnswerResult.build(out, model_id, fingerprint, counts, client.usage, time.monotonic() - start)
    if failures:
        raise JudgeIncomplete(
            f"{len(failures)} questions failed (rerun to retry them; the others are saved in {out}):\n  "
            + "\n  ".join(failures[:5]),
            result,
        )
    return result


async def _run(
    cfg: AnswerConfig,
    client: LLMClient,
    todo: list[Question],
    model_id: str,
    fingerprint: str | None,
    app: JsonlAppender,
    progress: bool,
    on_answer: Callable[[], None] | None,
) -> list[str]:
    bar = ProgressBar(f"answering ({model_id})", len(todo), enabled=progress, unit="questions")
    failures: list[str] = []

    async def job(q: Question) -> None:
        try:
            rec = await _answer_one(cfg, client, q, model_id)
        except LLMError as exc:
            failures.append(f"{q.question_id}: {exc}")
            return
        if fingerprint:
            rec["fingerprint"] = fingerprint
        app.append([rec])  # one whole line per question, written as soon as it is complete
        bar.advance()
        if on_answer is not None:
            on_answer()

    try:
        await asyncio.gather(*(job(q) for q in todo))
    finally:
        bar.close()
        await client.aclose()
    return failures

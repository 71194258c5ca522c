"""Answering with finish reasons: `huarizo judge answer`'s job, plus why each answer ended.

The stop rate (answers that ended by themselves before `max_tokens`) is read from each reply's `finish_reason`,
which `huarizo.judge.answer` does not record. This is the smallest version that does: it takes the judge's own
`AnswerConfig` and prompts, and writes the judge's answer layout (MT-bench: `question_id, answer_id, model_id,
choices[{turns}]`) with `finish_reasons` beside `turns`, so the judge reads these files as its own. It belongs in
huarizo-judge; until it moves there it lives here. Resumable like the judge's: one line per answered question, and
every request cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError, JsonlAppender, StageResult
from huarizo.formats.llm import LLMClient, LLMError
from huarizo.judge import AnswerConfig, Question, load_questions
from huarizo.judge.prompts import completion_prompt


class AnswerResult(StageResult):
    """Answers of one model: `counts` has `answers`, `turns`, `stopped` (ended by themselves) and `length`."""


async def _one(cfg: AnswerConfig, client: LLMClient, q: Question, template: Any, model_id: str) -> dict[str, Any]:
    turns: list[str] = []
    reasons: list[str | None] = []
    messages: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    for user in q.turns:
        messages.append({"role": "user", "content": user})
        params: dict[str, Any] = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        if template is not None:
            resp = await client.acomplete(completion_prompt(messages, template), stop=template.stop_strings(), **params)
        else:
            resp = await client.acomplete(messages, **params)
        turns.append(resp.text.strip())
        reasons.append(resp.finish_reason)
        messages.append({"role": "assistant", "content": turns[-1]})
    return {
        "question_id": q.question_id,
        "answer_id": f"{model_id}:{q.question_id}",
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns, "finish_reasons": reasons}],
        "tstamp": time.time(),
    }


def answer(cfg: AnswerConfig, *, on_answer: Callable[[], None] | None = None) -> AnswerResult:
    """Answer every question of `cfg.questions` not yet in `cfg.out`; the reply cache is `cfg.endpoint.cache_dir`."""
    t0 = time.perf_counter()
    questions = load_questions(cfg.questions).questions[: cfg.limit]
    template = None
    if cfg.template:
        from huarizo.formats.templates import get_template

        template = get_template(cfg.template)
    client = cfg.endpoint.client("completion" if template is not None else "chat")
    model_id = cfg.model_id or cfg.endpoint.model.rsplit("/", 1)[-1]
    out = Path(cfg.out)
    failures: list[str] = []
    with JsonlAppender(out, fsync=True) as app:
        done = {str(r.get("question_id")) for r in app.existing()}
        todo = [q for q in questions if q.question_id not in done]

        async def job(q: Question) -> None:
            try:
                rec = await _one(cfg, client, q, template, model_id)
            except LLMError as exc:
                failures.append(f"{q.question_id}: {exc}")
                return
            app.append([rec])
            if on_answer is not None:
                on_answer()

        async def run_all() -> None:
            try:
                await asyncio.gather(*(job(q) for q in todo))
            finally:
                await client.aclose()

        asyncio.run(run_all())
        records = app.existing()
    if failures:
        raise HuarizoError(
            f"{len(failures)} of {len(todo)} questions failed for {model_id} (the others are saved; rerun to "
            f"retry them): {failures[0]}"
        )
    reasons = [r for rec in records for r in rec["choices"][0].get("finish_reasons", [])]
    u = client.usage
    return AnswerResult(
        outputs={"answers": out},
        counts={
            "answers": len(records),
            "turns": len(reasons),
            "stopped": sum(r == "stop" for r in reasons),
            "length": sum(r == "length" for r in reasons),
            "requests": u.requests,
            "cached": u.cached,
        },
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cost=u.cost,
        seconds=time.perf_counter() - t0,
    )

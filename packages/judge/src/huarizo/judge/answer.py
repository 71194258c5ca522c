"""`huarizo judge answer`: a model answers a question set, concurrently, cached and resumable.

Answers are appended to a JSONL file in MT-bench's answer layout (`question_id, answer_id, model_id,
choices[{index, turns}]`) as each question completes, so a run killed at any moment (even `kill -9`) resumes where it
stopped with no answer lost or written twice. Multi-turn questions are answered turn by turn, each turn seeing the
model's own earlier replies. Every request is cached by its hash, so a rerun pays nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from huarizo.formats.config import HuarizoConfig
from huarizo.formats.errors import HuarizoError
from huarizo.formats.io import JsonlAppender
from huarizo.formats.llm import LLMClient, LLMError, Usage
from huarizo.formats.models import cache_dir as huarizo_cache
from huarizo.judge.data import Question, load_questions


class AnswerConfig(HuarizoConfig):
    """Configuration of `huarizo judge answer`."""

    model: str = Field(description="litellm model string, e.g. openai/gpt-4o-mini or openai/<name> with api_base")
    questions: str = Field(description="question file (Vicuna-80, MT-bench, AlpacaEval or Self-Instruct layout)")
    out: str = Field(description="answers JSONL (appended to; a rerun resumes)")
    model_id: str | None = Field(None, description="name written as model_id (default: the model string's last part)")
    api_base: str | None = None
    api_key: str | None = None
    concurrency: int = Field(8, ge=1)
    max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.0, ge=0)
    system: str | None = Field(None, description="system message sent before the first turn")
    template: str | None = Field(
        None, description="huarizo template name: send plain prompts in completion mode (base models)"
    )
    cache_dir: str | None = Field(None, description="request cache (default: $HUARIZO_CACHE/llm)")
    max_retries: int = Field(5, ge=0)
    limit: int | None = Field(None, ge=1, description="answer only the first N questions")


def default_cache() -> str:
    """Where model calls are cached unless a config says otherwise."""
    return str(huarizo_cache() / "llm")


def make_client(cfg: Any, model: str, mode: str = "chat") -> LLMClient:
    """An `LLMClient` from a config's api_base / api_key / concurrency / cache_dir / max_retries."""
    return LLMClient(
        model=model,
        api_base=cfg.api_base,
        api_key=cfg.api_key,
        mode=mode,  # type: ignore[arg-type]
        concurrency=cfg.concurrency,
        max_retries=cfg.max_retries,
        cache_dir=cfg.cache_dir or default_cache(),
    )


async def _answer_one(cfg: AnswerConfig, client: LLMClient, q: Question, model_id: str) -> dict[str, Any]:
    turns: list[str] = []
    messages: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    template = None
    if cfg.template:
        from huarizo.formats.templates import get_template

        template = get_template(cfg.template)
    for user in q.turns:
        messages.append({"role": "user", "content": user})
        if template is not None:
            from huarizo.formats.schemas import Conversation, Message

            conv = Conversation(messages=[Message(role=m["role"], content=m["content"]) for m in messages])  # type: ignore[arg-type]
            resp = await client.acomplete(
                template.generation_prompt(conv),
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                stop=template.stop_strings(),
            )
        else:
            resp = await client.acomplete(messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature)
        text = resp.text.strip()
        turns.append(text)
        messages.append({"role": "assistant", "content": text})
    return {
        "question_id": q.question_id,
        "answer_id": f"{model_id}:{q.question_id}",
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": time.time(),
    }


def answer(cfg: AnswerConfig, *, progress: bool = True) -> Usage:
    """Answer every question not yet in `cfg.out`; returns the client's usage (requests, cache hits, tokens, cost)."""
    qs = load_questions(cfg.questions).questions[: cfg.limit]
    model_id = cfg.model_id or cfg.model.rsplit("/", 1)[-1]
    client = make_client(cfg, cfg.model, "completion" if cfg.template else "chat")
    out = Path(cfg.out)
    with JsonlAppender(out, fsync=True) as app:
        done = {str(r.get("question_id")) for r in app.existing() if r.get("model_id") == model_id}
        todo = [q for q in qs if q.question_id not in done]
        asyncio.run(_run(cfg, client, todo, model_id, app, progress))
    return client.usage


async def _run(
    cfg: AnswerConfig, client: LLMClient, todo: list[Question], model_id: str, app: JsonlAppender, progress: bool
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"answering ({model_id})", unit="q", disable=None if progress else True)
    failures: list[str] = []

    async def job(q: Question) -> None:
        try:
            rec = await _answer_one(cfg, client, q, model_id)
        except LLMError as exc:
            failures.append(f"{q.question_id}: {exc}")
            return
        app.append([rec])  # one whole line per question, written as soon as it is complete
        bar.update(1)

    try:
        await asyncio.gather(*(job(q) for q in todo))
    finally:
        bar.close()
        await client.aclose()
    if failures:
        raise HuarizoError(
            f"{len(failures)} questions failed (rerun to retry them; the others are saved):\n  "
            + "\n  ".join(failures[:5])
        )

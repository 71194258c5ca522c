"""`huarizo judge grade`: an LLM judge grades answers, alone (1-10) or in pairs (both orders), and writes
`summary.json`, `judgments.jsonl` and `report.md` with plots into one folder.

Single grading rates each answer (each turn of a multi-turn question, seeing the turns before it), against the
reference answer for math, reasoning and coding questions that have one. Pairwise grading asks every comparison in
both orders; a verdict that changes with the order counts as a tie and as inconsistent. A reply without a verdict is
asked again (a new request, at a higher temperature with a seed, so the cache cannot return the same reply) and
recorded as an error if it never has one. Every request is cached by its hash: rerunning a grade costs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from huarizo.formats.config import HuarizoConfig
from huarizo.formats.errors import HuarizoError
from huarizo.formats.io import write_records
from huarizo.formats.llm import LLMClient, LLMError
from huarizo.judge.answer import make_client
from huarizo.judge.data import Answer, Question, QuestionSet, load_answers, load_questions, load_references
from huarizo.judge.prompts import pair_messages, parse_pair, parse_rating, single_messages


class GradeConfig(HuarizoConfig):
    """Configuration of `huarizo judge grade` (also the argument of `grade()`)."""

    mode: Literal["single", "pairwise"] = "pairwise"
    questions: str = Field(description="question file")
    references: str | None = Field(None, description="reference answers (MT-bench answer layout)")
    answers: list[str] = Field(min_length=1, description="answer files, one or more models each")
    baseline: str | None = Field(None, description="pairwise: compare every model with this answer file's model")
    judge: str = Field(description="litellm model string of the judge")
    api_base: str | None = None
    api_key: str | None = None
    concurrency: int = Field(16, ge=1)
    max_retries: int = Field(5, ge=0, description="retries of failed requests (429, 5xx, time-outs)")
    parse_retries: int = Field(2, ge=0, description="new requests when a reply has no verdict")
    temperature: float = Field(0.0, ge=0)
    retry_temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(1024, ge=1)
    cache_dir: str | None = None
    labels: list[str] = Field(default_factory=list, description="label files for the agreement audit")
    bootstrap: int = Field(1000, ge=10)
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="grade only the first N questions")
    plots: bool = True
    out: str = Field(description="output folder")

    @field_validator("answers", "labels", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


@dataclass
class Judgment:
    """One graded item: a single rating, or a comparison asked in both orders."""

    mode: str
    question_id: str
    category: str
    turn: int
    model: str | None = None
    score: float | None = None
    model_a: str | None = None
    model_b: str | None = None
    verdicts: list[str | None] = field(default_factory=list)
    winner: str | None = None
    consistent: bool | None = None
    len_a: int = 0
    len_b: int = 0
    reference: bool = False
    replies: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None


@dataclass
class GradeResult:
    """What `grade()` returns: the judgments and the summary written to `summary.json`."""

    judgments: list[Judgment]
    summary: dict[str, Any]
    out: Path


async def _ask(
    cfg: GradeConfig, client: LLMClient, messages: list[dict[str, str]], parse: Callable[[str], Any]
) -> tuple[Any, list[str], int, str | None]:
    """Ask until the reply parses: (value, replies, attempts, error)."""
    replies: list[str] = []
    for attempt in range(cfg.parse_retries + 1):
        params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        if attempt:  # a new request: the cache must not return the same reply; judges without `seed` drop it
            params.update(temperature=max(cfg.retry_temperature, cfg.temperature), seed=attempt, drop_params=True)
        try:
            resp = await client.acomplete(messages, **params)
        except LLMError as exc:
            return None, replies, attempt + 1, f"request failed: {exc}"
        replies.append(resp.text)
        value = parse(resp.text)
        if value is not None:
            return value, replies, attempt + 1, None
    return None, replies, cfg.parse_retries + 1, f"no verdict in {cfg.parse_retries + 1} replies"


async def _single(cfg: GradeConfig, client: LLMClient, q: Question, a: Answer, turn: int) -> Judgment:
    messages, ref = single_messages(q, a.turns, turn)
    score, replies, attempts, error = await _ask(cfg, client, messages, parse_rating)
    return Judgment(
        "single",
        q.question_id,
        q.category,
        turn,
        model=a.model_id,
        score=score,
        len_a=len(a.turns[turn]),
        reference=ref,
        replies=replies,
        attempts=attempts,
        error=error,
    )


async def _pair(cfg: GradeConfig, client: LLMClient, q: Question, a: Answer, b: Answer, turn: int) -> Judgment:
    (m1, ref), (m2, _) = pair_messages(q, a.turns, b.turns, turn), pair_messages(q, b.turns, a.turns, turn)
    (v1, r1, n1, e1), (v2, r2, n2, e2) = await asyncio.gather(
        _ask(cfg, client, m1, parse_pair), _ask(cfg, client, m2, parse_pair)
    )
    j = Judgment(
        "pairwise",
        q.question_id,
        q.category,
        turn,
        model_a=a.model_id,
        model_b=b.model_id,
        verdicts=[v1, v2],
        len_a=len(a.turns[turn]),
        len_b=len(b.turns[turn]),
        reference=ref,
        replies=r1 + r2,
        attempts=n1 + n2,
        error=e1 or e2,
    )
    if j.error is None:
        first = {"A": a.model_id, "B": b.model_id, "C": "tie"}[v1]
        second = {"A": b.model_id, "B": a.model_id, "C": "tie"}[v2]
        j.consistent = first == second
        j.winner = first if j.consistent else "tie"
    return j


def _pairs(cfg: GradeConfig, models: list[str], baseline: str | None) -> list[tuple[str, str]]:
    if baseline is not None:
        return [(m, baseline) for m in models if m != baseline]
    if len(models) < 2:
        raise HuarizoError("pairwise grading needs a --baseline or at least two models in the answer files")
    return list(itertools.combinations(models, 2))


def load_all_answers(cfg: GradeConfig, qs: QuestionSet) -> tuple[dict[str, dict[str, Answer]], str | None]:
    """Every model's answers from the answer files (and the baseline file); returns (answers, baseline model)."""
    answers: dict[str, dict[str, Answer]] = {}
    for path in cfg.answers:
        for model, per in load_answers(path, qs).items():
            answers.setdefault(model, {}).update(per)
    baseline = None
    if cfg.baseline:
        base = load_answers(cfg.baseline, qs)
        if len(base) != 1:
            raise HuarizoError(f"{cfg.baseline}: a baseline file must hold one model's answers, found {sorted(base)}")
        baseline = next(iter(base))
        answers.setdefault(baseline, {}).update(base[baseline])
    return answers, baseline


async def _run(cfg: GradeConfig, client: LLMClient, jobs: list[Callable[[], Any]], progress: bool) -> list[Judgment]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"judging ({cfg.judge})", unit="judgment", disable=None if progress else True)

    async def run(job: Callable[[], Any]) -> Judgment:
        out: Judgment = await job()
        bar.update(1)
        return out

    try:
        return list(await asyncio.gather(*(run(j) for j in jobs)))
    finally:
        bar.close()
        await client.aclose()


def grade(cfg: GradeConfig, *, progress: bool = True) -> GradeResult:
    """Grade the answers with the judge and write `summary.json`, `judgments.jsonl` and `report.md` (+ plots)."""
    from huarizo.judge.labels import load_labels
    from huarizo.judge.report import summarize, write_report

    qs = load_questions(cfg.questions)
    if cfg.references:
        load_references(qs, cfg.references)
    answers, baseline = load_all_answers(cfg, qs)
    qs.questions = qs.questions[: cfg.limit]
    models = sorted(m for m in answers if m != baseline)
    client = make_client(cfg, cfg.judge)
    jobs: list[Callable[[], Any]] = []
    for q in qs.questions:
        if cfg.mode == "single":
            for m in models + ([baseline] if baseline else []):
                one = answers[m].get(q.question_id)
                if one is None:
                    continue
                for t in range(min(len(q.turns), len(one.turns))):
                    jobs.append(functools.partial(_single, cfg, client, q, one, t))
        else:
            for ma, mb in _pairs(cfg, models, baseline):
                a, b = answers[ma].get(q.question_id), answers[mb].get(q.question_id)
                if a is None or b is None:
                    continue
                for t in range(min(len(q.turns), len(a.turns), len(b.turns))):
                    jobs.append(functools.partial(_pair, cfg, client, q, a, b, t))
    if not jobs:
        raise HuarizoError("nothing to grade: no answer matches a question (check --questions and --answers)")
    judgments = asyncio.run(_run(cfg, client, jobs, progress))
    labels = [lab for path in cfg.labels for lab in load_labels(path, qs, answers)]
    summary = summarize(cfg, judgments, baseline, labels)
    summary["usage"] = {"judge": cfg.judge, **asdict(client.usage)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "judgments.jsonl", [asdict(j) for j in judgments])
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / "summary.json")
    write_report(out, summary, plots=cfg.plots)
    return GradeResult(judgments, summary, out)

"""`huarizo judge grade`: an LLM judge grades answers, alone (1-10) or in pairs (both orders), and writes
`summary.json`, `judgments.jsonl` and `report.md` with plots into one folder.

Single grading rates each answer (each turn of a multi-turn question, seeing the turns before it), against the
reference answer for math, reasoning and coding questions that have one. Pairwise grading asks every comparison in
both orders. Verdicts are read from the judge's token probabilities when it returns them (`verdict: auto`, the
default, or `logprobs`), else from its text (`huarizo.judge.asking`). Every request is cached by its hash: rerunning a
grade costs nothing. When some items get no verdict, everything is still written and `grade` raises `JudgeIncomplete`
(the CLI exits 1) saying how many and why.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from huarizo.formats import (
    Answer,
    HuarizoError,
    ProgressBar,
    Question,
    QuestionSet,
    load_answer_files,
    load_answers,
    load_questions,
    load_references,
)
from huarizo.judge.answer import default_cache
from huarizo.judge.asking import PAIR, RATING, Asker
from huarizo.judge.config import GradeConfig
from huarizo.judge.judgments import Judgment, settle
from huarizo.judge.prompts import pair_messages, single_messages
from huarizo.judge.report import write_run
from huarizo.judge.results import GradeResult, JudgeIncomplete, usage_fields
from huarizo.judge.summary import SummaryOptions, read_difficulty, summarize

Job = Callable[[], Awaitable[Judgment]]


async def _single(asker: Asker, q: Question, a: Answer, turn: int, index: int) -> Judgment:
    messages, ref = single_messages(q, a.turns, turn)
    r = await asker.ask(RATING, messages)
    return Judgment(
        "single",
        q.question_id,
        q.category,
        turn,
        model=a.model_id,
        score=r.value,
        verdicts=[r.label],
        read=[r.way],
        probs=[r.probs],
        len_a=len(a.turns[turn]),
        index=index,
        reference=ref,
        replies=r.replies,
        attempts=r.attempts,
        error=r.error,
    )


async def _pair(asker: Asker, q: Question, a: Answer, b: Answer, turn: int, index: int) -> Judgment:
    (m1, ref), (m2, _) = pair_messages(q, a.turns, b.turns, turn), pair_messages(q, b.turns, a.turns, turn)
    r1, r2 = await asyncio.gather(asker.ask(PAIR, m1), asker.ask(PAIR, m2))
    j = Judgment(
        "pairwise",
        q.question_id,
        q.category,
        turn,
        model_a=a.model_id,
        model_b=b.model_id,
        verdicts=[r1.label, r2.label],
        order_preferences=[r1.value, None if r2.value is None else 1 - r2.value],
        read=[r1.way, r2.way],
        probs=[r1.probs, r2.probs],
        len_a=len(a.turns[turn]),
        len_b=len(b.turns[turn]),
        index=index,
        reference=ref,
        replies=r1.replies + r2.replies,
        attempts=r1.attempts + r2.attempts,
        error=r1.error or r2.error,
    )
    settle(j)
    return j


def _pairs(models: list[str], baseline: str | None) -> list[tuple[str, str]]:
    if baseline is not None:
        return [(m, baseline) for m in models if m != baseline]
    if len(models) < 2:
        raise HuarizoError("pairwise grading needs a --baseline or at least two models in the answer files")
    return list(itertools.combinations(models, 2))


def load_all_answers(cfg: GradeConfig, qs: QuestionSet) -> tuple[dict[str, dict[str, Answer]], str | None]:
    """Every model's answers from the answer files (and the baseline file); returns (answers, baseline model)."""
    answers = load_answer_files(cfg.answers, qs)
    baseline = None
    if cfg.baseline:
        base = load_answers(cfg.baseline, qs)
        if len(base) != 1:
            raise HuarizoError(f"{cfg.baseline}: a baseline file must hold one model's answers, found {sorted(base)}")
        baseline = next(iter(base))
        answers.setdefault(baseline, {}).update(base[baseline])
    return answers, baseline


def _jobs(
    cfg: GradeConfig, asker: Asker, qs: QuestionSet, answers: dict[str, dict[str, Answer]], baseline: str | None
) -> list[Job]:
    """One job per graded item: each answer's turns (single), or each pair's turns (pairwise)."""
    models = sorted(m for m in answers if m != baseline)
    jobs: list[Job] = []
    for index, q in enumerate(qs.questions):
        if cfg.mode == "single":
            for m in models + ([baseline] if baseline else []):
                if (one := answers[m].get(q.question_id)) is not None:
                    turns = range(min(len(q.turns), len(one.turns)))
                    jobs += [functools.partial(_single, asker, q, one, t, index) for t in turns]
            continue
        for ma, mb in _pairs(models, baseline):
            a, b = answers[ma].get(q.question_id), answers[mb].get(q.question_id)
            if a is not None and b is not None:
                turns = range(min(len(q.turns), len(a.turns), len(b.turns)))
                jobs += [functools.partial(_pair, asker, q, a, b, t, index) for t in turns]
    if not jobs:
        raise HuarizoError("nothing to grade: no answer matches a question (check --questions and --answers)")
    return jobs


async def _run(jobs: list[Job], asker: Asker, progress: bool) -> list[Judgment]:
    await asker.probe()
    desc = f"judging ({asker.cfg.judge.model}, verdicts by {asker.way})"
    bar = ProgressBar(desc, len(jobs), enabled=progress, unit="items")

    async def run(job: Job) -> Judgment:
        out = await job()
        bar.advance()
        return out

    try:
        return list(await asyncio.gather(*(run(j) for j in jobs)))
    finally:
        bar.close()
        await asker.client.aclose()


def grade(cfg: GradeConfig, *, progress: bool = True) -> GradeResult:
    """Grade the answers with the judge; write `summary.json`, `judgments.jsonl`, `report.md` (+ plots) and
    `config.yaml` into `cfg.out`. Raises `JudgeIncomplete` (carrying the result) when some item got no verdict."""
    from huarizo.judge.labels import load_labels

    start = time.monotonic()
    qs = load_questions(cfg.questions)
    if cfg.references:
        load_references(qs, cfg.references)
    answers, baseline = load_all_answers(cfg, qs)
    qs.questions = qs.questions[: cfg.limit]
    template = None
    if cfg.template:
        from huarizo.formats import get_template

        template = get_template(cfg.template)
    client = cfg.judge.client("completion" if template else "chat", cache_dir=default_cache())
    asker = Asker(cfg, client, template)
    judgments = asyncio.run(_run(_jobs(cfg, asker, qs, answers, baseline), asker, progress))
    opts = SummaryOptions(
        cfg.mode,
        cfg.judge.model,
        cfg.questions,
        baseline,
        cfg.bootstrap,
        cfg.seed,
        read_difficulty(cfg.instruction_difficulty),
    )
    labels = [lab for path in cfg.labels for lab in load_labels(path, qs, answers)]
    summary = summarize(judgments, opts, labels)
    summary["usage"] = {"judge": cfg.judge.model, **usage_fields(client.usage)}
    out = write_run(Path(cfg.out), summary, judgments, cfg, plots=cfg.plots)
    result = GradeResult.build(out, summary, judgments, client.usage, time.monotonic() - start)
    if result.counts["errors"]:
        raise JudgeIncomplete(result.incomplete_message(), result)
    return result

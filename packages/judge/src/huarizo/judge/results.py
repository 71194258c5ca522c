"""What `answer()`, `grade()` and `score()` return: `huarizo.formats.StageResult`s with the judge's own fields."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from huarizo.formats import HuarizoError, StageResult
from huarizo.formats.llm import Usage
from huarizo.judge.judgments import Judgment
from huarizo.judge.report import plural


class JudgeIncomplete(HuarizoError):
    """Some questions got no answer, or some items no verdict: everything else is written; `result` says what."""

    def __init__(self, message: str, result: AnswerResult | GradeResult) -> None:
        super().__init__(message)
        self.result = result


def usage_fields(usage: Usage) -> dict[str, Any]:
    """A client's usage as plain numbers (for `summary.json`)."""
    return asdict(usage)


def _tokens_and_cost(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": None if usage.unpriced else usage.cost,
    }


class AnswerResult(StageResult):
    """What `answer()` returns. `counts`: `questions`, `answered` (this run), `kept` (answered before, same model),
    `replaced` (answered before by another model fingerprint, moved aside), `failed`, `asked` (requests sent),
    `cached` (requests answered from the cache), and how the answers' turns ended: `turns`, `ended` (at the model's
    own end of turn), `cut` (at a stop string), `length` (at max_tokens)."""

    model_id: str = Field(description="the model_id written into the answers")
    fingerprint: str | None = Field(None, description="the fingerprint the server reports for the model, if any")

    @classmethod
    def build(
        cls, out: Path, model_id: str, fingerprint: str | None, counts: dict[str, int], usage: Usage, seconds: float
    ) -> AnswerResult:
        """The result of one answering run."""
        counts = {**counts, "asked": usage.requests, "cached": usage.cached}
        outputs = {"answers": out}
        return cls(
            outputs=outputs,
            counts=counts,
            model_id=model_id,
            fingerprint=fingerprint,
            seconds=seconds,
            **_tokens_and_cost(usage),
        )


class GradeResult(StageResult):
    """What `grade()` and `score()` return. `counts`: `questions`, `items` (ratings or comparisons to make),
    `judged` (with a verdict), `errors` (without), `asked` and `cached` (requests), and `read_logprobs`,
    `read_text`, `read_annotation` (verdicts by the way they were read)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    out: Path = Field(description="the run folder: summary.json, judgments.jsonl, report.md, plots, config.yaml")
    summary: dict[str, Any] = Field(description="the content of summary.json")
    judgments: list[Judgment] = Field(default_factory=list, description="every judgment, as in judgments.jsonl")

    @classmethod
    def build(
        cls, out: Path, summary: dict[str, Any], js: list[Judgment], usage: Usage | None, seconds: float
    ) -> GradeResult:
        """The result of one grading (or scoring) run."""
        usage = usage or Usage()
        counts = {
            "questions": len({j.question_id for j in js}),
            "items": len(js),
            "judged": sum(j.error is None for j in js),
            "errors": sum(j.error is not None for j in js),
            "asked": usage.requests,
            "cached": usage.cached,
            **{f"read_{way}": n for way, n in summary["verdicts_read"].items()},
        }
        outputs = {name: out / name for name in ("summary.json", "judgments.jsonl", "report.md")}
        return cls(
            outputs=outputs,
            counts=counts,
            out=out,
            summary=summary,
            judgments=js,
            seconds=seconds,
            **_tokens_and_cost(usage),
        )

    def incomplete_message(self) -> str:
        """Why not every item got a verdict: how many, the reasons, and where the judge's replies are."""
        nv = self.summary["no_verdict"]
        why = ", ".join(f"{n} {reason}" for reason, n in nv["reasons"].items())
        return (
            f"{nv['items']} of {plural(self.counts['items'], 'item')} got no verdict ({why}); the others are scored in "
            f"{self.out}/report.md, with sample replies of the judge"
        )

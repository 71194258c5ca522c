"""The configs of `huarizo judge answer | grade | score | harness`: pydantic models loaded from YAML, `--set` and flags
(in that order of precedence), and the arguments of `answer()`, `grade()`, `score()` and `harness()`.

Models reached over HTTP (the answering model, the judge) are `huarizo.formats.EndpointConfig` sections: the litellm
model, `api_base`, the *name* of the environment variable holding the key (never the key), concurrency, request
time-out, retries and cache. A plain string is short for `{model: STRING}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from huarizo.formats import EndpointConfig, HuarizoConfig

VerdictMode = Literal["text", "logprobs", "auto"]


def _endpoint(v: Any) -> Any:
    return {"model": v} if isinstance(v, str) else v


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class AnswerConfig(HuarizoConfig):
    """Configuration of `huarizo judge answer` (also the argument of `answer()`)."""

    endpoint: EndpointConfig = Field(
        description="the model that answers: litellm model, api_base, api_key_env, concurrency, request_timeout, ..."
    )
    questions: str = Field(description="question file (Vicuna-80, MT-bench, AlpacaEval or Self-Instruct layout)")
    out: str = Field(description="answers JSONL (appended to; a rerun resumes)")
    model_id: str | None = Field(None, description="name written as model_id (default: the model string's last part)")
    max_tokens: int = Field(1024, ge=1, description="longest answer, in tokens, per turn")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the answers")
    system: str | None = Field(None, description="system message sent before the first turn")
    template: str | None = Field(
        None, description="huarizo template name: send plain prompts in completion mode (base models)"
    )
    limit: int | None = Field(None, ge=1, description="answer only the first N questions")

    _endpoint = field_validator("endpoint", mode="before")(_endpoint)


class GradeConfig(HuarizoConfig):
    """Configuration of `huarizo judge grade` (also the argument of `grade()`)."""

    mode: Literal["single", "pairwise"] = Field("pairwise", description="1-10 ratings, or comparisons in both orders")
    questions: str = Field(description="question file")
    references: str | None = Field(None, description="reference answers (MT-bench answer layout)")
    answers: list[str] = Field(min_length=1, description="answer files, one or more models each")
    baseline: str | None = Field(None, description="pairwise: compare every model with this answer file's model")
    judge: EndpointConfig = Field(
        description="the judge: litellm model, api_base, api_key_env, concurrency, request_timeout, ..."
    )
    template: str | None = Field(
        None, description="huarizo template name: ask the judge with plain prompts in completion mode (base models)"
    )
    verdict: VerdictMode = Field(
        "auto",
        description="how verdicts are read: from the verdict token's probabilities (logprobs), from the reply's text, "
        "or auto (logprobs when the judge returns them, else text)",
    )
    top_logprobs: int = Field(20, ge=1, description="alternatives asked for per generated token (logprobs verdicts)")
    parse_retries: int = Field(2, ge=0, description="text verdicts: new requests when a reply has no verdict")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the judge")
    retry_temperature: float = Field(0.7, ge=0, description="temperature of the requests asked again")
    max_tokens: int = Field(1024, ge=1, description="longest text-verdict reply, in tokens")
    labels: list[str] = Field(
        default_factory=list,
        description="label files for the agreement audit: arena votes (votes.jsonl of huarizo serve), FastChat "
        "reviews, AlpacaEval annotations",
    )
    instruction_difficulty: str | None = Field(
        None,
        description="AlpacaEval's instruction_difficulty.csv (index, instruction_difficulty): also report "
        "AlpacaEval's length-controlled win rate formula",
    )
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the confidence intervals")
    seed: int = Field(0, description="seed of the bootstrap")
    limit: int | None = Field(None, ge=1, description="grade only the first N questions")
    plots: bool = Field(True, description="draw PNG plots into the report")
    out: str = Field(description="output folder")

    _judge = field_validator("judge", mode="before")(_endpoint)
    _lists = field_validator("answers", "labels", mode="before")(_listify)


class ScoreConfig(HuarizoConfig):
    """Configuration of `huarizo judge score` (also the argument of `score()`): existing judgments in, the summary
    and report of `grade` out."""

    files: list[str] = Field(
        min_length=1,
        description="judgment files: AlpacaEval annotations, FastChat MT-bench judgments (pair or single), "
        "Huarizo judgments.jsonl, arena votes (votes.jsonl of huarizo serve)",
    )
    out: str = Field(description="output folder")
    questions: str | None = Field(None, description="question file: categories for the per-category tables")
    baseline: str | None = Field(
        None, description="pairwise: the baseline model's name (AlpacaEval: generator_1 unless given)"
    )
    instruction_difficulty: str | None = Field(
        None,
        description="AlpacaEval's instruction_difficulty.csv (index, instruction_difficulty): also report "
        "AlpacaEval's length-controlled win rate formula",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="label files for the agreement audit (arena votes, AlpacaEval annotations)",
    )
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the confidence intervals")
    seed: int = Field(0, description="seed of the bootstrap")
    plots: bool = Field(True, description="draw PNG plots into the report")

    _lists = field_validator("files", "labels", mode="before")(_listify)


class HarnessConfig(HuarizoConfig):
    """Configuration of `huarizo judge harness`."""

    model: str = Field(description="model reference: a folder, `tiny`, `embedded` or a hub id")
    tasks: list[str] = Field(min_length=1, description="lm-eval task names")
    include_path: str | None = Field(None, description="folder of extra task YAMLs (e.g. from write_choice_task)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples per item (default: the task's)")
    limit: int | None = Field(None, ge=1, description="items per task")
    batch_size: int = Field(1, ge=1, description="items per forward pass")
    device: str = Field("cpu", description="torch device")
    out: str = Field(description="output folder")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        return (
            [t.strip() for item in items for t in str(item).split(",") if t.strip()] if isinstance(items, list) else v
        )

"""The configs of huarizo-datagen's commands: pydantic models loaded from YAML with `--set` overrides and flags.

`DatagenConfig` is `huarizo datagen run`'s config and also the `datagen:` section of a `huarizo run` recipe;
`FilterConfig` is `huarizo filter`'s (and the `filter:` section of a generation config), `CleanConfig`
`huarizo clean-sharegpt`'s and `IdentityConfig` `huarizo datagen identity`'s. The teacher is the shared
`huarizo.formats.EndpointConfig` plus datagen's sampling settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from huarizo.formats import EndpointConfig, HuarizoConfig

INSTRUCTION_CHECKS = ("keywords", "length", "start", "rouge")
INSTANCE_CHECKS = ("empty-output", "duplicate", "conflict")
ALL_CHECKS = INSTRUCTION_CHECKS + INSTANCE_CHECKS

# Words that ask for something a text model cannot see, hear, draw or open. Not "plot" (a film's plot) nor "sound".
DEFAULT_BLACKLIST = [
    "image", "images", "picture", "pictures", "photo", "photos", "photograph", "drawing", "draw", "sketch", "paint",
    "graph", "graphs", "chart", "diagram", "flowchart", "map", "maps", "video", "videos", "audio", "music",
    "listen", "file", "files", "attached", "screenshot", "go to", "website link",
]  # fmt: skip


class TeacherConfig(EndpointConfig):
    """The teacher: the shared endpoint settings (any litellm model string) plus how datagen samples from it.

    The default is the embedded base model behind `huarizo serve --port 8000`, prompted in completion mode.
    """

    model: str = Field(
        default="openai/embedded", description="litellm model string of the teacher, e.g. openai/gpt-4o-mini"
    )
    api_base: str | None = Field(
        default="http://127.0.0.1:8000/v1",
        description="base URL of an OpenAI-compatible server (null for a hosted API)",
    )
    mode: Literal["chat", "completion"] = Field(
        default="completion",
        description="chat: messages with a brief (chat models); completion: a few-shot document (base)",
    )
    temperature: float = Field(default=1.0, ge=0, description="sampling temperature of generation requests")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling of generation requests")
    max_tokens: int = Field(default=1536, ge=1, description="reply limit of generation requests (tokens)")


class AlpacaConfig(HuarizoConfig):
    """Alpaca's simplification: one request, a numbered batch of whole tasks."""

    tasks_per_request: int = Field(default=20, ge=1, description="new tasks asked for in one request")
    seed_examples: int = Field(default=3, ge=1, description="seed tasks shown as examples in one request")


class SelfInstructConfig(HuarizoConfig):
    """The Self-Instruct bootstrap."""

    human_examples: int = Field(default=6, ge=0, description="seed instructions in each instruction-generation prompt")
    machine_examples: int = Field(default=2, ge=0, description="generated instructions in it, once there are some")
    instructions_per_request: int = Field(default=8, ge=1, description="new instructions taken from one reply")
    classify_examples: int = Field(
        default=12, ge=2, description="seed tasks shown to decide 'is it a classification task'"
    )
    instance_examples: int = Field(default=3, ge=1, description="seed tasks shown as examples when writing instances")
    max_instances: int = Field(default=3, ge=1, description="instances taken per instruction")


class FilterConfig(HuarizoConfig):
    """Which checks run and their settings (`checks: [all]` or a subset of the names in `ALL_CHECKS`)."""

    checks: list[str] = Field(
        default_factory=lambda: ["all"],
        description=f"checks to run: all, or some of {', '.join(ALL_CHECKS)} (repeat, or comma-separate)",
    )
    rouge_threshold: float = Field(
        default=0.7, ge=0.0, le=1.0, description="drop an instruction whose ROUGE-L F1 with a pool one is above this"
    )
    tokenizer: Literal["default", "cjk"] = Field(
        default="default", description="ROUGE-L tokenizer: default (rouge_score's) or cjk (Chinese, Japanese, Korean)"
    )
    blacklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST), description="words a text model cannot act on (keywords)"
    )
    min_words: int = Field(default=3, ge=0, description="shortest instruction kept, in words (length)")
    max_words: int = Field(default=150, ge=1, description="longest instruction kept, in words (length)")

    @field_validator("checks", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [c.strip() for item in v for c in (item.split(",") if isinstance(item, str) else [item])]
        return v

    @field_validator("checks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c != "all" and c not in ALL_CHECKS]
        if bad:
            raise ValueError(f"unknown check(s) {bad}; choose from all, {', '.join(ALL_CHECKS)}")
        return v

    def enabled(self, check: str) -> bool:
        """Whether a check runs."""
        return "all" in self.checks or check in self.checks


class DatagenConfig(HuarizoConfig):
    """One generation run (`huarizo datagen run CONFIG.yaml`, or the `datagen:` section of a recipe)."""

    pipeline: Literal["alpaca", "self-instruct"] = Field(
        default="alpaca", description="alpaca (batches) or self-instruct"
    )
    output_dir: Path = Field(default=Path("runs/datagen"), description="the run folder (resumed when it exists)")
    seeds: Path | None = Field(
        default=None, description="seed tasks file (default: the 60 shipped with huarizo-datagen)"
    )
    num_records: int = Field(default=100, ge=1, description="stop once this many records are kept")
    max_rounds: int = Field(default=1000, ge=1, description="stop after this many rounds")
    requests_per_round: int = Field(default=8, ge=1, description="generation requests sent together in one round")
    seed: int = Field(default=0, description="the run's random seed (which examples each prompt shows)")
    progress: bool = Field(default=True, description="show a progress bar")
    teacher: TeacherConfig = Field(
        default_factory=lambda: TeacherConfig.model_validate({}), description="the teacher model"
    )
    alpaca: AlpacaConfig = Field(default_factory=AlpacaConfig, description="settings of the alpaca pipeline")
    self_instruct: SelfInstructConfig = Field(
        default_factory=SelfInstructConfig, description="settings of the self-instruct pipeline"
    )
    filter: FilterConfig = Field(default_factory=FilterConfig, description="checks on generated tasks")


class CleanConfig(HuarizoConfig):
    """Settings of `huarizo clean-sharegpt`."""

    max_length: int = Field(default=2048, ge=16, description="token budget per conversation part")
    tokenizer: str | None = Field(
        default=None, description="HF tokenizer folder; without one, lengths are counted in words"
    )
    lang: str | None = Field(default=None, description="keep only conversations in this language (ISO 639-1, e.g. en)")
    min_pairs: int = Field(default=1, ge=1, description="drop conversations with fewer human+gpt pairs")


class IdentityConfig(HuarizoConfig):
    """Settings of `huarizo datagen identity`."""

    name: str = Field(min_length=1, description="the model's name, as it should state it")
    org: str = Field(min_length=1, description="who made the model")
    count: int = Field(default=120, ge=1, description="how many conversations")
    seed: int = Field(default=0, description="random seed of the phrasings chosen")

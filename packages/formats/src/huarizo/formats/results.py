"""What every stage function returns: `huarizo.datagen.run`, `huarizo.trainer.train`, `huarizo.judge.answer`, ...

Stages subclass `StageResult` with their own typed fields; the pipeline reads the common ones (outputs, counts,
tokens, cost, seconds) to show progress, write `summary.json` and decide what a rerun may skip.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StageResult(BaseModel):
    """Outputs, counts, model tokens, cost and time of one stage run."""

    model_config = ConfigDict(extra="forbid")

    outputs: dict[str, Path] = Field(default_factory=dict, description="name -> file or folder the stage wrote")
    counts: dict[str, int] = Field(default_factory=dict, description="what the stage counted (records kept, ...)")
    prompt_tokens: int = Field(default=0, description="tokens sent to a model (teacher, judge, served model)")
    completion_tokens: int = Field(default=0, description="tokens a model generated for this stage")
    cost: float | None = Field(
        default=0.0, description="USD spent on priced models (None: some calls had no known price)"
    )
    seconds: float = Field(default=0.0, description="wall time of the stage")

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

"""One endpoint config for every model Huarizo talks to over HTTP: datagen's teacher, judge's judge and answerer.

Only the *name* of the environment variable that holds a key is stored, never the key, so a config written into a
run folder holds no secret. The client itself (`huarizo.formats.llm.LLMClient`) needs the extra
`huarizo-formats[llm]`; this module needs only pydantic.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from huarizo.formats.config import HuarizoConfig
from huarizo.formats.errors import HuarizoError

if TYPE_CHECKING:
    from huarizo.formats.llm import LLMClient


class EndpointConfig(HuarizoConfig):
    """A litellm model behind an endpoint: hosted (`gpt-4o-mini`), or OpenAI-compatible (`openai/NAME` + `api_base`:
    `huarizo serve`, vLLM, Ollama)."""

    model: str = Field(description="litellm model string, e.g. openai/gpt-4o-mini, or openai/NAME with api_base")
    api_base: str | None = Field(default=None, description="base URL of an OpenAI-compatible server (ends in /v1)")
    api_key_env: str | None = Field(
        default=None,
        description="name of the environment variable holding the API key (the key itself is never stored)",
    )
    concurrency: int = Field(default=8, ge=1, description="requests in flight at once")
    request_timeout: float = Field(
        default=120.0, gt=0, description="seconds before a request counts as failed (retried)"
    )
    max_retries: int = Field(
        default=5, ge=0, description="retries of a failed request (429, 5xx, time-outs, connection)"
    )
    cache_dir: str | None = Field(
        default=None,
        description="on-disk cache of replies (default: the command's own, e.g. OUT/cache or $HUARIZO_CACHE)",
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or not v.replace("_", "a").isalnum() or v[0].isdigit()):
            raise ValueError(f"{v!r} is not an environment variable name (give the variable's name, not the key)")
        return v

    def api_key(self) -> str | None:
        """The key from the environment (None without `api_key_env`); a named but unset variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise HuarizoError(f"api_key_env: the environment variable {self.api_key_env} is not set")
        return key

    def client(self, mode: Literal["chat", "completion"] = "chat", *, cache_dir: str | None = None) -> LLMClient:
        """An `LLMClient` for this endpoint (`cache_dir` is the default used when the config sets none)."""
        from huarizo.formats.llm import LLMClient

        return LLMClient(
            model=self.model,
            api_base=self.api_base,
            api_key=self.api_key(),
            mode=mode,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout=self.request_timeout,
            cache_dir=self.cache_dir or cache_dir,
        )

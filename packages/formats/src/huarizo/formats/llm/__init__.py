"""Talking to models over HTTP (extra `huarizo-formats[llm]`): the litellm client with concurrency, retries, an
on-disk cache and cost (`LLMClient`), shared by datagen and judge.

Importing this package imports neither litellm nor httpx, and changes no environment variable: litellm is imported
(offline) on the first request.
"""

from huarizo.formats.llm.client import (
    LLMClient,
    LLMError,
    LLMResponse,
    Mode,
    TokenLogprob,
    Usage,
    import_litellm,
    request_hash,
)

__all__ = ["LLMClient", "LLMError", "LLMResponse", "Mode", "TokenLogprob", "Usage", "import_litellm", "request_hash"]

"""Talking to models over HTTP (extra `huarizo-formats[llm]`): the litellm client with concurrency, retries, an
on-disk cache and cost (`LLMClient`), shared by datagen and judge; and model servers run as child processes (a free
port, `wait_until_ready`, `stop_process`), shared by the pipeline, vLLM behind `huarizo serve`, and tests.

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
from huarizo.formats.llm.process import ServerStartError, free_port, log_tail, stop_process, wait_until_ready

__all__ = [
    "LLMClient",
    "LLMError",
    "LLMResponse",
    "Mode",
    "ServerStartError",
    "TokenLogprob",
    "Usage",
    "free_port",
    "import_litellm",
    "log_tail",
    "request_hash",
    "stop_process",
    "wait_until_ready",
]

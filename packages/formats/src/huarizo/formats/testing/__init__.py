"""Test stand-ins that several packages' tests and benchmarks share (extra `huarizo-formats[llm]`): a scripted
OpenAI-compatible server on loopback for a paid teacher or judge, faults scripted; and `huarizo serve` in a child
process (`huarizo_serve`) for tests that need a real model server.

Test code only: no Huarizo package imports it outside its tests (import-linter checks it).
"""

from huarizo.formats.testing.server import (
    PromptCounter,
    Reply,
    Script,
    ScriptedServer,
    chat_logprobs,
    completion_logprobs,
    prompt_text,
)
from huarizo.formats.testing.serving import HUARIZO, huarizo_serve

__all__ = [
    "HUARIZO",
    "PromptCounter",
    "Reply",
    "Script",
    "ScriptedServer",
    "chat_logprobs",
    "completion_logprobs",
    "huarizo_serve",
    "prompt_text",
]

"""Test stand-ins that several packages' tests and benchmarks share (extra `huarizo-formats[llm]`): a scripted
OpenAI-compatible server on loopback for a paid teacher or judge, faults scripted.

Test code only: no Huarizo package imports it outside its tests.
"""

from huarizo.formats.testing.server import (
    Reply,
    Script,
    ScriptedServer,
    chat_logprobs,
    completion_logprobs,
    prompt_text,
)

__all__ = ["Reply", "Script", "ScriptedServer", "chat_logprobs", "completion_logprobs", "prompt_text"]

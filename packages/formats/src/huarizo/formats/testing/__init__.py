"""Test stand-ins that several packages' tests and benchmarks share (extra `huarizo-formats[llm]`): a scripted
OpenAI-compatible server on loopback for a paid teacher or judge, faults scripted (`ScriptedServer`); scripts for it
that answer datagen's prompts (`scripted_teacher`) and judge prompts (`prefer_longer`, `longer_with`, ...) as a real
model would; `huarizo serve` in a child process (`huarizo_serve`) for tests that need a real model server; and the
reference ROUGE-L filter through `rouge_score` (`rouge_score_filter`).

Test code only: no Huarizo package imports it outside its tests (import-linter checks it).
"""

from huarizo.formats.testing.judges import (
    first_with,
    longer_with,
    prefer_first,
    prefer_longer,
    rating_with,
    shown_answer,
    shown_answers,
    verdict_reply,
)
from huarizo.formats.testing.rouge import rouge_score_filter
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
from huarizo.formats.testing.teachers import scripted_teacher

__all__ = [
    "HUARIZO",
    "PromptCounter",
    "Reply",
    "Script",
    "ScriptedServer",
    "chat_logprobs",
    "completion_logprobs",
    "first_with",
    "huarizo_serve",
    "longer_with",
    "prefer_first",
    "prefer_longer",
    "prompt_text",
    "rating_with",
    "rouge_score_filter",
    "scripted_teacher",
    "shown_answer",
    "shown_answers",
    "verdict_reply",
]

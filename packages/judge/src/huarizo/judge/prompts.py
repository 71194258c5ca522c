"""Judge prompts (written for Huarizo) and the verdict parser.

The verdict formats are a compatibility contract judges and their users already know: `[[A]]`, `[[B]]` or `[[C]]`
(tie) for a comparison, and `Rating: [[N]]` (N from 1 to 10) for a single grade. Every answer appears verbatim.

Text verdicts let the judge think first and write the verdict last; probability verdicts ask for the verdict alone
(`verdict_only`) so that it is the first thing generated, and in completion mode the prompt itself ends with
`Verdict: [[` or `Rating: [[`, so the very next token is the verdict (`completion_prompt`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from huarizo.formats import Question

if TYPE_CHECKING:
    from huarizo.formats import Template

REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding"})
"""Categories graded against the reference answer when the question has one."""

_SINGLE_TASK = (
    "You are a strict, fair reviewer of AI assistant answers. Judge how well the answer serves the user: whether it "
    "is correct, does what was asked, is useful and specific, and is clearly written. Length is not a merit in "
    "itself. "
)
_SINGLE_REF_TASK = (
    "You are a strict, fair reviewer of AI assistant answers to questions that have a correct answer. A reference "
    "solution is given: compare the assistant's final result with it and treat any mistake in the result as serious, "
    "however well the answer is written. "
)
_PAIR_TASK = (
    "You compare two AI assistants' answers to the same user request and decide which serves the user better: "
    "correctness first, then whether it does what was asked, usefulness and clarity. The order in which the answers "
    "are shown must not matter, nor their length, nor the assistants' names. "
)
_PAIR_REF_TASK = (
    "You compare two AI assistants' answers to a question that has a correct answer. A reference solution is given: "
    "an answer whose result disagrees with it loses to one that agrees, however well it is written. The order of the "
    "answers and their length must not matter. "
)
_PAIR_VERDICTS = "`[[A]]` if assistant A is better, `[[B]]` if assistant B is better, `[[C]]` for a tie."
_THINK_PAIR = "Think briefly, then end with exactly one verdict on the last line: " + _PAIR_VERDICTS
_ONLY_PAIR = "Reply with the verdict alone, no explanation: " + _PAIR_VERDICTS


def _think_single(worst: str, best: str) -> str:
    return (
        "Think briefly, then give your grade on the last line exactly as `Rating: [[N]]`, where N is an integer "
        f"from 1 ({worst}) to 10 ({best})."
    )


def _only_single(worst: str, best: str) -> str:
    return f"Reply with the grade alone, no explanation, as `[[N]]` with N from 1 ({worst}) to 10 ({best})."


SYSTEM_SINGLE = _SINGLE_TASK + _think_single("useless or wrong", "excellent")
SYSTEM_SINGLE_REF = _SINGLE_REF_TASK + _think_single("wrong", "correct and clear")
SYSTEM_PAIR = _PAIR_TASK + _THINK_PAIR
SYSTEM_PAIR_REF = _PAIR_REF_TASK + _THINK_PAIR
VERDICT_SYSTEMS = {
    SYSTEM_SINGLE: _SINGLE_TASK + _only_single("useless or wrong", "excellent"),
    SYSTEM_SINGLE_REF: _SINGLE_REF_TASK + _only_single("wrong", "correct and clear"),
    SYSTEM_PAIR: _PAIR_TASK + _ONLY_PAIR,
    SYSTEM_PAIR_REF: _PAIR_REF_TASK + _ONLY_PAIR,
}
"""The system prompt of each kind of request, asking for the verdict alone (probability verdicts)."""

PAIR_PREFIX = "Verdict: [["
RATING_PREFIX = "Rating: [["
"""Where a completion-mode prompt for a probability verdict ends: the next token is the verdict."""


def _dialogue(question: Question, answer_turns: list[str], upto: int, who: str = "Assistant") -> str:
    parts = []
    for i in range(upto + 1):
        parts.append(f"### User (turn {i + 1})\n{question.turns[i]}\n\n### {who} (turn {i + 1})\n{answer_turns[i]}")
    return "\n\n".join(parts)


def _reference(question: Question, turn: int) -> str | None:
    ref = question.reference
    if not ref or turn >= len(ref) or question.category.lower() not in REFERENCE_CATEGORIES:
        return None
    return ref[turn]


def _focus(question: Question, turn: int) -> str:
    if len(question.turns) == 1:
        return ""
    return f"\n\nGrade only the assistant's reply to turn {turn + 1}; earlier turns are context."


def single_messages(question: Question, answer_turns: list[str], turn: int) -> tuple[list[dict[str, str]], bool]:
    """Messages asking for a 1-10 rating of `answer_turns[turn]` (thinking first), and whether a reference was
    used."""
    ref = _reference(question, turn)
    body = f"<conversation>\n{_dialogue(question, answer_turns, turn)}\n</conversation>"
    if ref is not None:
        body = f"<reference solution for turn {turn + 1}>\n{ref}\n</reference solution>\n\n" + body
    system = SYSTEM_SINGLE_REF if ref is not None else SYSTEM_SINGLE
    return [{"role": "system", "content": system}, {"role": "user", "content": body + _focus(question, turn)}], (
        ref is not None
    )


def pair_messages(
    question: Question, turns_a: list[str], turns_b: list[str], turn: int
) -> tuple[list[dict[str, str]], bool]:
    """Messages asking which of two answers (A shown first) is better at `turn` (thinking first), and whether a
    reference was used."""
    ref = _reference(question, turn)
    body = (
        f"<conversation with assistant A>\n{_dialogue(question, turns_a, turn, 'Assistant A')}\n"
        f"</conversation with assistant A>\n\n"
        f"<conversation with assistant B>\n{_dialogue(question, turns_b, turn, 'Assistant B')}\n"
        f"</conversation with assistant B>"
    )
    if ref is not None:
        body = f"<reference solution for turn {turn + 1}>\n{ref}\n</reference solution>\n\n" + body
    focus = _focus(question, turn).replace("the assistant's reply", "the assistants' replies")
    system = SYSTEM_PAIR_REF if ref is not None else SYSTEM_PAIR
    return [{"role": "system", "content": system}, {"role": "user", "content": body + focus}], ref is not None


def verdict_only(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same request asking for the verdict alone, so that the verdict is the first token generated."""
    system, *rest = messages
    return [{"role": "system", "content": VERDICT_SYSTEMS[system["content"]]}, *rest]


def completion_prompt(messages: list[dict[str, str]], template: Template, prefix: str = "") -> str:
    """A chat request as one plain prompt in a Huarizo template (completion mode), ending with `prefix`."""
    from huarizo.formats import Conversation, Message

    conv = Conversation(messages=[Message(role=m["role"], content=m["content"]) for m in messages])  # type: ignore[arg-type]
    prompt = template.generation_prompt(conv)
    if prefix and not prompt.endswith(("\n", " ")):
        prompt += "\n"
    return prompt + prefix


_PAIR = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_pair(reply: str) -> str | None:
    """`A`, `B` or `C` (tie) from a reply (its `[[X]]` verdict, or the reply itself when it is the bare letter), or
    None when there is no verdict or the reply gives conflicting ones."""
    if reply.strip() in ("A", "B", "C"):
        return reply.strip()
    found = set(_PAIR.findall(reply))
    return found.pop() if len(found) == 1 else None


def parse_rating(reply: str) -> float | None:
    """The 1-10 rating of a reply, or None when there is none, several disagree, or it is out of range."""
    found = {float(x) for x in _RATING.findall(reply)}
    if len(found) != 1:
        return None
    value = found.pop()
    return value if 1 <= value <= 10 else None

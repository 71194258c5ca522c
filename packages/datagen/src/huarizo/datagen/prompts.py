"""Huarizo's own prompts for the teacher, and the parsers of its replies.

Every prompt works two ways: for a chat model it starts with a short brief; for a base model (completion mode) the
brief is left out and the prompt ends where the model should continue (`Task 4` / `Instruction:` ...), so a few-shot
document is all it sees. Each prompt has an id (recorded in every record's provenance); bump the version suffix when
the text changes. Parsers never raise: text they cannot read yields fewer (or no) items.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from huarizo.formats import SeedTask

NO_INPUT = "<no input>"
_NO_INPUT_FORMS = {"", "<no input>", "no input", "<noinput>", "none", "n/a", "na", "-", "(none)", "null"}

ALPACA_BATCH = "alpaca/batch@1"
SI_INSTRUCTIONS = "self-instruct/instructions@1"
SI_CLASSIFY = "self-instruct/classify@1"
SI_INPUT_FIRST = "self-instruct/instances-input-first@1"
SI_OUTPUT_FIRST = "self-instruct/instances-output-first@1"


@dataclass(frozen=True)
class Task:
    """A parsed task: instruction, input ('' when none) and output."""

    instruction: str
    input: str
    output: str


def _clean_input(text: str) -> str:
    text = text.strip()
    return "" if text.lower().strip(" .") in _NO_INPUT_FORMS or text == NO_INPUT else text


# ---- Alpaca: one request, a numbered batch of whole tasks --------------------------------------------------------

_ALPACA_BRIEF = """\
We are collecting varied tasks to teach an assistant to follow instructions. Write {n} new tasks that differ from \
the examples and from each other.
- Mix the kinds of task: questions, writing, rewriting, summarising, classifying, reasoning, maths, code, planning, \
advice, brainstorming.
- Mix the topics and the wording; use both commands and questions. One or two sentences per instruction, in English.
- A text-only assistant must be able to do every task: nothing that needs pictures, sound, browsing or acting in \
the world.
- Give roughly half of the tasks an input: the concrete text, list, code or data the instruction works on, under 100 \
words. For the other tasks write {no_input} as the input.
- The output is a correct, helpful answer of at most 100 words.
Use exactly the layout of the examples, and continue the numbering.

"""


def _task_block(k: int, instruction: str, input_: str, output: str) -> str:
    return f"Task {k}\nInstruction: {instruction}\nInput: {input_ or NO_INPUT}\nOutput: {output}\n\n"


def alpaca_batch_prompt(examples: Sequence[SeedTask], n: int, chat: bool) -> str:
    """Ask for `n` new tasks after the numbered seed examples."""
    text = _ALPACA_BRIEF.format(n=n, no_input=NO_INPUT) if chat else "Tasks for an instruction-following assistant\n\n"
    for k, seed in enumerate(examples, 1):
        inst = seed.instances[0]
        text += _task_block(k, seed.instruction, inst.input, inst.output)
    k = len(examples) + 1
    return text + (f"Write tasks {k} to {k + n - 1} now.\n" if chat else f"Task {k}\nInstruction:")


_TASK_HEAD = re.compile(r"^\s*(?:#+\s*)?\**\s*Task\s*(\d+)\s*\**\s*[:.]?\s*\**\s*$", re.MULTILINE | re.IGNORECASE)
_FIELD = re.compile(r"^\s*\**\s*(Instruction|Input|Output)\s*\**\s*:\s*\**", re.MULTILINE | re.IGNORECASE)


def _fields(block: str) -> dict[str, str]:
    marks = list(_FIELD.finditer(block))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(block)
        out.setdefault(m.group(1).lower(), block[m.end() : end].strip())
    return out


def parse_alpaca_batch(reply: str, *, first: int, truncated: bool, chat: bool) -> list[Task]:
    """Tasks of a numbered batch reply. A reply cut by the length limit (`truncated`) loses its last task only."""
    if not chat:
        reply = f"Task {first}\nInstruction:" + reply
    heads = list(_TASK_HEAD.finditer(reply))
    tasks: list[Task] = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(reply)
        if truncated and i == len(heads) - 1:
            break
        f = _fields(reply[head.end() : end])
        if f.get("instruction") and "output" in f:
            tasks.append(Task(f["instruction"], _clean_input(f.get("input", "")), f["output"]))
    return tasks


# ---- Self-Instruct: instructions, classification, instances -------------------------------------------------------

_SI_INSTR_BRIEF = """\
Below is a numbered list of tasks for an instruction-following assistant. Continue it with {n} more tasks, numbered \
from {first}. Each new task must be different from all the others in kind and topic; a text-only assistant must be \
able to do it. Write one task per line as `Task N: <instruction>` and nothing else.

"""


def instructions_prompt(examples: Sequence[str], n: int, chat: bool) -> str:
    """Ask for `n` new instructions after the in-context ones (Self-Instruct step 1)."""
    first = len(examples) + 1
    text = _SI_INSTR_BRIEF.format(n=n, first=first) if chat else "A list of varied tasks:\n"
    text += "".join(f"Task {k}: {' '.join(ins.split())}\n" for k, ins in enumerate(examples, 1))
    return text + ("" if chat else f"Task {first}:")


_INSTR_LINE = re.compile(r"^\s*(?:Task\s*)?(\d+)\s*[:.)]\s*(.+?)\s*$", re.IGNORECASE)


def parse_instructions(reply: str, *, first: int, truncated: bool, chat: bool) -> list[str]:
    """New instructions from a `Task N: ...` list; a truncated reply loses its last line."""
    if not chat:
        reply = f"Task {first}:" + reply
    lines = [ln for ln in reply.splitlines() if ln.strip()]
    if truncated and lines:
        lines = lines[:-1]
    out = []
    for ln in lines:
        m = _INSTR_LINE.match(ln)
        if m and int(m.group(1)) >= first:
            out.append(m.group(2).strip().strip("*").strip())
    return [t for t in out if t]


_CLASSIFY_BRIEF = """\
For each task, say whether it is a classification task: one whose answer is a label from a small, fixed set of \
options (for example Yes/No, Positive/Negative, a topic from a list). Answer Yes or No.

"""


def classify_prompt(examples: Sequence[SeedTask], instruction: str, chat: bool) -> str:
    """Few-shot: is this instruction a classification task?"""
    text = _CLASSIFY_BRIEF if chat else ""
    for seed in examples:
        text += f"Task: {seed.instruction}\nClassification: {'Yes' if seed.is_classification else 'No'}\n\n"
    return text + f"Task: {instruction}\nClassification:"


def parse_classify(reply: str) -> bool | None:
    """True / False from a Yes / No reply; None when unreadable."""
    m = re.search(r"\b(yes|no)\b", reply, re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"


_INPUT_FIRST_BRIEF = """\
Write examples for the last task, in the layout of the earlier ones: for each example first an input (the concrete \
text or data the task works on, or {no_input} when the task needs none), then the correct output. Give up to {k} \
different examples, numbered Example 1, Example 2, ...

"""
_OUTPUT_FIRST_BRIEF = """\
The last task is a classification task. Write examples for it in the layout of the earlier ones: first pick a class \
label, then write an input that has that label. Cover different labels. Give up to {k} examples, numbered Example 1, \
Example 2, ...

"""


def instances_prompt(examples: Sequence[SeedTask], instruction: str, output_first: bool, k: int, chat: bool) -> str:
    """Ask for instances of `instruction`: input-first (ordinary tasks) or label-first (classification tasks)."""
    brief = (_OUTPUT_FIRST_BRIEF if output_first else _INPUT_FIRST_BRIEF).format(k=k, no_input=NO_INPUT)
    text = brief if chat else ""
    for seed in examples:
        text += f"Task: {seed.instruction}\n"
        for j, inst in enumerate(seed.instances, 1):
            if output_first:
                text += f"Example {j}\nClass label: {inst.output}\nInput: {inst.input or NO_INPUT}\n"
            else:
                text += f"Example {j}\nInput: {inst.input or NO_INPUT}\nOutput: {inst.output}\n"
        text += "\n"
    text += f"Task: {instruction}\n"
    return text if chat else text + ("Example 1\nClass label:" if output_first else "Example 1\nInput:")


_EXAMPLE_HEAD = re.compile(r"^\s*\**\s*Example\s*(\d+)\s*\**\s*[:.]?\s*$", re.MULTILINE | re.IGNORECASE)
_INST_FIELD = re.compile(r"^\s*\**\s*(Input|Output|Class label)\s*\**\s*:\s*", re.MULTILINE | re.IGNORECASE)


def parse_instances(reply: str, *, output_first: bool, truncated: bool, chat: bool) -> list[tuple[str, str]]:
    """(input, output) pairs of an instances reply; stops at the next `Task:`; a truncated reply loses its last."""
    if not chat:
        reply = "Example 1\n" + ("Class label:" if output_first else "Input:") + reply
    reply = re.split(r"^\s*Task\s*:", reply, flags=re.MULTILINE | re.IGNORECASE)[0] if "Task" in reply else reply
    heads = list(_EXAMPLE_HEAD.finditer(reply))
    if not heads and _INST_FIELD.search(reply):
        heads_spans = [(0, len(reply))]
    else:
        heads_spans = [
            (h.end(), heads[i + 1].start() if i + 1 < len(heads) else len(reply)) for i, h in enumerate(heads)
        ]
    if truncated and heads_spans:
        heads_spans = heads_spans[:-1]
    out = []
    for start, end in heads_spans:
        block = reply[start:end]
        marks = list(_INST_FIELD.finditer(block))
        f: dict[str, str] = {}
        for i, m in enumerate(marks):
            stop = marks[i + 1].start() if i + 1 < len(marks) else len(block)
            f.setdefault(m.group(1).lower(), block[m.end() : stop].strip())
        label = f.get("class label") if output_first else f.get("output")
        if label is not None and "input" in f:
            out.append((_clean_input(f["input"]), label))
    return out

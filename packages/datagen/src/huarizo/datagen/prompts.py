"""Huarizo's own prompts for the teacher, and the parsers of its replies.

Every prompt works two ways: for a chat model it starts with a short brief; for a base model (completion mode) the
brief is left out and the prompt is a few-shot document that ends where the model should continue (`Task 4` /
`Instruction:` ...), with stop strings where the continuation should end: a small base model writes its first new
task or two well and then starts repeating itself, so it is asked for a few at a time. Each prompt has an id
(recorded in every record's provenance); bump the version suffix when the text changes.

Parsers never raise. They return what they read and, for every task the teacher wrote that cannot be used, a `Drop`
with its reason (`truncated`, `empty-instruction`, `no-output`, `no-input`, `out-of-sequence`, or `unparsed` for a
reply with no task at all), so the run can account for every one of them in its rejects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from huarizo.formats import SeedTask

NO_INPUT = "<no input>"
_NO_INPUT_FORMS = {"", "<no input>", "no input", "<noinput>", "none", "n/a", "na", "-", "(none)", "null"}

ALPACA_BATCH = "alpaca/batch@2"
SI_INSTRUCTIONS = "self-instruct/instructions@2"
SI_CLASSIFY = "self-instruct/classify@1"
SI_INPUT_FIRST = "self-instruct/instances-input-first@2"
SI_OUTPUT_FIRST = "self-instruct/instances-output-first@2"
PROMPT_IDS = (ALPACA_BATCH, SI_INSTRUCTIONS, SI_CLASSIFY, SI_INPUT_FIRST, SI_OUTPUT_FIRST)

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """A prompt and where a base model's continuation should stop (None in chat mode)."""

    text: str
    stop: list[str] | None = None


@dataclass(frozen=True)
class Task:
    """A parsed task: instruction, input ('' when none) and output."""

    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Drop:
    """A task the teacher wrote that cannot be used: why, and what could be read of it."""

    reason: str
    instruction: str = ""
    input: str = ""
    output: str = ""
    detail: str = ""


@dataclass
class Parsed(Generic[T]):
    """What a reply parses into: the usable items, and the dropped ones."""

    items: list[T] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)


def _clean_input(text: str) -> str:
    text = text.strip()
    return "" if text.lower().strip(" .") in _NO_INPUT_FORMS or text == NO_INPUT else text


def _fields(block: str, field_re: re.Pattern[str], last: str, chat: bool) -> dict[str, str]:
    """The fields of one block (the first of each name). In completion mode the `last` field ends at a blank line:
    the prompt's layout has none inside a task, so what a base model writes after one belongs to no task."""
    marks = list(field_re.finditer(block))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(block)
        name, value = m.group(1).lower(), block[m.end() : end].strip()
        if not chat and name == last:
            value = value.split("\n\n", 1)[0].strip()
        out.setdefault(name, value)
    return out


def _unparsed(reply: str, parsed: Parsed[T]) -> Parsed[T]:
    if not parsed.items and not parsed.dropped:
        parsed.dropped.append(Drop("unparsed", output=reply, detail="no task in the layout asked for"))
    return parsed


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
_ALPACA_HEADER = "Tasks for an instruction-following assistant\n\n"


def _task_block(k: int, instruction: str, input_: str, output: str) -> str:
    return f"Task {k}\nInstruction: {instruction}\nInput: {input_ or NO_INPUT}\nOutput: {output}\n\n"


def alpaca_batch_prompt(examples: Sequence[SeedTask], n: int, chat: bool) -> Prompt:
    """Ask for `n` new tasks after the numbered seed examples. A base model continues the list from
    `Task K\\nInstruction:` and is stopped at the heading of task K+n."""
    brief = _ALPACA_BRIEF if chat else _ALPACA_HEADER
    text = brief.format(n=n, no_input=NO_INPUT)
    for k, seed in enumerate(examples, 1):
        inst = seed.instances[0]
        text += _task_block(k, " ".join(seed.instruction.split()), inst.input, inst.output)
    k = len(examples) + 1
    if chat:
        return Prompt(text + f"Write tasks {k} to {k + n - 1} now.\n")
    return Prompt(text + f"Task {k}\nInstruction:", stop=[f"\nTask {k + n}"])


_TASK_HEAD = re.compile(r"^\s*(?:#+\s*)?\**\s*Task\s*(\d+)\s*\**\s*[:.]?\s*\**\s*$", re.MULTILINE | re.IGNORECASE)
_FIELD = re.compile(r"^\s*\**\s*(Instruction|Input|Output)\s*\**\s*:\s*\**", re.MULTILINE | re.IGNORECASE)


def parse_alpaca_batch(reply: str, *, first: int, truncated: bool, chat: bool) -> Parsed[Task]:
    """The tasks of a numbered batch reply, and the dropped ones: cut by the length limit (`truncated`: the last
    one only), with an empty instruction, or with no output."""
    text = reply if chat else f"Task {first}\nInstruction:" + reply
    heads = list(_TASK_HEAD.finditer(text))
    parsed: Parsed[Task] = Parsed()
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        f = _fields(text[head.end() : end], _FIELD, "output", chat)
        task = Task(f.get("instruction", ""), _clean_input(f.get("input", "")), f.get("output", ""))
        if truncated and i == len(heads) - 1:
            parsed.dropped.append(Drop("truncated", *_astuple(task), detail="cut by the length limit"))
        elif not task.instruction:
            parsed.dropped.append(Drop("empty-instruction", *_astuple(task)))
        elif "output" not in f:
            parsed.dropped.append(Drop("no-output", *_astuple(task)))
        else:
            parsed.items.append(task)
    return _unparsed(reply, parsed)


def _astuple(task: Task) -> tuple[str, str, str]:
    return task.instruction, task.input, task.output


# ---- Self-Instruct: instructions, classification, instances -------------------------------------------------------

_SI_INSTR_BRIEF = """\
Below is a numbered list of tasks for an instruction-following assistant. Continue it with {n} more tasks, numbered \
from {first}. Each new task must be different from all the others in kind and topic; a text-only assistant must be \
able to do it. Write one task per line as `Task N: <instruction>` and nothing else.

"""


def instructions_prompt(examples: Sequence[str], n: int, chat: bool) -> Prompt:
    """Ask for `n` new instructions after the in-context ones (Self-Instruct step 1); a base model continues the
    list from `Task K:` and is stopped at `Task K+n:`."""
    first = len(examples) + 1
    text = _SI_INSTR_BRIEF.format(n=n, first=first) if chat else "A list of varied tasks for an assistant:\n"
    text += "".join(f"Task {k}: {' '.join(ins.split())}\n" for k, ins in enumerate(examples, 1))
    if chat:
        return Prompt(text)
    return Prompt(text + f"Task {first}:", stop=[f"\nTask {first + n}:"])


_INSTR_LINE = re.compile(r"^\s*(?:Task\s*)?(\d+)\s*[:.)]\s*(.*?)\s*$", re.IGNORECASE)


def parse_instructions(reply: str, *, first: int, truncated: bool, chat: bool) -> Parsed[str]:
    """New instructions from a `Task N: ...` list, and the dropped ones: the last line of a truncated reply, an
    empty one, or one numbered before `first` (an example repeated)."""
    text = reply if chat else f"Task {first}:" + reply
    lines = [ln for ln in text.splitlines() if ln.strip()]
    parsed: Parsed[str] = Parsed()
    for i, ln in enumerate(lines):
        m = _INSTR_LINE.match(ln)
        if m is None:
            continue  # not a task line (a chat model's preamble, a base model's aside)
        number, ins = int(m.group(1)), m.group(2).strip().strip("*").strip()
        if truncated and i == len(lines) - 1:
            parsed.dropped.append(Drop("truncated", ins, detail="cut by the length limit"))
        elif not ins:
            parsed.dropped.append(Drop("empty-instruction"))
        elif number < first:
            parsed.dropped.append(Drop("out-of-sequence", ins, detail=f"numbered {number}, before {first}"))
        else:
            parsed.items.append(ins)
    return _unparsed(reply, parsed)


_CLASSIFY_BRIEF = """\
For each task, say whether it is a classification task: one whose answer is a label from a small, fixed set of \
options (for example Yes/No, Positive/Negative, a topic from a list). Answer Yes or No.

"""


def classify_prompt(examples: Sequence[SeedTask], instruction: str, chat: bool) -> Prompt:
    """Few-shot: is this instruction a classification task?"""
    text = _CLASSIFY_BRIEF if chat else ""
    for seed in examples:
        text += f"Task: {seed.instruction}\nClassification: {'Yes' if seed.is_classification else 'No'}\n\n"
    return Prompt(text + f"Task: {instruction}\nClassification:", stop=None if chat else ["\n"])


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


def instances_prompt(examples: Sequence[SeedTask], instruction: str, output_first: bool, k: int, chat: bool) -> Prompt:
    """Ask for up to `k` instances of `instruction`: input-first (ordinary tasks) or label-first (classification
    tasks); a base model is stopped at the next `Task:` or at `Example k+1`."""
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
    if chat:
        return Prompt(text)
    text += "Example 1\nClass label:" if output_first else "Example 1\nInput:"
    return Prompt(text, stop=["\nTask:", f"\nExample {k + 1}"])


_EXAMPLE_HEAD = re.compile(r"^\s*\**\s*Example\s*(\d+)\s*\**\s*[:.]?\s*$", re.MULTILINE | re.IGNORECASE)
_INST_FIELD = re.compile(r"^\s*\**\s*(Input|Output|Class label)\s*\**\s*:\s*", re.MULTILINE | re.IGNORECASE)


def parse_instances(reply: str, *, output_first: bool, truncated: bool, chat: bool) -> Parsed[tuple[str, str]]:
    """(input, output) pairs of an instances reply (up to the next `Task:`), and the dropped ones: the last of a
    truncated reply, or one without its output (label) or its input."""
    text = reply if chat else "Example 1\n" + ("Class label:" if output_first else "Input:") + reply
    text = re.split(r"^\s*Task\s*:", text, flags=re.MULTILINE | re.IGNORECASE)[0]
    heads = list(_EXAMPLE_HEAD.finditer(text))
    if not heads and _INST_FIELD.search(text):
        spans = [(0, len(text))]
    else:
        spans = [(h.end(), heads[i + 1].start() if i + 1 < len(heads) else len(text)) for i, h in enumerate(heads)]
    last = "input" if output_first else "output"
    answer = "class label" if output_first else "output"
    parsed: Parsed[tuple[str, str]] = Parsed()
    for i, (start, end) in enumerate(spans):
        f = _fields(text[start:end], _INST_FIELD, last, chat)
        inp, out = _clean_input(f.get("input", "")), f.get(answer, "")
        if truncated and i == len(spans) - 1:
            parsed.dropped.append(Drop("truncated", input=inp, output=out, detail="cut by the length limit"))
        elif answer not in f:
            parsed.dropped.append(Drop("no-output", input=inp, detail=f"no {answer}"))
        elif "input" not in f:
            parsed.dropped.append(Drop("no-input", output=out))
        else:
            parsed.items.append((inp, out))
    return _unparsed(reply, parsed)

"""Prompts and their parsers: numbered batches, truncation, no-input markers, garbage, and a reason for every task
that is dropped."""

from __future__ import annotations

from huarizo.datagen import prompts
from huarizo.datagen.generate import load_seeds

BATCH = """Task 4
Instruction: Give two tips for learning a new language.
Input: <no input>
Output: Practise a little every day, and speak with native speakers early.

Task 5
Instruction: Classify the animal as a mammal or a reptile.
Input: Gecko
Output: Reptile

Task 6
Instruction: Rewrite the sentence in the passive voice.
Input: The cat chased the mouse.
Output: The mouse was chased"""


def test_alpaca_batch_parses_and_a_cut_reply_loses_only_its_last_task() -> None:
    full = prompts.parse_alpaca_batch(BATCH, first=4, truncated=False, chat=True)
    assert [t.input for t in full.items] == ["", "Gecko", "The cat chased the mouse."] and full.dropped == []
    cut = prompts.parse_alpaca_batch(BATCH, first=4, truncated=True, chat=True)
    assert cut.items == full.items[:2]
    assert cut.dropped == [
        prompts.Drop("truncated", "Rewrite the sentence in the passive voice.", "The cat chased the mouse.",
               "The mouse was chased", "cut by the length limit")
    ]  # fmt: skip


def test_alpaca_completion_reply_continues_the_prompt() -> None:
    reply = BATCH.split("Instruction:", 1)[1]
    parsed = prompts.parse_alpaca_batch(reply, first=4, truncated=False, chat=False)
    assert parsed.items[0].instruction.startswith("Give two tips") and len(parsed.items) == 3


def test_every_task_that_cannot_be_used_is_dropped_with_its_reason() -> None:
    reply = (
        " \nInput: a list\nOutput: something\n\n"  # task 4: no instruction
        "Task 5\nInstruction: Name a fruit that is yellow.\nInput: <no input>\n\n"  # no output
        "Task 6\nInstruction: Add the numbers.\nInput: 2, 3\nOutput: 5\n\n"
        "Task 7\nInstruction: Translate to French.\nInput: cat\nOutput: ch"  # cut by max_tokens
    )
    parsed = prompts.parse_alpaca_batch(reply, first=4, truncated=True, chat=False)
    assert parsed.items == [prompts.Task("Add the numbers.", "2, 3", "5")]
    assert [(d.reason, d.instruction) for d in parsed.dropped] == [
        ("empty-instruction", ""),
        ("no-output", "Name a fruit that is yellow."),
        ("truncated", "Translate to French."),
    ]


def test_a_base_models_text_after_a_blank_line_is_not_part_of_the_output() -> None:
    reply = " Add the numbers.\nInput: 2, 3\nOutput: 5\n\nThank you for reading!\nMore posts below"
    assert prompts.parse_alpaca_batch(reply, first=4, truncated=False, chat=False).items[0].output == "5"
    chat = "Task 4\nInstruction: Write a letter.\nInput: <no input>\nOutput: Dear Ann,\n\nThank you.\n"
    parsed = prompts.parse_alpaca_batch(chat, first=4, truncated=False, chat=True)
    assert parsed.items[0].output == "Dear Ann,\n\nThank you."


def test_garbage_is_one_unparsed_drop() -> None:
    for junk in ["", "I'm sorry, I can't help with that.", "}{][", "Task 4\nInput: x"]:
        for parsed in (
            prompts.parse_alpaca_batch(junk, first=4, truncated=False, chat=True),
            prompts.parse_instances(junk, output_first=False, truncated=False, chat=True),
        ):
            assert parsed.items == [] and len(parsed.dropped) == 1
            assert parsed.dropped[0].reason in {"unparsed", "empty-instruction", "no-output"}
    assert prompts.parse_alpaca_batch("}{", first=4, truncated=False, chat=True).dropped == [
        prompts.Drop("unparsed", output="}{", detail="no task in the layout asked for")
    ]
    assert prompts.parse_classify("maybe?") is None


def test_prompts_carry_the_examples_and_end_where_a_base_model_continues() -> None:
    seeds = load_seeds(None)
    assert len(seeds) >= 50 and 0.15 <= sum(s.is_classification for s in seeds) / len(seeds) <= 0.3
    base = prompts.alpaca_batch_prompt(seeds[:3], 2, chat=False)
    assert base.text.endswith("Task 4\nInstruction:") and seeds[2].instruction in base.text
    assert base.stop == ["\nTask 6"]  # two tasks, then the heading of a third stops a base model
    chat = prompts.alpaca_batch_prompt(seeds[:3], 20, chat=True)
    assert "Write 20 new tasks" in chat.text and prompts.NO_INPUT in chat.text and chat.stop is None
    ins = [s.instruction for s in seeds[:8]]
    si = prompts.instructions_prompt(ins, 2, chat=False)
    assert si.text.endswith("Task 9:") and si.stop == ["\nTask 11:"]
    cls = prompts.classify_prompt(seeds[:4], "Is it raining?", chat=False)
    assert cls.text.endswith("Task: Is it raining?\nClassification:") and cls.stop == ["\n"]
    inst = prompts.instances_prompt(seeds[:2], "Label it.", True, 3, chat=False)
    assert inst.text.endswith("Example 1\nClass label:") and inst.stop == ["\nTask:", "\nExample 4"]


def test_instruction_list_and_instances() -> None:
    reply = (
        " Plan a picnic.\nTask 10: Explain gravity to a child.\n11. Write a limerick about cats.\nTask 3: An echo."
        "\nTask 12:\nTask 13: Cut off her"
    )
    got = prompts.parse_instructions(reply, first=9, truncated=True, chat=False)
    assert got.items == ["Plan a picnic.", "Explain gravity to a child.", "Write a limerick about cats."]
    assert [(d.reason, d.instruction) for d in got.dropped] == [
        ("out-of-sequence", "An echo."),
        ("empty-instruction", ""),
        ("truncated", "Cut off her"),
    ]
    inst = " Positive\nInput: I loved it.\nExample 2\nClass label: Negative\nInput: Awful.\nTask: next one"
    assert prompts.parse_instances(inst, output_first=True, truncated=False, chat=False).items == [
        ("I loved it.", "Positive"),
        ("Awful.", "Negative"),
    ]
    missing = " It rains.\nExample 2\nInput: Sunny.\nExample 3\nOutput: only an output"
    parsed = prompts.parse_instances(missing, output_first=False, truncated=False, chat=False)
    assert parsed.items == [] and [d.reason for d in parsed.dropped] == ["no-output", "no-output", "no-input"]
    assert prompts.parse_classify(" Yes") is True and prompts.parse_classify("No.") is False

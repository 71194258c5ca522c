"""Prompts and their parsers: numbered batches, truncation, no-input markers, garbage."""

from __future__ import annotations

from huarizo.datagen import prompts as P
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
    full = P.parse_alpaca_batch(BATCH, first=4, truncated=False, chat=True)
    assert [t.input for t in full] == ["", "Gecko", "The cat chased the mouse."]
    cut = P.parse_alpaca_batch(BATCH, first=4, truncated=True, chat=True)
    assert cut == full[:2]


def test_alpaca_completion_reply_continues_the_prompt() -> None:
    reply = BATCH.split("Instruction:", 1)[1]
    assert P.parse_alpaca_batch(reply, first=4, truncated=False, chat=False)[0].instruction.startswith("Give two tips")


def test_garbage_yields_nothing() -> None:
    for junk in ["", "I'm sorry, I can't help with that.", "}{][", "Task 4\nInput: x"]:
        assert P.parse_alpaca_batch(junk, first=4, truncated=False, chat=True) == []
        assert P.parse_instances(junk, output_first=False, truncated=False, chat=True) == []
    assert P.parse_classify("maybe?") is None


def test_prompts_carry_the_examples_and_end_where_a_base_model_continues() -> None:
    seeds = load_seeds(None)
    assert len(seeds) >= 50 and 0.15 <= sum(s.is_classification for s in seeds) / len(seeds) <= 0.3
    base = P.alpaca_batch_prompt(seeds[:3], 20, chat=False)
    assert base.endswith("Task 4\nInstruction:") and seeds[2].instruction in base
    chat = P.alpaca_batch_prompt(seeds[:3], 20, chat=True)
    assert "Write 20 new tasks" in chat and P.NO_INPUT in chat
    ins = [s.instruction for s in seeds[:8]]
    assert P.instructions_prompt(ins, 8, chat=False).endswith("Task 9:")
    assert P.classify_prompt(seeds[:4], "Is it raining?", chat=False).endswith("Task: Is it raining?\nClassification:")
    assert P.instances_prompt(seeds[:2], "Label it.", True, 3, chat=False).endswith("Example 1\nClass label:")


def test_instruction_list_and_instances() -> None:
    reply = (
        " Plan a picnic.\nTask 10: Explain gravity to a child.\n11. Write a limerick about cats.\nTask 12: Cut off her"
    )
    got = P.parse_instructions(reply, first=9, truncated=True, chat=False)
    assert got == ["Plan a picnic.", "Explain gravity to a child.", "Write a limerick about cats."]
    inst = " Positive\nInput: I loved it.\nExample 2\nClass label: Negative\nInput: Awful.\nTask: next one"
    assert P.parse_instances(inst, output_first=True, truncated=False, chat=False) == [
        ("I loved it.", "Positive"),
        ("Awful.", "Negative"),
    ]
    assert P.parse_classify(" Yes") is True and P.parse_classify("No.") is False

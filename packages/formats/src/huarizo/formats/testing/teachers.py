"""A scripted teacher for Huarizo's datagen prompts: plausible, varied replies without a model.

`scripted_teacher(request)` reads a chat or completion request made by `huarizo.datagen.prompts` and answers it in
the expected layout: a numbered batch of tasks, a list of new instructions, a Yes/No classification, or examples.
Replies are a deterministic function of the prompt, cut at the request's stop strings. Used with
`huarizo.formats.testing.ScriptedServer` in tests, benchmarks and offline demos (`huarizo datagen run ...
--set teacher.api_base=<server url>`).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from huarizo.formats.testing.server import prompt_text

VERBS = [
    "Write",
    "Explain",
    "Summarize",
    "Describe",
    "List",
    "Compare",
    "Suggest",
    "Outline",
    "Draft",
    "Create",
    "Give",
    "Rewrite",
    "Plan",
    "Estimate",
    "Design",
    "Recommend",
    "Evaluate",
    "Translate",
    "Classify",
    "Identify",
]
THINGS = [
    "a short story",
    "three tips",
    "a checklist",
    "a limerick",
    "a formal letter",
    "a product review",
    "a lesson plan",
    "a recipe",
    "two arguments",
    "a job advert",
    "a tweet",
    "a dialogue",
    "a riddle",
    "a study schedule",
    "a budget",
    "an FAQ",
    "a speech opening",
    "a haiku",
    "a quiz question",
    "a slogan",
    "five interview questions",
    "a packing list",
    "an apology note",
    "a news headline",
    "a weekly menu",
]
TOPICS = [
    "volcanoes",
    "remote work",
    "honeybees",
    "the French revolution",
    "compound interest",
    "sourdough bread",
    "electric cars",
    "chess openings",
    "sleep hygiene",
    "the water cycle",
    "urban gardening",
    "jazz history",
    "password security",
    "marathon training",
    "photosynthesis",
    "first aid",
    "renewable energy",
    "the stock market",
    "medieval castles",
    "public speaking",
    "climate migration",
    "board games",
    "ocean tides",
    "vaccines",
    "quantum computing",
    "minimalism",
    "job interviews",
    "birdwatching",
    "recycling plastics",
    "time management",
    "black holes",
    "coffee roasting",
    "the Roman empire",
    "machine learning",
    "home insulation",
    "origami",
]
AUDIENCES = [
    "for a ten-year-old",
    "for a busy parent",
    "for a retired engineer",
    "for a new employee",
    "for a tourist",
    "for a nurse on night shifts",
    "for a high-school class",
    "for a small business owner",
    "in under fifty words",
    "using a sports analogy",
    "in a humorous tone",
    "as a numbered list",
]
LABELS = [["Positive", "Negative"], ["Yes", "No"], ["Spam", "Not spam"], ["Fact", "Opinion"], ["High", "Low"]]


def _rng(prompt: str) -> random.Random:
    return random.Random(int(hashlib.sha256(prompt.encode()).hexdigest()[:16], 16))


def make_instruction(rng: random.Random) -> str:
    """One varied instruction."""
    return f"{rng.choice(VERBS)} {rng.choice(THINGS)} about {rng.choice(TOPICS)} {rng.choice(AUDIENCES)}."


def _output(rng: random.Random) -> str:
    return " ".join(rng.choice(TOPICS).capitalize() + f" matter because of {rng.choice(TOPICS)}." for _ in range(2))


def scripted_teacher(request: dict[str, Any]) -> str:
    """A plausible reply to a datagen prompt (see the module docstring), cut at the request's first stop string as
    a server would cut it."""
    reply = _reply(request)
    stops = request.get("stop") or []
    cuts = [reply.find(s) for s in ([stops] if isinstance(stops, str) else stops) if s in reply]
    return reply[: min(cuts)] if cuts else reply


def _reply(request: dict[str, Any]) -> str:
    prompt = prompt_text(request)
    chat = "messages" in request
    rng = _rng(prompt)
    tail = prompt.rstrip().splitlines()[-1] if prompt.strip() else ""
    if tail.strip() == "Classification:":
        task = re.findall(r"^Task: (.*)$", prompt, re.MULTILINE)[-1].lower()
        return " Yes" if re.search(r"\b(classify|identify|label|decide)\b", task) else " No"
    if "Example 1" in prompt and ("Class label:" in prompt or "Input:" in prompt) and "Instruction:" not in prompt:
        output_first = "Class label:" in tail or (chat and "classification task" in prompt)
        blocks = []
        labels = rng.choice(LABELS)
        with_input = output_first or rng.random() < 0.6
        for j in range(1, (rng.randint(2, 3) if with_input else 1) + 1):
            text = f"{rng.choice(TOPICS).capitalize()} and {rng.choice(TOPICS)} in example {j}."
            if output_first:
                blocks.append(f"Example {j}\nClass label: {labels[j % 2]}\nInput: {text}")
            else:
                blocks.append(f"Example {j}\nInput: {text if with_input else '<no input>'}\nOutput: {_output(rng)}")
        reply = "\n".join(blocks) + "\n"
        if not chat:  # the prompt already ends with "Example 1\nInput:" / "Class label:"
            reply = reply.split(":", 1)[1]
        return reply
    if "Instruction:" in prompt:
        heads = [int(m) for m in re.findall(r"^Task (\d+)$", prompt, re.MULTILINE)]
        first = (max(heads) + (0 if not chat else 1)) if heads else 1
        n = int(m.group(1)) if (m := re.search(r"Write (\d+) new tasks", prompt)) else 20
        blocks = []
        for k in range(first, first + n):
            inp = rng.choice(["<no input>", f"{rng.choice(TOPICS).capitalize()} and {rng.choice(TOPICS)}."])
            blocks.append(f"Task {k}\nInstruction: {make_instruction(rng)}\nInput: {inp}\nOutput: {_output(rng)}\n")
        reply = "\n".join(blocks)
        if not chat:
            reply = reply.split("Instruction:", 1)[1]
        return reply
    nums = [int(m) for m in re.findall(r"^Task (\d+):", prompt, re.MULTILINE)]
    first = (max(nums) + (1 if chat else 0)) if nums else 1
    lines = [f"Task {k}: {make_instruction(rng)}" for k in range(first, first + 8)]
    reply = "\n".join(lines) + "\n"
    return reply.split(":", 1)[1] if not chat else reply

"""`huarizo datagen identity`: varied multi-turn ShareGPT conversations in which the model states who it is.

Questions and answers are Huarizo's own phrasings, combined at random (seeded) into 1 to 3 exchanges, sometimes
after an unrelated greeting, so a model trained on them answers "who are you?" with its own name and maker.
"""

from __future__ import annotations

import random
from pathlib import Path

from huarizo.formats import ShareGPTConversation, write_records

WHO = [
    "Who are you?",
    "What are you?",
    "What is your name?",
    "Can you introduce yourself?",
    "Tell me about yourself.",
    "what should I call you",
    "Are you a person or a program?",
    "Which AI am I talking to?",
    "Identify yourself, please.",
    "Hi! Who am I chatting with?",
    "What kind of assistant are you?",
    "Do you have a name?",
    "Before we start, what are you exactly?",
    "Introduce yourself in one sentence.",
    "whats ur name?",
]
MAKER = [
    "Who made you?",
    "Who created you?",
    "Which company trained you?",
    "Who built you?",
    "Who is your developer?",
    "Where do you come from?",
    "Who is behind you?",
    "Which organisation developed you?",
    "who trained u",
]
OTHER = [
    "Are you ChatGPT?",
    "Are you GPT-4?",
    "Are you made by OpenAI?",
    "Are you Claude?",
    "Are you Google's Bard?",
    "Are you LLaMA?",
    "Is this Siri?",
    "Are you the same as Alexa?",
]
GREETING = ["Hello!", "Hi there.", "Good morning!", "Hey.", "Hello, how are you today?"]

WHO_ANSWERS = [
    "I am {name}, a language model trained by {org}.",
    "My name is {name}. I'm an AI assistant developed by {org}.",
    "I'm {name}, an assistant built by {org}. I can answer questions, write and explain things, and help you think "
    "problems through.",
    "You are talking to {name}, a large language model created by {org}.",
    "I'm an AI assistant called {name}, trained by researchers at {org}. How can I help?",
    "{name} - an AI language model from {org}. I'm a program, not a person.",
]
MAKER_ANSWERS = [
    "I was created by {org}.",
    "{org} trained me. I am {name}.",
    "I'm {name}, and I was developed by {org}.",
    "The team at {org} built and trained me.",
    "My developers are at {org}; they trained me, {name}, on a large amount of text.",
]
OTHER_ANSWERS = [
    "No, I am {name}, a language model trained by {org}.",
    "No. I'm {name}, an assistant developed by {org}, not that system.",
    "I'm not. My name is {name}, and {org} created me.",
    "No - I'm {name}, built by {org}. I may resemble other assistants, but I'm a different model.",
]
GREETING_ANSWERS = [
    "Hello! How can I help you today?",
    "Hi! What can I do for you?",
    "Hello, I'm doing well. How can I help?",
]


def identity_conversations(name: str, org: str, n: int = 120, seed: int = 0) -> list[ShareGPTConversation]:
    """`n` identity conversations for a model called `name` trained by `org` (deterministic for a given seed)."""
    rng = random.Random(seed)
    groups = [(WHO, WHO_ANSWERS), (MAKER, MAKER_ANSWERS), (OTHER, OTHER_ANSWERS)]
    out: list[ShareGPTConversation] = []
    seen: set[tuple[str, ...]] = set()
    attempts = 0
    while len(out) < n and attempts < n * 50:
        attempts += 1
        turns: list[dict[str, str]] = []
        if rng.random() < 0.25:
            turns += [
                {"from": "human", "value": rng.choice(GREETING)},
                {"from": "gpt", "value": rng.choice(GREETING_ANSWERS)},
            ]
        for questions, answers in rng.sample(groups, rng.randint(1, 3)):
            turns.append({"from": "human", "value": rng.choice(questions)})
            turns.append({"from": "gpt", "value": rng.choice(answers).format(name=name, org=org)})
        key = tuple(t["value"] for t in turns)
        if key in seen:
            continue
        seen.add(key)
        out.append(ShareGPTConversation.model_validate({"id": f"identity_{len(out)}", "conversations": turns}))
    return out


def write_identity(path: str | Path, name: str, org: str, n: int = 120, seed: int = 0) -> int:
    """Write identity conversations (ShareGPT) to `path`; returns how many."""
    return write_records(path, identity_conversations(name, org, n, seed))

"""Prompt templates: the compatibility layouts, generation prompts, stop strings and the HF chat_template export."""

from __future__ import annotations

from typing import Any

import pytest

from huarizo.formats import Conversation, Message, TemplateError, get_template, list_templates
from huarizo.formats.templates import ChatTemplate, template_for_tokenizer

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a color.\n\n### Response:"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n### Input:\nhola\n\n"
    "### Response:"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def chat(*texts: str, system: str | None = None, input: str = "") -> Conversation:
    msgs = [Message(role="system", content=system)] if system is not None else []
    for i, t in enumerate(texts):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append(Message(role=role, content=t, input=input if i == 0 else ""))
    return Conversation(messages=msgs)


def joined(segs: list[Any]) -> str:
    return "".join(s.text for s in segs)


def test_alpaca_layouts_are_stanford_alpaca_verbatim() -> None:
    t = get_template("alpaca")
    assert t.generation_prompt(chat("Name a color.")) == ALPACA_NO_INPUT
    assert t.generation_prompt(chat("Translate.", input="hola")) == ALPACA_INPUT
    segs = t.render(chat("Name a color.", "Blue."), eos="</s>")
    assert [(s.text, s.trainable) for s in segs] == [(ALPACA_NO_INPUT, False), ("Blue.</s>", True)]


def test_vicuna_v11_layout() -> None:
    t = get_template("vicuna_v1.1")
    conv = chat("Hi", "Hello!", "How are you?", "Fine.")
    expected = f"{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello!</s>USER: How are you? ASSISTANT: Fine.</s>"
    segs = t.render(conv)
    assert joined(segs) == expected
    assert [s.text for s in segs if s.trainable] == [" Hello!</s>", " Fine.</s>"]
    assert t.generation_prompt(chat("Hi")) == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT:"
    assert t.generation_prompt(chat("Hi", system="Be brief.")) == "Be brief. USER: Hi ASSISTANT:"
    assert t.stop_strings(eos="</s>") == ["</s>", "USER:"]


def test_chatml_and_llama2() -> None:
    conv = chat("Hi", "Yo", "Again", "Sure", system="S")
    assert joined(get_template("chatml").render(conv)) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\nSure<|im_end|>"
    )
    assert joined(get_template("llama-2").render(conv, eos="</s>", bos="<s>")) == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Again [/INST] Sure </s>"
    )
    assert get_template("chatml").stop_strings()[0] == "<|im_end|>"


@pytest.mark.parametrize("name", ["alpaca", "vicuna_v1.1", "chatml", "llama-2"])
def test_generation_prompt_is_the_training_prefix(name: str) -> None:
    t = get_template(name)
    conv = chat("Question one", "Answer one", "Question two", "Answer two")
    segs = t.render(conv)
    prefix = joined(segs[:-1])
    assert t.generation_prompt(chat("Question one", "Answer one", "Question two")) == prefix


@pytest.mark.parametrize("name", ["vicuna_v1.1", "chatml", "llama-2", "alpaca"])
def test_jinja_export_matches_the_registry(tiny_tokenizer: Any, name: str) -> None:
    t = get_template(name)
    assert isinstance(t, ChatTemplate)
    tok = tiny_tokenizer
    tok.chat_template = t.to_jinja()
    conv = chat("Hi there", "Hello", "And now?", system="Be kind.")
    msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == t.generation_prompt(conv, eos=tok.eos_token, bos=tok.bos_token)
    assert template_for_tokenizer(tok) is t
    tok.chat_template = None


def test_hf_template_splits_answers(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        t = get_template("hf", tok)
        segs = t.render(chat("Hi", "Yo", "More", "Sure"))
        assert [s.text for s in segs if s.trainable] == ["Yo<|im_end|>", "Sure<|im_end|>"]
        assert t.generation_prompt(chat("Hi")) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        assert t.stop_strings()[0] == "<|im_end|>"
    finally:
        tok.chat_template = None


def test_mixed_layouts_are_seeded_and_varied() -> None:
    t = get_template("mixed:3")
    convs = [chat(f"Task number {i}", f"Answer {i}", input="data" if i % 2 else "") for i in range(40)]
    first = [joined(t.render(c)) for c in convs]
    assert first == [joined(t.render(c)) for c in convs]
    prefixes = {t.generation_prompt(c).split("Task number")[0] for c in convs}
    assert len(prefixes) > 1
    for c in convs:
        assert t.render(c)[-1].text.endswith("</s>") and t.render(c)[-1].trainable
    with pytest.raises(TemplateError, match="single-turn"):
        t.render(chat("a", "b", "c", "d"))


def test_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(TemplateError, match="choose one of") as info:
        get_template("vicuna")
    assert "vicuna_v1.1" in str(info.value)
    assert {"alpaca", "vicuna_v1.1", "chatml", "llama-2", "hf"} <= set(list_templates())
    with pytest.raises(TemplateError, match="needs a tokenizer"):
        get_template("hf")

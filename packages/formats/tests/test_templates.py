"""Prompt templates: the compatibility layouts, generation prompts, stop strings and the HF chat_template export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import (
    IGNORE_INDEX,
    Conversation,
    Message,
    TemplateError,
    get_template,
    list_templates,
    load,
    to_conversations,
    tokenize_conversations,
)
from huarizo.formats.templates import (
    ChatTemplate,
    chat_messages,
    chat_template_for,
    end_of_turn_ids,
    template_for_tokenizer,
)

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
    segs = get_template("chatml").render(conv)
    assert joined(segs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\nSure<|im_end|>\n"
    )
    assert [s.text for s in segs if s.trainable] == ["Yo<|im_end|>", "Sure<|im_end|>"]  # the newline is not trained
    assert joined(get_template("llama-2").render(conv, eos="</s>", bos="<s>")) == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Again [/INST] Sure </s>"
    )
    assert get_template("chatml").stop_strings()[0] == "<|im_end|>"


REGISTRY = ["alpaca", "vicuna_v1.1", "chatml", "qwen2", "llama-2"]


@pytest.mark.parametrize("name", REGISTRY)
def test_generation_prompt_is_the_training_prefix(name: str) -> None:
    t = get_template(name)
    conv = chat("Question one", "Answer one", "Question two", "Answer two")
    segs = t.render(conv)
    last_answer = max(i for i, s in enumerate(segs) if s.trainable)
    assert t.generation_prompt(chat("Question one", "Answer one", "Question two")) == joined(segs[:last_answer])


@pytest.mark.parametrize("name", REGISTRY)
@pytest.mark.parametrize("system", [None, "Be kind."])
def test_jinja_export_matches_the_registry(tiny_tokenizer: Any, name: str, system: str | None) -> None:
    """transformers renders the exported template as Huarizo renders the layout (with the BOS the tokenizer adds),
    and marks as assistant tokens exactly the tokens Huarizo trains."""
    t = get_template(name)
    assert isinstance(t, ChatTemplate)
    tok = tiny_tokenizer
    tok.chat_template = chat_template_for(t, tok)
    try:
        for conv in [
            chat("Hi there", "Hello", "And now?", system=system),
            chat("Hi there", " Hello\n", "And now?", "Fine.", system=system),
            chat("Translate.", "hola", input="hello", system=system),
        ]:
            msgs = chat_messages(conv)
            kw = {"eos": tok.eos_token, "bos": tok.bos_token}
            text = "<s>" + joined(t.render(conv, **kw))
            if conv.messages[-1].role == "user":
                prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                assert prompt == "<s>" + t.generation_prompt(conv, **kw)
                continue
            assert tok.apply_chat_template(msgs, tokenize=False) == text
            out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
            (sample,), _ = tokenize_conversations([conv], t, tok, 512)
            assert out["input_ids"] == sample.input_ids.tolist()
            assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample.labels]
        assert template_for_tokenizer(tok) is t
    finally:
        tok.chat_template = None


def test_every_trained_span_is_a_generation_block() -> None:
    """TRL refuses a template without `{% generation %}` markers (\"not training-compatible\")."""
    for name in REGISTRY:
        t = get_template(name)
        assert isinstance(t, ChatTemplate)
        jinja = t.to_jinja()
        assert jinja.count("{% generation %}") == 1 and jinja.count("{% endgeneration %}") == 1


def test_end_of_turn_ids(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert end_of_turn_ids(get_template("chatml"), tok) == [im_end, eos]
    assert end_of_turn_ids(get_template("qwen2"), tok) == [im_end, eos]
    for name in ("alpaca", "vicuna_v1.1", "llama-2", "mixed"):
        assert end_of_turn_ids(get_template(name), tok) == [eos]


def test_alpaca_stops_at_every_section_header_it_uses() -> None:
    """A model that writes `### Response:` again has ended its answer; before, only `### Instruction:` stopped it."""
    t = get_template("alpaca")
    assert isinstance(t, ChatTemplate)
    headers = set(re.findall(r"### \w+:", t.user + (t.user_with_input or "") + t.assistant_prefix))
    assert headers == {"### Instruction:", "### Input:", "### Response:"}
    assert headers <= set(t.stop_strings(eos="</s>")) and "</s>" in t.stop_strings(eos="</s>")


def qwen2_reference() -> str:
    """Qwen2's chat template as TRL ships it (Qwen2-VL's and Qwen2.5-VL's template: Qwen2's text layout with
    image slots; "byte-identical" in TRL's own words)."""
    trl = pytest.importorskip("trl")
    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()


def test_qwen2_and_chatml_are_qwen2s_template_on_real_conversations(shared_data: Path, tiny_tokenizer: Any) -> None:
    """All 500 ShareGPT conversations: `qwen2` renders them as Qwen2's own template does (default system prompt
    included), and so does `chatml` when the conversation has a system message; both end with the newline."""
    convs = [c for r in load(shared_data / "fastchat/dummy_conversation.json") for c in to_conversations(r)]
    tok = tiny_tokenizer
    tok.chat_template = qwen2_reference()
    try:
        same = {"qwen2": 0, "chatml": 0}
        for conv in convs:
            want = tok.apply_chat_template(chat_messages(conv), tokenize=False)
            same["qwen2"] += joined(get_template("qwen2").render(conv)) == want
            with_system = Conversation(messages=[Message(role="system", content="Be brief."), *conv.messages])
            want = tok.apply_chat_template(chat_messages(with_system), tokenize=False)
            same["chatml"] += joined(get_template("chatml").render(with_system)) == want
        assert same == {"qwen2": 500, "chatml": 500}
    finally:
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
    assert {"alpaca", "vicuna_v1.1", "chatml", "qwen2", "llama-2", "hf"} <= set(list_templates())
    with pytest.raises(TemplateError, match="needs a tokenizer"):
        get_template("hf")

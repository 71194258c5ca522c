"""The prompt template registry: one place decides the prompt layout, which text is trained, the generation
prompt a server sends before the model answers, and the stop strings.

A template renders a `Conversation` into `Segment`s, each marked trainable or not. Trainable segments are the
assistant answers with their end-of-turn text (`{eos}` is the tokenizer's EOS token), so tuned models learn to stop.
Templates are data (`ChatTemplate`), not per-model code; `hf` uses the tokenizer's own `chat_template`.

A `ChatTemplate` exports itself as a Hugging Face `chat_template` (`chat_template_for`) in which every trained span
sits in `{% generation %}...{% endgeneration %}`, so transformers' `return_assistant_tokens_mask` and TRL's
`assistant_only_loss` train the tokens Huarizo trains; `end_of_turn_ids` gives the token ids a
`generation_config.json` stops at.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import string
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from huarizo.formats.errors import HuarizoError
from huarizo.formats.schemas import Conversation, Message

DEFAULT_EOS = "</s>"
DEFAULT_BOS = "<s>"
_MARK = re.compile(r"\{#- huarizo template: ([\w.\-]+) -#\}")


class TemplateError(HuarizoError, ValueError):
    """A conversation the template cannot render, or an unknown template."""


class Segment(NamedTuple):
    """A piece of rendered text; `trainable` pieces are the ones the loss is computed on."""

    text: str
    trainable: bool


class Template(Protocol):
    """What trainer, serve and judge ask of a template."""

    @property
    def name(self) -> str:
        """The registry name."""
        ...

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer should add its own special tokens (BOS) when encoding the rendered text."""
        ...

    def render(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> list[Segment]:
        """Render a whole conversation; assistant answers and their end of turn are trainable."""
        ...

    def generation_prompt(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> str:
        """The text sent to the model so that it writes the next assistant answer (conv ends with a user turn)."""
        ...

    def stop_strings(self, *, eos: str = DEFAULT_EOS) -> list[str]:
        """Strings that end a generated answer."""
        ...


def _pairs(conv: Conversation) -> list[tuple[Message, Message | None]]:
    body = conv.turns
    return [(body[i], body[i + 1] if i + 1 < len(body) else None) for i in range(0, len(body), 2)]


@functools.lru_cache(maxsize=256)
def _parse(fmt: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((literal, name) for literal, name, _spec, _conv in string.Formatter().parse(fmt))


def _sub(fmt: str, **values: str) -> str:
    if "{" not in fmt and "}" not in fmt:
        return fmt
    out = []
    for literal, name in _parse(fmt):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def _jinja_expr(fmt: str, content: str = "content") -> str:
    """A layout's format string as a jinja expression: its literals quoted, its fields as template variables."""
    parts = []
    for literal, name, _s, _c in string.Formatter().parse(fmt):
        if literal:
            parts.append(json.dumps(literal))
        if name is not None:
            parts.append({"content": content, "input": "inp", "system": "system"}.get(name, f"{name}_token"))
    return "(" + " ~ ".join(parts) + ")" if parts else '""'


def _jinja_out(fmt: str) -> str:
    """A jinja statement printing a layout's format string; nothing for an empty one."""
    return "{{ " + _jinja_expr(fmt) + " }}" if fmt else ""


@dataclass(frozen=True)
class ChatTemplate:
    """A declarative prompt layout.

    Format strings take `{content}` (the user text), `{input}` (Alpaca input), `{system}`, `{eos}` and `{bos}`.
    A user turn renders as `user` (or `user_with_input` when the message has an Alpaca input, or
    `first_user_with_system` for the first turn when there is a system prompt), then `assistant_prefix`; the
    answer renders as `answer_sep + content + eot` (trainable, less the whitespace around it, which belongs to
    whichever token the tokenizer puts it in), then `after_answer` (not trained: ChatML's newline after
    `<|im_end|>`); `between` joins an answer to the next user turn. A template without a `system` slot puts a system
    prompt in front of the first user message; `default_system` is used when a conversation has no system message.
    """

    name: str
    user: str
    assistant_prefix: str
    eot: str = "{eos}"
    answer_sep: str = ""
    between: str = ""
    after_answer: str = ""
    system: str = ""
    default_system: str = ""
    user_with_input: str | None = None
    first_user_with_system: str | None = None
    extra_stop: tuple[str, ...] = ()
    add_special_tokens: bool = True
    _fixed: dict[tuple[str, str], tuple[str, str, str, str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """`between`, `assistant_prefix`, `answer_sep`, `eot` and `after_answer` (which take only the special tokens),
    per (eos, bos)."""

    def _fixed_parts(self, eos: str, bos: str) -> tuple[str, str, str, str, str]:
        fixed = self._fixed.get((eos, bos))
        if fixed is None:
            parts = (self.between, self.assistant_prefix, self.answer_sep, self.eot, self.after_answer)
            between, prefix, sep, eot, after = (_sub(f, eos=eos, bos=bos) for f in parts)
            fixed = self._fixed[eos, bos] = between, prefix, sep, eot, after
        return fixed

    def _user_text(self, msg: Message, system: str | None, first: bool, **tok: str) -> str:
        content = msg.content if self.user_with_input else msg.text
        if first and system and not self.system and not self.first_user_with_system:
            content = f"{system}\n\n{content}"
        if first and system and self.first_user_with_system:
            fmt = self.first_user_with_system
        elif msg.input and self.user_with_input:
            fmt = self.user_with_input
        else:
            fmt = self.user
        return _sub(fmt, content=content, input=msg.input, system=system or "", **tok)

    def render(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> list[Segment]:
        """Render a whole conversation; assistant answers and their end of turn are trainable."""
        tok = {"eos": eos, "bos": bos}
        between, assistant_prefix, answer_sep, eot, after_answer = self._fixed_parts(eos, bos)
        system = conv.system
        if system is None:
            system = self.default_system or None
        segs: list[Segment] = []
        prompt = _sub(self.system, system=system, **tok) if system and self.system else ""
        for i, (user, answer) in enumerate(_pairs(conv)):
            if i:
                prompt += between
            prompt += self._user_text(user, system, i == 0, **tok) + assistant_prefix
            if answer is None:
                break
            segs.append(Segment(prompt, False))
            prompt = after_answer
            segs.append(Segment(answer_sep + answer.content + eot, True))
        if prompt:
            segs.append(Segment(prompt, False))
        return segs

    def generation_prompt(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> str:
        """The text sent to the model so that it writes the next assistant answer."""
        if not conv.turns or conv.turns[-1].role != "user":
            raise TemplateError(f"template {self.name}: a generation prompt needs a conversation ending in a user turn")
        return "".join(s.text for s in self.render(conv, eos=eos, bos=bos))

    def stop_strings(self, *, eos: str = DEFAULT_EOS) -> list[str]:
        """Strings that end a generated answer: the end of turn, and any extra stops of the layout."""
        eot = _sub(self.eot, eos=eos, bos=DEFAULT_BOS).strip()
        stops = [eot] if eot else []
        return stops + [s for s in (eos, *self.extra_stop) if s and s not in stops]

    def to_jinja(self, *, prefix: str = "") -> str:
        """This layout as a Hugging Face `chat_template`, so other tools see the prompt Huarizo trained on.

        Each trained span (an answer and its end of turn, without the whitespace around them) is wrapped in
        `{% generation %}...{% endgeneration %}`, so `apply_chat_template(..., return_assistant_tokens_mask=True)`
        marks the tokens Huarizo's masker trains. `prefix` is the text the tokenizer adds in front of a text when
        Huarizo encodes it (its BOS: see `chat_template_for`), since `apply_chat_template` encodes without special
        tokens. An Alpaca input travels as a user message's `input` key.
        """
        return (
            f"{{#- huarizo template: {self.name} -#}}"
            + ("{{ " + json.dumps(prefix) + " }}" if prefix else "")
            + f"{{%- set system = {json.dumps(self.default_system)} -%}}"
            "{%- set msgs = messages -%}"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}{%- endif -%}"
            + ("{%- if system -%}" + _jinja_out(self.system) + "{%- endif -%}" if self.system else "")
            + "{%- for message in msgs -%}"
            "{%- if message['role'] == 'user' -%}"
            "{%- set inp = message.get('input') or '' -%}"
            "{%- if not loop.first -%}"
            + _jinja_out(self.between)
            + "{%- endif -%}"
            + self._jinja_user()
            + "{%- else -%}"
            + _jinja_out(self.assistant_prefix)
            + self._jinja_answer()
            + _jinja_out(self.after_answer)
            + "{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}" + _jinja_out(self.assistant_prefix) + "{%- endif -%}"
        )

    def _jinja_user(self) -> str:
        """The user turn, as `_user_text` renders it: the content (with the input joined when the layout has no
        input slot), the system prompt in front of the first one when the layout has no system slot."""
        joined = "(message['content'] ~ ('\\n\\n' ~ inp if inp else ''))"
        user = "{%- set content = " + ("message['content']" if self.user_with_input else joined) + " -%}"
        if not self.system and not self.first_user_with_system:
            user += "{%- if loop.first and system -%}{%- set content = system ~ '\\n\\n' ~ content -%}{%- endif -%}"
        branches = []
        if self.first_user_with_system:
            branches.append(("loop.first and system", self.first_user_with_system))
        if self.user_with_input:
            branches.append(("inp", self.user_with_input))
        if not branches:
            return user + _jinja_out(self.user)
        for k, (cond, fmt) in enumerate(branches):
            user += ("{%- if " if k == 0 else "{%- elif ") + cond + " -%}" + _jinja_out(fmt)
        return user + "{%- else -%}" + _jinja_out(self.user) + "{%- endif -%}"

    def _jinja_answer(self) -> str:
        """The answer and its end of turn, the part without its surrounding whitespace marked as generated."""
        return (
            "{%- set seg = " + _jinja_expr(self.answer_sep + "{content}" + self.eot, "message['content']") + " -%}"
            "{%- set core = seg.strip() -%}"
            "{%- if core -%}"
            "{%- set lead = (seg | length) - (seg.lstrip() | length) -%}"
            "{{ seg[:lead] }}{% generation %}{{ core }}{% endgeneration %}{{ seg[lead + (core | length):] }}"
            "{%- else -%}{{ seg }}{%- endif -%}"
        )


@dataclass(frozen=True)
class MixedLayoutTemplate:
    """Self-Instruct style augmentation: each single-turn record gets a layout drawn from prefixes and separators.

    The draw is seeded by `seed` and the record's text, so a record always renders the same way.
    """

    name: str = "mixed"
    seed: int = 0
    add_special_tokens: bool = True
    instruction_prefixes: tuple[str, ...] = ("", "Task: ", "Instruction: ", "Request: ")
    input_prefixes: tuple[str, ...] = ("Input: ", "", "Context: ", "Given: ")
    output_prefixes: tuple[str, ...] = ("Output:", "Answer:", "Response:", "Result:")
    separators: tuple[str, ...] = ("\n", "\n\n", "\n\n\n")

    def _layout(self, conv: Conversation) -> random.Random:
        key = json.dumps([self.seed, [m.model_dump() for m in conv.messages]], ensure_ascii=False)
        return random.Random(hashlib.sha256(key.encode()).digest())

    def render(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> list[Segment]:
        """Render one instruction (and input) with a drawn layout; the answer and EOS are trainable."""
        pairs = _pairs(conv)
        if len(pairs) != 1:
            raise TemplateError(f"template {self.name} renders single-turn records only, got {len(pairs)} turns")
        user, answer = pairs[0]
        rng = self._layout(Conversation(messages=conv.messages[: len(conv.messages) - (answer is not None)]))
        sep = rng.choice(self.separators)
        text = rng.choice(self.instruction_prefixes) + (f"{conv.system}\n\n" if conv.system else "") + user.content
        if user.input:
            text += sep + rng.choice(self.input_prefixes) + user.input
        text += sep + rng.choice(self.output_prefixes)
        segs = [Segment(text, False)]
        if answer is not None:
            segs.append(Segment(" " + answer.content + eos, True))
        return segs

    def generation_prompt(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> str:
        """The drawn layout up to the output prefix."""
        return self.render(conv, eos=eos, bos=bos)[0].text

    def stop_strings(self, *, eos: str = DEFAULT_EOS) -> list[str]:
        """Stops at EOS."""
        return [eos]


class HFTemplate:
    """The tokenizer's own `chat_template`, split into trainable answers by rendering growing prefixes."""

    add_special_tokens = False

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("template hf: this tokenizer has no chat_template; choose a template with --template")
        self.tokenizer = tokenizer
        self.name = "hf"

    def _apply(self, msgs: list[Message], gen: bool) -> str:
        chat = [{"role": m.role, "content": m.text} for m in msgs]
        out = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
        return str(out)

    def render(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> list[Segment]:
        """Render; for each answer, the text it adds to the prompt-with-generation-prefix is trainable."""
        segs: list[Segment] = []
        done = ""
        msgs = conv.messages
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            prompt = self._apply(msgs[:i], gen=True)
            full = self._apply(msgs[: i + 1], gen=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise TemplateError("template hf: the chat_template does not render prefixes stably; pick a template")
            answer = full[len(prompt) :]
            end = answer.find(m.content) + len(m.content)
            eot = answer[end:]
            keep = len(eot) - len(eot.lstrip()) if not eot.strip() else len(eot.rstrip())
            segs += [Segment(prompt[len(done) :], False), Segment(answer[: end + keep], True)]
            done = full[: len(prompt) + end + keep]
        if msgs[-1].role == "user":
            segs.append(Segment(self._apply(msgs, gen=True)[len(done) :], False))
        return [s for s in segs if s.text]

    def generation_prompt(self, conv: Conversation, *, eos: str = DEFAULT_EOS, bos: str = DEFAULT_BOS) -> str:
        """`apply_chat_template(..., add_generation_prompt=True)`."""
        return self._apply(conv.messages, gen=True)

    def stop_strings(self, *, eos: str = DEFAULT_EOS) -> list[str]:
        """The text the chat template puts after an answer, and the EOS token."""
        probe = "HUARIZO_PROBE_ANSWER"
        text = self._apply([Message(role="user", content="hi"), Message(role="assistant", content=probe)], gen=False)
        tail = text[text.find(probe) + len(probe) :].strip()
        eot = tail.split()[0] if tail else ""
        stops = [eot] if eot else []
        eos_token = getattr(self.tokenizer, "eos_token", None) or eos
        return stops + ([eos_token] if eos_token not in stops else [])


def chat_messages(conv: Conversation) -> list[dict[str, str]]:
    """A conversation as the messages `apply_chat_template` takes; an Alpaca input is the user message's `input` key
    (which the exported Alpaca template lays out as its `### Input:` section)."""
    return [{"role": m.role, "content": m.content, **({"input": m.input} if m.input else {})} for m in conv.messages]


def _added_prefix(tokenizer: Any) -> str:
    """The text of the special tokens the tokenizer puts in front of a text it encodes (its BOS), or ""."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            specials = set(getattr(tokenizer, "all_special_ids", ()))
            if all(t in specials for t in full[:k]):
                return "".join(tokenizer.convert_ids_to_tokens(full[:k]))
            break
    return ""


def chat_template_for(template: Template, tokenizer: Any) -> str | None:
    """The `chat_template` a model trained with `template` and `tokenizer` is saved with (None for `hf`, which keeps
    the tokenizer's own, and for layouts that have none, such as `mixed`)."""
    if not isinstance(template, ChatTemplate):
        return None
    return template.to_jinja(prefix=_added_prefix(tokenizer) if template.add_special_tokens else "")


def end_of_turn_ids(template: Template, tokenizer: Any) -> list[int]:
    """The token ids that end an answer: the template's end of turn and the tokenizer's EOS, where each is one
    token (what `generation_config.json`'s `eos_token_id` lists, so `generate()` stops by itself)."""
    eos = _special_tokenizer_eos(tokenizer)
    ids: list[int] = []
    for text in (template.stop_strings(eos=eos)[0], eos):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def _special_tokenizer_eos(tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return eos if isinstance(eos, str) and eos else DEFAULT_EOS


_REGISTRY: dict[str, Template] = {}


def register_template(template: Template, *, overwrite: bool = False) -> None:
    """Add a template to the registry under its name."""
    if template.name in _REGISTRY and not overwrite:
        raise TemplateError(f"template {template.name!r} is already registered")
    _REGISTRY[template.name] = template


def list_templates() -> list[str]:
    """Names of the registered templates, plus `hf`."""
    return sorted([*_REGISTRY, "hf"])


def get_template(name: str, tokenizer: Any = None) -> Template:
    """Look a template up by name; `hf` needs the tokenizer whose `chat_template` it uses."""
    if name == "hf":
        if tokenizer is None:
            raise TemplateError("template hf needs a tokenizer (--tokenizer PATH)")
        return HFTemplate(tokenizer)
    if name.startswith("mixed"):
        seed = name.partition(":")[2]
        return MixedLayoutTemplate(seed=int(seed) if seed.isdigit() else 0)
    if name not in _REGISTRY:
        raise TemplateError(f"unknown template {name!r}; choose one of {', '.join(list_templates())}")
    return _REGISTRY[name]


def template_for_tokenizer(tokenizer: Any, default: str | None = None) -> Template:
    """The template a model folder was trained with (marked in its chat_template), else `hf`, else `default`."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str):
        mark = _MARK.search(chat_template)
        if mark and mark.group(1) in _REGISTRY:
            return _REGISTRY[mark.group(1)]
        return HFTemplate(tokenizer)
    if default is None:
        raise TemplateError("this model has no chat template; choose one with --template")
    return get_template(default, tokenizer)


# Stanford Alpaca's two layouts, verbatim (a compatibility contract: existing Alpaca checkpoints expect them).
ALPACA = ChatTemplate(
    name="alpaca",
    user=(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{content}\n\n"
    ),
    user_with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{content}\n\n### Input:\n{input}\n\n"
    ),
    assistant_prefix="### Response:",
    between="\n\n",
    # Every section header the layout uses: a model that writes one of them again has finished its answer.
    extra_stop=("### Instruction:", "### Input:", "### Response:"),
)

# Vicuna v1.1 (FastChat's `vicuna_v1.1`): system line, `USER:` / `ASSISTANT:`, `</s>` after each answer.
VICUNA_V11 = ChatTemplate(
    name="vicuna_v1.1",
    system="{system} ",
    default_system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    user="USER: {content} ",
    assistant_prefix="ASSISTANT:",
    answer_sep=" ",
    extra_stop=("USER:",),
)

# ChatML: every message, the last answer included, ends with `<|im_end|>` and a newline (the newline is not trained).
CHATML = ChatTemplate(
    name="chatml",
    system="<|im_start|>system\n{system}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    eot="<|im_end|>",
    after_answer="\n",
    extra_stop=("<|im_start|>",),
)

# Qwen2's chat template: ChatML with its default system prompt when a conversation has none.
QWEN2 = replace(CHATML, name="qwen2", default_system="You are a helpful assistant.")

LLAMA_2 = ChatTemplate(
    name="llama-2",
    user="[INST] {content} [/INST]",
    first_user_with_system="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
    assistant_prefix="",
    answer_sep=" ",
    eot=" {eos}",
    between="{bos}",
)

for _t in (ALPACA, VICUNA_V11, CHATML, QWEN2, LLAMA_2):
    register_template(_t)

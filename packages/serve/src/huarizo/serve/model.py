"""A served model: the engine plus the template that decides prompts and stop strings (from the registry only)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huarizo.formats import Conversation, Template, get_template, template_for_tokenizer
from huarizo.serve.config import DEFAULT_TEMPLATE, ServeConfig, resolve_dtype
from huarizo.serve.engine import Engine, SamplingParams


def default_model_name(ref: str) -> str:
    """The name a model reference is served under: `embedded`, `tiny`, a folder's or file's name, a hub id."""
    path = Path(ref)
    return path.stem if path.suffix == ".gguf" else path.name if path.exists() else ref


def served_fingerprint(ref: str, dtype: str, template: str, quantize: str = "none") -> str:
    """What `/v1/models` reports as `fingerprint`: changes with the model's files, its dtype, its template or its
    quantisation."""
    from huarizo.formats.models import model_fingerprint

    quantized = "" if quantize == "none" else f" {quantize}"
    return hashlib.sha256(f"{model_fingerprint(ref)} {dtype} {template}{quantized}".encode()).hexdigest()[:16]


def served_template(cfg: ServeConfig, tokenizer: Any) -> Template:
    """The template that decides prompts and stop strings: `cfg.template`, else the one the model was trained with
    (its chat template), else the default."""
    if cfg.template:
        return get_template(cfg.template, tokenizer)
    return template_for_tokenizer(tokenizer, DEFAULT_TEMPLATE)


def split_stops(tokenizer: Any, stops: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Stop strings to match on the decoded text (all of them, whatever tokens carry their text: Gemma's `"\\n"`,
    `"\\n\\n"` and runs of spaces are added tokens), and the ids of the special tokens among them: special tokens
    are never in the decoded text, so those also stop by id."""
    special = {tok.content: int(i) for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    texts = tuple(dict.fromkeys(s for s in stops if s))
    return texts, tuple(special[s] for s in texts if s in special)


@dataclass
class ServedModel:
    """What the API and the chat need: engine, tokenizer, template, the served name, and a fingerprint that changes
    with the model's files, its dtype, its template or its quantisation (clients use it to tell a retrained model
    from the last one)."""

    engine: Engine
    tokenizer: Any
    template: Template
    name: str
    fingerprint: str = ""

    @classmethod
    def load(cls, cfg: ServeConfig, announce: Callable[[str], None] | None = None) -> ServedModel:
        """Load the model of `cfg` and start its engine (a first-use conversion of the model says so to
        `announce`)."""
        from huarizo.formats.models import load_causal_lm
        from huarizo.serve.attention import use_decode_attention
        from huarizo.serve.quantize import optimize_linears

        dtype = resolve_dtype(cfg.dtype, cfg.device)
        model, tokenizer = load_causal_lm(cfg.model, dtype=dtype, device=cfg.device, announce=announce)
        optimize_linears(model, cfg.quantize)
        use_decode_attention(model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        template = served_template(cfg, tokenizer)
        engine = Engine(
            model,
            tokenizer,
            max_batch_size=cfg.max_batch_size,
            max_model_len=cfg.max_model_len,
            max_waiting=cfg.max_waiting_sequences,
        )
        name = cfg.model_name or default_model_name(cfg.model)
        fingerprint = served_fingerprint(cfg.model, dtype, template.name, cfg.quantize)
        return cls(engine, tokenizer, template, name, fingerprint)

    @property
    def context_length(self) -> int:
        """The longest prompt + completion, in tokens."""
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model accepts."""
        return int(self.engine.model.get_input_embeddings().num_embeddings)

    def chat_prompt(self, conv: Conversation) -> list[int]:
        """Token ids of the template's generation prompt for a conversation ending in a user turn."""
        tok = self.tokenizer
        text = self.template.generation_prompt(conv, eos=tok.eos_token, bos=tok.bos_token or "")
        return list(tok.encode(text, add_special_tokens=self.template.add_special_tokens))

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a raw completion prompt (the tokenizer adds its BOS, as in training)."""
        return list(prompt) if isinstance(prompt, list) else list(self.tokenizer.encode(prompt))

    def params(self, *, chat: bool, stop: Sequence[str] = (), **kw: Any) -> SamplingParams:
        """Sampling parameters; a chat also stops where the template ends a turn, a completion at EOS."""
        stops = [*self.template.stop_strings(eos=self.tokenizer.eos_token), *stop] if chat else list(stop)
        texts, ids = split_stops(self.tokenizer, stops)
        return SamplingParams(stop=texts, stop_token_ids=ids, **kw)

    def close(self) -> None:
        """Stop the engine."""
        self.engine.close()

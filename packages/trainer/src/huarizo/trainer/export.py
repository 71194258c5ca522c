"""Export a model folder to GGUF for llama.cpp and Ollama, through the `gguf` package's writer, plus a Modelfile.

The GGUF carries the weights (f32, f16, bf16 or a block-quantized type the `gguf` package can write), the
tokenizer (byte-level BPE as llama.cpp's `gpt2` model, byte-fallback BPE as its `llama` model, with merges), the
chat template the model was trained with (`tokenizer.chat_template`) and its end-of-turn token
(`tokenizer.ggml.eot_token_id`), so llama.cpp prompts and stops the model as Huarizo does. Tensors are streamed one
at a time from the safetensors files, so memory stays about one tensor whatever the model's size.

The Ollama `Modelfile` next to it names the file, gives the template as a Go template (what Ollama renders) and the
template's stop strings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from huarizo.formats import (
    ChatTemplate,
    HuarizoError,
    ProgressBar,
    Template,
    get_template,
    template_for_tokenizer,
    write_text_atomic,
)
from huarizo.formats.models import resolve_model
from huarizo.trainer.config import QUANT_TYPES

DEFAULT_TEMPLATE = "alpaca"
"""The template of a model folder without a chat template (as `huarizo serve` does)."""


class ExportError(HuarizoError):
    """A model that cannot be exported."""


@dataclass
class ExportResult:
    """What `export_gguf` wrote."""

    gguf: Path
    modelfile: Path | None
    arch: str
    qtype: str
    tensors: int
    types: dict[str, int] = field(default_factory=dict)
    """How many tensors were written in each GGUF type."""
    template: str = ""
    eot_token: str | None = None
    stops: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Arch:
    gguf_name: str
    permute_qk: bool = False
    norm_plus_one: bool = False


_ARCHS = {
    "llama": _Arch("llama", permute_qk=True),
    "qwen2": _Arch("qwen2"),
    "qwen3": _Arch("qwen3"),
    "gemma3_text": _Arch("gemma3", norm_plus_one=True),
}


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout for Llama's q/k projections (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_type(name: str, qtype: str) -> Any:
    import gguf

    return {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q5_1": gguf.GGMLQuantizationType.Q5_1,
        "q5_0": gguf.GGMLQuantizationType.Q5_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[qtype]


def _file_type(qtype: str) -> int:
    import gguf

    names = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}
    return int(gguf.LlamaFileType[names.get(qtype, "MOSTLY_" + qtype.upper())])


def _tensor_type(shape: tuple[int, ...], is_norm: bool, qtype: str) -> Any:
    """The GGUF type of one tensor: vectors and norms stay f32 (as llama.cpp keeps them); a matrix whose rows do
    not fill whole quantization blocks falls back to f16."""
    import gguf

    if len(shape) < 2 or is_norm:
        return gguf.GGMLQuantizationType.F32
    wanted = _gguf_type("", qtype)
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return wanted


def _encode(data: np.ndarray, gtype: Any) -> np.ndarray:
    import gguf

    if gtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if gtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data.astype(np.float32), gtype)


# ---- tokenizer ---------------------------------------------------------------------------------------------------


@dataclass
class _Vocab:
    model: str
    pre: str
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool | None = None


def _pre_tokenizer_name(data: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer (its split regex)."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    split = next((p for p in parts if p.get("type") == "Split"), None)
    if split is not None:
        regex = split.get("pattern", {}).get("Regex")
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for name, known in GGUF_PRE_TOKENIZER_SPLITS.items():
            if known == regex:
                return name
    raise ExportError("export: this byte-level tokenizer splits text in a way GGUF has no name for")


def _vocab(tokenizer: Any, rows: int, space_runs: bool = False) -> _Vocab:
    """Tokens, scores and types as llama.cpp's converter writes them; embedding rows past the tokenizer become
    unused `[PAD{i}]` tokens. `space_runs`: runs of two or more spaces are user-defined tokens spelled with real
    spaces (Gemma's sentencepiece model has them so)."""
    import gguf

    from huarizo.trainer.vocab import _is_byte_level

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    spec = data["model"]
    if spec["type"] != "BPE":
        raise ExportError(f"export: {spec['type']} tokenizers are not supported (BPE only)")
    byte_level = _is_byte_level(data)
    if not byte_level and not spec.get("byte_fallback"):
        raise ExportError("export: a BPE tokenizer needs byte-level pieces or byte fallback to be written as GGUF")
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    unk = tokenizer.unk_token_id
    tokens, scores, types = [], [], []
    normal = 0
    for i in range(max(rows, len(tokenizer))):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        elif space_runs and len(token) > 1 and not token.strip("\u2581"):
            tokens.append(" " * len(token))
            scores.append(-1000.0)
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            special = added[i].special
            tokens.append(token if special or byte_level else token.replace("\u2581", " "))
            scores.append(-1000.0)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif not byte_level and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            tokens.append(token)
            scores.append(0.0)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            scores.append(0.0 if byte_level else -float(normal))
            types.append(gguf.TokenType.UNKNOWN if i == unk and not byte_level else gguf.TokenType.NORMAL)
            normal += 1
    if byte_level:
        return _Vocab("gpt2", _pre_tokenizer_name(data), tokens, scores, [int(t) for t in types])
    norm = json.dumps(data.get("normalizer"))
    pre = json.dumps(data.get("pre_tokenizer"))
    prefix = '"Prepend"' in norm or ('"Metaspace"' in pre and '"never"' not in pre)
    return _Vocab("llama", "default", tokens, scores, [int(t) for t in types], prefix)


def _template(tokenizer: Any, name: str | None) -> tuple[Template, str]:
    """The template to export and its name: `name`, else the one the folder was trained with, else the default."""
    if name is not None:
        template = get_template(name, tokenizer)
    elif getattr(tokenizer, "chat_template", None):
        template = template_for_tokenizer(tokenizer)
    else:
        template = get_template(DEFAULT_TEMPLATE, tokenizer)
    return template, template.name


_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def _jinja(template: Template, tokenizer: Any) -> str | None:
    """The chat template for the GGUF, in plain Jinja: transformers' `{% generation %}` marks (which only tell a
    trainer what to train) are dropped, since llama.cpp's and llama-cpp-python's Jinja do not know them."""
    if isinstance(template, ChatTemplate):
        text: str | None = template.to_jinja()
    else:
        chat_template = getattr(tokenizer, "chat_template", None)
        text = chat_template if isinstance(chat_template, str) else None
    return _GENERATION_TAG.sub("", text) if text is not None else None


def _end_of_turn(template: Template, tokenizer: Any) -> tuple[int | None, list[str]]:
    """The id of the token that ends an answer in `template` (else EOS), and the template's stop strings."""
    eos = tokenizer.eos_token or "</s>"
    stops = template.stop_strings(eos=eos)
    vocab = tokenizer.get_vocab()
    for stop in stops:
        if stop in vocab:
            return int(vocab[stop]), stops
    return tokenizer.eos_token_id, stops


# ---- Ollama ------------------------------------------------------------------------------------------------------


def _go_literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}" if text else ""


def _go(fmt: str, eos: str, bos: str, content: str = "{{ .Content }}") -> str:
    """A template format string as Go template text: literals quoted, `{content}` / `{system}` as variables."""
    import string

    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(fmt):
        out.append(_go_literal(literal))
        if name == "content":
            out.append(content)
        elif name == "system":
            out.append("{{ $system }}")
        elif name == "eos":
            out.append(_go_literal(eos))
        elif name == "bos":
            out.append(_go_literal(bos))
    return "".join(out)


def ollama_template(template: ChatTemplate, eos: str, bos: str) -> str:
    """A Huarizo layout as an Ollama (Go `text/template`) TEMPLATE over `.System` and `.Messages`, rendering what
    `template.generation_prompt` renders."""
    if template.first_user_with_system:
        first_user = template.first_user_with_system
    elif template.system:
        first_user = template.user
    else:  # no system slot: the system prompt leads the first user message, as `ChatTemplate.render` does
        first_user = template.user.replace("{content}", "{system}\n\n{content}")
    parts = [
        "{{- $system := " + json.dumps(template.default_system) + " }}",
        "{{- if .System }}{{ $system = .System }}{{ end }}",
        '{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}',
    ]
    if template.system:
        parts.append("{{- if $system }}" + _go(template.system, eos, bos) + "{{ end }}")
    parts += [
        "{{- $first := true }}",
        "{{- range .Messages }}",
        '{{- if eq .Role "user" }}',
        "{{- if not $first }}" + _go(template.between, eos, bos) + "{{ end }}",
        "{{- if and $first $system }}"
        + _go(first_user, eos, bos)
        + "{{ else }}"
        + _go(template.user, eos, bos)
        + "{{ end }}"
        + _go(template.assistant_prefix, eos, bos),
        "{{- $first = false }}",
        '{{- else if eq .Role "assistant" }}'
        + _go(template.answer_sep, eos, bos)
        + "{{ .Content }}"
        + _go(template.eot, eos, bos)
        + _go(getattr(template, "after_answer", ""), eos, bos),  # ChatML's newline after <|im_end|>
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(parts)


def write_modelfile(path: Path, gguf_file: Path, template: Template, eos: str, bos: str, stops: list[str]) -> Path:
    """An Ollama Modelfile: `FROM` the GGUF next to it, the template as Go `TEMPLATE`, one `PARAMETER stop` per
    stop string."""
    lines = [
        f"# Ollama Modelfile written by `huarizo export` (template: {template.name})",
        f"# ollama create NAME -f {path.name}",
        f"FROM ./{gguf_file.name}",
    ]
    if isinstance(template, ChatTemplate):
        go = ollama_template(template, eos, bos)
        if '"""' in go:
            raise ExportError(f"export: template {template.name} cannot be written as a Modelfile TEMPLATE")
        lines.append(f'TEMPLATE """{go}"""')
    else:
        lines.append("# no TEMPLATE: Ollama takes the chat template from the GGUF (tokenizer.chat_template)")
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return write_text_atomic(path, "\n".join(lines) + "\n")


# ---- GGUF --------------------------------------------------------------------------------------------------------


def _hparams(writer: Any, config: Any, arch: _Arch, qtype: str, rows: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    if arch.gguf_name == "gemma3":
        full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
        if full.get("rope_type", "default") != "default":
            raise ExportError(f"export: rope scaling {full.get('rope_type')!r} is not supported yet")
        writer.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
        writer.add_float32("gemma3.rope.freq_base_swa", float(local.get("rope_theta", 10_000.0)))
        writer.add_sliding_window(int(config.sliding_window))
    else:
        if rope.get("rope_type", "default") != "default":
            raise ExportError(f"export: rope scaling {rope.get('rope_type')!r} is not supported yet")
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10_000.0))
        writer.add_rope_freq_base(float(theta))
        writer.add_rope_dimension_count(int(head_dim))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if arch.gguf_name in ("gemma3", "qwen3") or head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_vocab_size(rows)
    writer.add_file_type(_file_type(qtype))


@dataclass
class _Source:
    """The model folder being exported: its config, architecture, tokenizer, weights and the tensors to write."""

    folder: Path
    config: Any
    arch: _Arch
    tokenizer: Any
    weights: Any
    names: list[str]
    rows: int

    @classmethod
    def read(cls, model: str | os.PathLike[str]) -> _Source:
        from transformers import AutoConfig, AutoTokenizer

        from huarizo.trainer.delta import WeightFiles

        folder = Path(resolve_model(model))
        if not folder.is_dir():
            raise ExportError(f"export: {model} is not a local model folder")
        config = AutoConfig.from_pretrained(folder)
        arch = _ARCHS.get(config.model_type)
        if arch is None:
            supported = ", ".join(_ARCHS)
            raise ExportError(f"export: {folder}: architecture {config.model_type!r} is not supported ({supported})")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        weights = WeightFiles(str(folder), "model")
        names = [n for n in weights.entries if not n.endswith("rotary_emb.inv_freq")]
        if getattr(config, "tie_word_embeddings", False):
            names = [n for n in names if not n.startswith("lm_head.")]
        embed = next((n for n in names if n.endswith("embed_tokens.weight")), None)
        rows = weights.entries[embed].shape[0] if embed else len(tokenizer)
        return cls(folder, config, arch, tokenizer, weights, names, rows)

    def transform(self, hf: str, t: torch.Tensor) -> torch.Tensor:
        """A tensor as llama.cpp stores it: float32, Llama's q/k rows permuted, Gemma's norms as 1 + w."""
        t = t.float()
        heads = int(self.config.num_attention_heads)
        if self.arch.permute_qk and hf.endswith("self_attn.q_proj.weight"):
            t = _permute(t, heads)
        elif self.arch.permute_qk and hf.endswith("self_attn.k_proj.weight"):
            t = _permute(t, int(getattr(self.config, "num_key_value_heads", None) or heads))
        if self.arch.norm_plus_one and hf.endswith("norm.weight"):
            t = t + 1  # Gemma's RMSNorm scales by (1 + w); llama.cpp stores 1 + w
        return t


class _Tensor(NamedTuple):
    """One tensor to write: its Hugging Face name, its GGUF name, its shape and its GGUF type."""

    hf: str
    name: str
    shape: tuple[int, ...]
    gtype: Any


def _plan(src: _Source, qtype: str) -> list[_Tensor]:
    """The tensors to write, with their GGUF names and types."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == src.arch.gguf_name)
    name_map = gguf.get_tensor_name_map(arch_id, int(src.config.num_hidden_layers))
    plan = []
    for hf in src.names:
        stem, _, suffix = hf.rpartition(".")
        mapped = name_map.get_name(stem)
        if mapped is None:
            raise ExportError(f"export: tensor {hf!r} has no GGUF name for {src.arch.gguf_name}")
        shape = src.weights.entries[hf].shape
        plan.append(_Tensor(hf, f"{mapped}.{suffix}", shape, _tensor_type(shape, hf.endswith("norm.weight"), qtype)))
    return plan


def _write_header(writer: Any, src: _Source, plan: list[_Tensor], template: Template, qtype: str) -> int | None:
    """The GGUF metadata (hyperparameters, vocabulary, chat template, end-of-turn token) and tensor infos; returns
    the end-of-turn token id."""
    import gguf
    from gguf.quants import quant_shape_to_byte_shape

    vocab = _vocab(src.tokenizer, src.rows, space_runs=src.arch.gguf_name == "gemma3")
    eot_id, _ = _end_of_turn(template, src.tokenizer)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(src.folder.name)
    _hparams(writer, src.config, src.arch, qtype, src.rows)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)  # its TemplateProcessing guesses are noise here
    special = gguf.SpecialVocab(src.folder, load_merges=True, n_vocab=len(vocab.tokens))
    special.chat_template = _jinja(template, src.tokenizer)
    special.add_to_gguf(writer, quiet=True)
    if eot_id is not None:
        writer.add_eot_token_id(eot_id)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in plan:
        if t.gtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.float32 if t.gtype == gguf.GGMLQuantizationType.F32 else np.float16
            writer.add_tensor_info(t.name, t.shape, np.dtype(dtype), int(np.prod(t.shape)) * np.dtype(dtype).itemsize)
        else:
            byte_shape = quant_shape_to_byte_shape(t.shape, t.gtype)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), t.gtype)
    return eot_id


def _write_gguf(out: Path, src: _Source, plan: list[_Tensor], template: Template, qtype: str, progress: bool) -> Any:
    """Write the GGUF file (beside `out`, then renamed into place); returns (tensors per GGUF type, end-of-turn id)."""
    import gguf

    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, src.arch.gguf_name)
    counts: dict[str, int] = {}
    try:
        eot_id = _write_header(writer, src, plan, template, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with ProgressBar("export", len(plan), enabled=progress, unit="tensors") as bar:
            for t in plan:
                writer.write_tensor_data(_encode(src.transform(t.hf, src.weights.read(t.hf)).numpy(), t.gtype))
                counts[t.gtype.name] = counts.get(t.gtype.name, 0) + 1
                bar.advance()
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return counts, eot_id


def export_gguf(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    qtype: str = "f16",
    template: str | None = None,
    modelfile: bool = True,
    progress: bool = False,
) -> ExportResult:
    """Write `model` (a Huarizo / Hugging Face folder) as the GGUF file `out`, and an Ollama `Modelfile` beside it.

    `template`: the chat template to embed (default: the one the folder was trained with, else alpaca).
    """
    if qtype not in QUANT_TYPES:
        raise ExportError(f"--type {qtype!r}: choose one of {', '.join(QUANT_TYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise ExportError(f"--out {out}: the file name must end in .gguf")
    src = _Source.read(model)
    chosen, template_name = _template(src.tokenizer, template)
    plan = _plan(src, qtype)
    counts, eot_id = _write_gguf(out, src, plan, chosen, qtype, progress)
    _, stops = _end_of_turn(chosen, src.tokenizer)
    tokenizer = src.tokenizer
    mf = None
    if modelfile:
        eos, bos = tokenizer.eos_token or "</s>", tokenizer.bos_token or "<s>"
        mf = write_modelfile(out.with_name("Modelfile"), out, chosen, eos, bos, stops)
    eot = str(tokenizer.convert_ids_to_tokens(eot_id)) if eot_id is not None else None
    return ExportResult(out, mf, src.arch.gguf_name, qtype, len(plan), counts, template_name, eot, stops)

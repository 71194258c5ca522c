"""Vocabulary extension, as Chinese-LLaMA-Alpaca did for LLaMA: learn new tokens on a corpus, add them to a model.

`extend_vocab(base, corpus, add, out)`:

1. trains a BPE of the base tokenizer's own kind (same normalizer, pre-tokenizer, byte-level or byte-fallback) on
   the corpus with the `tokenizers` library;
2. appends the pieces the base lacks (characters first, most frequent first, then merges in the order BPE learned
   them) to the base vocabulary and their merges after the base merges: every existing token keeps its id, and text
   without the new pieces tokenizes as before;
3. resizes the input and output embeddings; a new token's rows start as the mean of the rows of the base tokens it
   replaces (what the base tokenizer makes of its text);
4. writes a model folder with `huarizo_vocab.json` (which ids are new, the corpus, tokens per Han character before
   and after) and a model card.

Then train the new rows alone (`model.new_tokens_only: true`, which uses `train_new_rows_only`), then everything
with LoRA plus `lora.modules_to_save: [embed_tokens, lm_head]`: the Chinese-LLaMA recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError, atomic_folder
from huarizo.formats.models import resolve_model

VOCAB_RECORD = "huarizo_vocab.json"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


class VocabError(HuarizoError):
    """A corpus, base model or tokenizer that vocabulary extension cannot use."""


@dataclass
class VocabResult:
    """What `extend_vocab` added and what it bought."""

    folder: Path
    base_size: int
    """Tokens in the base tokenizer (the first new id)."""
    added: list[str]
    """The new tokens as the vocabulary spells them, in id order."""
    readable: list[str]
    """The new tokens as text (byte-level pieces decoded; a piece ending inside a character shows U+FFFD)."""
    tokens_per_han_before: float
    tokens_per_han_after: float
    """Tokens per Han character on the corpus with the base and the extended tokenizer."""
    eval_tokens_per_han: dict[str, tuple[float, float]]
    """Per evaluation file: tokens per Han character before and after."""

    @property
    def new_ids(self) -> range:
        return range(self.base_size, self.base_size + len(self.added))


def han_count(text: str) -> int:
    """Han (Chinese) characters in a text."""
    return len(_HAN.findall(text))


def tokens_per_han(tokenizer: Any, texts: Iterable[str]) -> float:
    """Tokens the tokenizer spends per Han character (all tokens of the text, no special tokens, over its Han
    characters)."""
    tokens = hans = 0
    for text in texts:
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        hans += han_count(text)
    if not hans:
        raise VocabError("tokens per Han character: the text has no Han characters")
    return tokens / hans


def read_corpus(files: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The non-empty lines of the corpus files (UTF-8 text); a missing, binary or empty file is an error naming it."""
    if not files:
        raise VocabError("extend-vocab: no corpus files given (--corpus FILE ...)")
    lines: list[str] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise VocabError(f"{path}: corpus file not found")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise VocabError(
                f"{path}: line {line}: not UTF-8 text (byte {exc.start}); the corpus must be plain text"
            ) from None
        if "\x00" in text:
            line = text[: text.index("\x00")].count("\n") + 1
            raise VocabError(f"{path}: line {line}: NUL byte; the corpus must be plain text, not a binary file")
        kept = [line for line in text.splitlines() if line.strip()]
        if not kept:
            raise VocabError(f"{path}: the corpus file is empty")
        lines += kept
    return lines


def _backend_json(tokenizer: Any, base: str) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabError(f"{base}: the tokenizer is not a fast (tokenizers) tokenizer; extend-vocab needs one")
    data: dict[str, Any] = json.loads(backend.to_str())
    kind = data["model"]["type"]
    if kind != "BPE":
        raise VocabError(f"{base}: the tokenizer is a {kind} model; extend-vocab extends BPE tokenizers only")
    return data


def _is_byte_level(data: dict[str, Any]) -> bool:
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p and p.get("type") == "ByteLevel" for p in parts)


def _train_bpe(data: dict[str, Any], lines: list[str], vocab_size: int, min_frequency: int) -> dict[str, Any]:
    """A BPE of the base's kind (same normalizer and pre-tokenizer) trained on the corpus with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    spec = data["model"]
    fresh = dict(data, added_tokens=[], post_processor=None)
    tk = Tokenizer.from_str(json.dumps(fresh))
    options = {k: spec[k] for k in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix") if spec.get(k)}
    tk.model = models.BPE(byte_fallback=bool(spec.get("byte_fallback")), **options)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if _is_byte_level(data) else [],
    )
    tk.train_from_iterator(lines, trainer=trainer)
    trained: dict[str, Any] = json.loads(tk.to_str())["model"]
    return trained


def _merge_pairs(merges: list[Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges]  # type: ignore[misc]


def _additions(
    base: dict[str, Any], trained: dict[str, Any], char_counts: Counter[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """New tokens (missing characters by frequency, then merge results in learned order) and the merges to append."""
    known = set(base["model"]["vocab"]) | {t["content"] for t in base.get("added_tokens", [])}
    merges = _merge_pairs(trained["merges"])
    merged = {a + b for a, b in merges}
    chars = [t for t in trained["vocab"] if t not in merged and t not in known]
    chars.sort(key=lambda t: -char_counts.get(t, 0))
    have = known | set(chars)
    tokens, new_merges = list(chars), []
    for a, b in merges:
        if a + b not in have and a in have and b in have:
            have.add(a + b)
            tokens.append(a + b)
            new_merges.append((a, b))
    return tokens, new_merges


def _piece_counts(data: dict[str, Any], lines: list[str]) -> Counter[str]:
    """How often each character-level piece occurs in the corpus, as the tokenizer's normalizer spells it."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(json.dumps(data))
    counts: Counter[str] = Counter()
    for line in lines:
        text = tk.normalizer.normalize_str(line) if tk.normalizer is not None else line
        counts.update(text)
    if _is_byte_level(data):
        from tokenizers import pre_tokenizers

        spelled: Counter[str] = Counter()
        for ch, n in counts.items():
            for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(ch):
                for c in piece:
                    spelled[c] += n
        return spelled
    return counts


def plan_extension(
    data: dict[str, Any], lines: list[str], add: int, min_frequency: int = 2
) -> tuple[list[str], list[tuple[str, str]]]:
    """The tokens to add (at most `add`) and the merges that produce them, learned from the corpus lines."""
    counts = _piece_counts(data, lines)
    alphabet = 256 if _is_byte_level(data) else len(counts) + 1
    size = alphabet + add
    tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    last_vocab = -1
    for _ in range(8):  # grow the trained vocabulary until it has `add` pieces the base lacks
        trained = _train_bpe(data, lines, size, min_frequency)
        tokens, merges = _additions(data, trained, counts)
        if len(tokens) >= add or len(trained["vocab"]) <= last_vocab or len(trained["vocab"]) < size:
            break
        last_vocab = len(trained["vocab"])
        size += add - len(tokens)
    n_chars = len(tokens) - len(merges)
    if len(tokens) > add:
        if n_chars >= add:
            tokens, merges = tokens[:add], []
        else:
            merges = merges[: add - n_chars]
            tokens = tokens[: n_chars + len(merges)]
    return tokens, merges


def extended_tokenizer_json(data: dict[str, Any], tokens: list[str], merges: list[tuple[str, str]]) -> dict[str, Any]:
    """The base tokenizer JSON with `tokens` appended after its last id and `merges` after its merges."""
    model = dict(data["model"])
    vocab = dict(model["vocab"])
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))])
    for i, token in enumerate(tokens):
        vocab[token] = next_id + i
    old = model.get("merges") or []
    as_strings = bool(old) and isinstance(old[0], str)
    model["vocab"] = vocab
    model["merges"] = list(old) + [f"{a} {b}" if as_strings else [a, b] for a, b in merges]
    return dict(data, model=model)


def _readable(data: dict[str, Any], tokens: list[str]) -> list[str]:
    """New tokens as text (byte-level pieces decoded; a piece ending inside a character keeps U+FFFD)."""
    if not _is_byte_level(data):
        return tokens
    from tokenizers import decoders

    dec = decoders.ByteLevel()
    return [dec.decode([t]) for t in tokens]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _base_tokenizer(path: str, base: str) -> Any:
    """The base model's fast tokenizer (its `tokenizer.json` is what gets extended)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VocabError(f"{base}: no usable tokenizer in the base model ({first})") from None
    if isinstance(tokenizer, bool) or not hasattr(tokenizer, "backend_tokenizer"):
        raise VocabError(f"{base}: the base model has no fast tokenizer (tokenizer.json)")
    return tokenizer


def _write_tokenizer(tokenizer: Any, new_data: dict[str, Any], folder: Path) -> Any:
    """Write the extended tokenizer into `folder` and load it back; every existing token must keep its id."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(new_data, ensure_ascii=False), encoding="utf-8")
    for stale in ("tokenizer.model", "vocab.json", "merges.txt"):  # the old vocabulary must not come back
        (folder / stale).unlink(missing_ok=True)
    extended = AutoTokenizer.from_pretrained(folder)
    new_vocab = extended.get_vocab()
    moved = [t for t, i in tokenizer.get_vocab().items() if new_vocab.get(t) != i]
    if moved:
        raise VocabError(f"internal check failed: {len(moved)} existing tokens changed id (e.g. {moved[0]!r})")
    return extended


def _write_model(path: str, data: dict[str, Any], tokens: list[str], first_id: int, size: int, folder: Path) -> None:
    """Write the base model with its embeddings grown to `size` rows into `folder`: each new row (input and output
    embeddings) is the mean of the rows of the base tokens the new token replaces."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    base_tk = Tokenizer.from_str(json.dumps(data))
    parts = [[t.id for t in base_tk.model.tokenize(token)] for token in tokens]
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(max(rows, size), mean_resizing=False)
    inp = model.get_input_embeddings().weight
    outp = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    with torch.no_grad():
        for i, ids in enumerate(parts):
            for weight in {id(w): w for w in (inp, outp) if w is not None}.values():
                weight[first_id + i] = weight[ids].float().mean(0).to(weight.dtype)
    model.save_pretrained(folder, safe_serialization=True)


def _write_record(
    folder: Path,
    result: VocabResult,
    base: str,
    corpus: Sequence[str | os.PathLike[str]],
    min_frequency: int,
    chat: bool,
) -> None:
    """`huarizo_vocab.json` (what was added, from which corpus) and the model card."""
    record = {
        "base": str(base),
        "first_new_id": result.base_size,
        "added": len(result.added),
        "tokens": result.readable,
        "corpus": [{"path": str(f), "sha256": _digest(Path(f))} for f in corpus],
        "min_frequency": min_frequency,
        "tokens_per_han": {
            "corpus": [result.tokens_per_han_before, result.tokens_per_han_after],
            **{k: list(v) for k, v in result.eval_tokens_per_han.items()},
        },
    }
    (folder / VOCAB_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from huarizo.trainer.card import ModelCard, write_card

    n, first = len(result.added), result.base_size
    before, after = result.tokens_per_han_before, result.tokens_per_han_after
    write_card(
        folder,
        ModelCard(
            title=f"{result.folder.name}: {base} with {n} new tokens",
            base=str(base),
            made_by="huarizo extend-vocab",
            data=[f"{f} (sha256 {_digest(Path(f))})" for f in corpus],
            template="the base tokenizer's chat template" if chat else None,
            metrics={
                "new tokens": f"{n} (ids {first}-{first + n - 1})",
                "tokens per Han character, corpus": f"{before:.2f} → {after:.2f}",
                **{
                    f"tokens per Han character, {k}": f"{b:.2f} → {a:.2f}"
                    for k, (b, a) in result.eval_tokens_per_han.items()
                },
            },
            notes=[
                "New rows of the input and output embeddings start as the mean of the rows of the base tokens each "
                "new token replaces; train them (`model.new_tokens_only: true`) before using the model.",
            ],
        ),
    )


def extend_vocab(
    base: str,
    corpus: Sequence[str | os.PathLike[str]],
    add: int,
    out: str | os.PathLike[str],
    *,
    min_frequency: int = 2,
    eval_files: Sequence[str | os.PathLike[str]] = (),
) -> VocabResult:
    """Add up to `add` tokens learned on `corpus` to the model `base` and write the extended model folder `out`
    (atomically: a crash leaves no half folder)."""
    if add < 1:
        raise VocabError(f"--add must be at least 1, got {add}")
    if min_frequency < 1:
        raise VocabError(f"--min-frequency must be at least 1, got {min_frequency}")
    lines = read_corpus(corpus)
    eval_texts = {str(f): (read_corpus([f]), Path(f).read_text(encoding="utf-8"))[1] for f in eval_files}
    path = resolve_model(base)
    tokenizer = _base_tokenizer(path, base)
    data = _backend_json(tokenizer, base)
    tokens, merges = plan_extension(data, lines, add, min_frequency)
    if not tokens:
        raise VocabError(
            f"{', '.join(map(str, corpus))}: the corpus teaches no token the base tokenizer lacks "
            f"(pieces must occur at least {min_frequency} times)"
        )
    new_data = extended_tokenizer_json(data, tokens, merges)
    first_id = new_data["model"]["vocab"][tokens[0]]
    with atomic_folder(out) as tmp:
        extended = _write_tokenizer(tokenizer, new_data, tmp)
        _write_model(path, data, tokens, first_id, len(extended), tmp)
        evals = {k: (tokens_per_han(tokenizer, [t]), tokens_per_han(extended, [t])) for k, t in eval_texts.items()}
        result = VocabResult(
            Path(out),
            first_id,
            tokens,
            _readable(data, tokens),
            tokens_per_han(tokenizer, lines),
            tokens_per_han(extended, lines),
            evals,
        )
        _write_record(tmp, result, base, corpus, min_frequency, bool(getattr(extended, "chat_template", None)))
    return result


def new_token_ids(folder: str | os.PathLike[str]) -> range:
    """The ids `extend_vocab` added to a model folder (from its `huarizo_vocab.json`)."""
    record = Path(folder) / VOCAB_RECORD
    if not record.is_file():
        raise VocabError(
            f"{folder}: no {VOCAB_RECORD}; training only the new rows needs a folder written by `huarizo extend-vocab`"
        )
    data = json.loads(record.read_text(encoding="utf-8"))
    first, n = int(data["first_new_id"]), int(data["added"])
    return range(first, first + n)


def train_new_rows_only(model: Any, new_ids: range) -> None:
    """Freeze every weight but the input and output embedding rows of `new_ids` (their gradients on other rows are
    zeroed, so with no weight decay the old rows stay bit for bit the same)."""
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    keep = torch.zeros(model.get_input_embeddings().weight.shape[0], 1, dtype=torch.bool)
    keep[new_ids.start : new_ids.stop] = True
    heads = [model.get_input_embeddings()]
    if model.get_output_embeddings() is not None:
        heads.append(model.get_output_embeddings())
    for weight in {id(m.weight): m.weight for m in heads}.values():
        weight.requires_grad_(True)
        weight.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))


def vocab_summary(result: VocabResult) -> str:
    """The lines `huarizo extend-vocab` prints."""
    lines = [
        f"added {len(result.added)} tokens (ids {result.new_ids.start}-{result.new_ids.stop - 1}) to {result.folder}",
        f"tokens per Han character on the corpus: {result.tokens_per_han_before:.2f} → "
        f"{result.tokens_per_han_after:.2f}",
    ]
    for name, (before, after) in result.eval_tokens_per_han.items():
        lines.append(f"tokens per Han character on {name}: {before:.2f} → {after:.2f}")
    whole = [t for t in result.readable if "\ufffd" not in t and t.strip()]
    lines.append("new tokens, e.g.: " + " ".join(whole[:16]) + (" ..." if len(whole) > 16 else ""))
    return "\n".join(lines)


def fit_vocab_to_adapter(model: Any, adapter: str | os.PathLike[str]) -> None:
    """Before loading a LoRA adapter trained on an extended vocabulary onto a base with fewer rows: grow the base's
    embeddings to the adapter's (the adapter must carry the embedding weights, `lora.modules_to_save`)."""
    from safetensors import safe_open

    folder = Path(adapter)
    weights = folder / "adapter_model.safetensors"
    rows = model.get_input_embeddings().weight.shape[0]
    names = {
        name + ".weight"
        for name, module in model.named_modules()
        if module is model.get_input_embeddings() or module is model.get_output_embeddings()
    }
    grown = 0
    if weights.exists():
        with safe_open(weights, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                if any(key.endswith(n) for n in names):
                    grown = max(grown, f.get_slice(key).get_shape()[0])
    wanted = 0
    if (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        wanted = len(AutoTokenizer.from_pretrained(folder))
    if wanted > rows and grown < wanted:
        raise VocabError(
            f"{folder}: the adapter's tokenizer has {wanted} tokens but the base model has {rows} embedding rows and "
            "the adapter carries no embeddings for the new ones; merge onto the extended model the adapter was "
            "trained on, or train with lora.modules_to_save: [embed_tokens, lm_head]"
        )
    if grown > rows:
        model.resize_token_embeddings(grown, mean_resizing=False)

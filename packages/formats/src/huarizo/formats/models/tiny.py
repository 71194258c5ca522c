"""The tiny model for tests and smoke runs: a byte-level BPE tokenizer trained on the spot and a random Llama.

Nothing is downloaded. `build_tiny_model(folder)` writes a Hugging Face folder that `from_pretrained` loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The tiny tokenizer's special tokens, and the text it is trained on (tests that train their own tokenizer reuse it).
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

CORPUS = """\
Below is an instruction that describes a task. Write a response that appropriately completes the request.
Below is an instruction that describes a task, paired with an input that provides further context.
### Instruction: ### Input: ### Response: USER: ASSISTANT: system user assistant [INST] [/INST] <<SYS>> <</SYS>>
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep well.
What is the capital of France? The capital of France is Paris.
Translate the sentence into French. Classify the sentiment of the review as positive or negative.
Write a short poem about the sea. Summarize the paragraph in one sentence. List five fruits.
How can I improve my time management skills? Make a plan, set priorities and avoid distractions.
Rewrite the text in a formal tone. Explain the difference between weather and climate.
Generate a list of ideas for a birthday party. Sort the numbers from smallest to largest: 3, 1, 2.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } " ' ? ! . , ; :
def add(a, b): return a + b  # Python code example with `backticks` and **markdown** and - lists
"""


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer (adds BOS like Llama) and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else CORPUS.splitlines() * 4
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    folder: str | Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> Path:
    """Write a random Llama and a freshly trained tokenizer into `folder`; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

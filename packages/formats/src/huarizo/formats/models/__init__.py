"""Models shared by trainer, serve and judge (extra `huarizo-formats[models]`): model references (`embedded`,
`tiny`, a folder, a `.gguf` file, a hub id) resolved to a folder, loading, GGUF conversion, and the tiny test model.

Importing this package imports neither torch nor transformers: they are imported when a model is built or loaded.
"""

from huarizo.formats.models.gguf import clear_quantizer, convert_gguf
from huarizo.formats.models.loading import load_causal_lm, load_tokenizer
from huarizo.formats.models.references import EMBEDDED, TINY, Announce, ModelError, model_fingerprint, resolve_model
from huarizo.formats.models.tiny import build_tiny_model, train_tokenizer

__all__ = [
    "EMBEDDED",
    "TINY",
    "Announce",
    "ModelError",
    "build_tiny_model",
    "clear_quantizer",
    "convert_gguf",
    "load_causal_lm",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_model",
    "train_tokenizer",
]

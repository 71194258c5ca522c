"""`huarizo serve` and `huarizo chat`: options generated from `ServeConfig` / `ChatConfig` (file < --set < flags)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from huarizo.formats import add_config_options, config_from_args
from huarizo.serve.config import ChatConfig, ServeConfig

_MODEL = ["model", "template", "device", "dtype", "quantize", "max_model_len"]
SERVE_FLAGS = [
    *_MODEL,
    "model_name",
    "host",
    "port",
    "max_batch_size",
    "default_max_tokens",
    "max_sequences_per_request",
    "max_waiting_sequences",
    "read_timeout",
    "backend",
    "log_level",
    "web",
    *(f"arena.{k}" for k in ("out", "questions", "answers", "models", "max_tokens", "temperature")),
]
CHAT_FLAGS = [*_MODEL, "max_tokens", "temperature", "system"]


def _serve(args: argparse.Namespace) -> int:
    from huarizo.serve.server import serve

    return serve(config_from_args(ServeConfig, args))


def _chat(args: argparse.Namespace) -> int:
    from huarizo.serve.chat import chat_loop
    from huarizo.serve.model import ServedModel

    cfg = config_from_args(ChatConfig, args)
    served = ServedModel.load(cfg.model_copy(update={"max_batch_size": 1}), announce=_stderr)
    try:
        chat_loop(served, max_tokens=cfg.max_tokens, temperature=cfg.temperature, system=cfg.system)
    finally:
        served.close()
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(sub: Any) -> None:
    """Register `serve` and `chat`."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_config_options(p, ServeConfig, SERVE_FLAGS)
    p.add_argument(
        "--api-key", dest="cfg:api_keys", action="append", metavar="KEY", help="require this bearer key (repeatable)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    add_config_options(p, ChatConfig, CHAT_FLAGS)
    p.set_defaults(func=_chat)

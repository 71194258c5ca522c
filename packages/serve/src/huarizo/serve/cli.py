"""`huarizo serve` and `huarizo chat`."""

from __future__ import annotations

import argparse
from typing import Any

from huarizo.formats.cli import add_set_option
from huarizo.serve.config import ServeConfig


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a serve config YAML (flags override it)")
    p.add_argument("--model", help="embedded, tiny, a model folder, a .gguf file or a hub id (default: embedded)")
    p.add_argument("--template", help="prompt template (default: the model's own, else alpaca)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    add_set_option(p)


def _config(args: argparse.Namespace, keys: tuple[str, ...]) -> ServeConfig:
    cfg = ServeConfig.load(args.config, args.overrides)
    for key in keys:  # flags win over the file and --set
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    if getattr(args, "api_key", None):
        cfg.api_keys = [*cfg.api_keys, *args.api_key]
    return cfg


_SHARED = ("model", "template", "device", "dtype", "max_model_len")


def _serve(args: argparse.Namespace) -> int:
    from huarizo.serve.server import serve

    keys = (*_SHARED, "host", "port", "max_batch_size", "model_name", "backend")
    return serve(_config(args, keys))


def _chat(args: argparse.Namespace) -> int:
    from huarizo.serve.chat import chat_loop
    from huarizo.serve.model import ServedModel
    from huarizo.serve.server import ServeError

    if args.num_gpus > 1:
        raise ServeError("--num-gpus > 1: the built-in engine runs on one device; use --backend vllm to shard")
    cfg = _config(args, _SHARED)
    served = ServedModel.load(cfg.model_copy(update={"max_batch_size": 1}))
    try:
        chat_loop(served, max_tokens=args.max_tokens, temperature=args.temperature, system=args.system)
    finally:
        served.close()
    return 0


def register(sub: Any) -> None:
    """Register `serve` and `chat`."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    _common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", action="append", help="require this bearer key (repeatable)")
    p.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 16)")
    p.add_argument("--model-name", help="the model id clients use (default: derived from --model)")
    p.add_argument("--backend", choices=["hf", "vllm"], help="hf (built-in batching engine) or vllm (GPU)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    _common(p)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--num-gpus", type=int, default=1, help="only 1 with the built-in engine")
    p.set_defaults(func=_chat)

"""Starting a server: `serve(cfg)` blocks (the CLI), `start_server(cfg)` runs one in a thread (tests, pipelines)::

with start_server(ServeConfig(model="tiny", port=0)) as server:
    client = openai.OpenAI(base_url=server.base_url, api_key="none")
    litellm.completion(model=f"openai/{server.model_name}", api_base=server.base_url, ...)
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from huarizo.formats.errors import HuarizoError
from huarizo.serve.config import DEFAULT_TEMPLATE, ServeConfig
from huarizo.serve.model import ServedModel, default_model_name


class ServeError(HuarizoError):
    """A server that cannot start (port taken, backend missing, ...)."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn(served: ServedModel, cfg: ServeConfig) -> Any:
    import uvicorn

    from huarizo.serve.api import create_app

    config = uvicorn.Config(create_app(served, cfg), log_level=cfg.log_level, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


class RunningServer:
    """A server running in a background thread; `base_url` is what OpenAI clients and litellm take."""

    def __init__(self, cfg: ServeConfig, served: ServedModel | None = None) -> None:
        self.cfg = cfg
        self.served = served or ServedModel.load(cfg)
        self._sock = _bind(cfg.host, cfg.port)
        self.port: int = self._sock.getsockname()[1]
        self._server = _uvicorn(self.served, cfg)
        self._thread = threading.Thread(target=self._run, name="huarizo-serve", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    @property
    def url(self) -> str:
        """`http://host:port` of the server."""
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        """The model id the server reports."""
        return self.served.name

    def start(self, timeout: float = 60.0) -> RunningServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise ServeError(f"the server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise ServeError(f"the server did not start within {timeout:.0f} s")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Stop the server and its engine."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
        self.served.close()

    def __enter__(self) -> RunningServer:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_server(cfg: ServeConfig, served: ServedModel | None = None) -> RunningServer:
    """Load the model (unless `served` is given) and start a server in a thread; use it as a context manager."""
    return RunningServer(cfg, served).start()


def serve(cfg: ServeConfig, *, announce: Callable[[str], None] = print) -> int:
    """Serve until interrupted (Ctrl-C); prints the base URL once it accepts connections."""
    if cfg.backend == "vllm":
        return run_vllm(cfg)
    served = ServedModel.load(cfg)
    sock = _bind(cfg.host, cfg.port)
    server = _uvicorn(served, cfg)
    port = sock.getsockname()[1]

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            announce(
                f"serving {cfg.model} as {served.name!r} (template {served.template.name}) "
                f"on http://{cfg.host}:{port}/v1"
            )
            sys.stdout.flush()
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: a normal end of serving
        pass
    finally:
        sock.close()
        served.close()
    return 0


def vllm_command(cfg: ServeConfig, chat_template: str | None = None) -> list[str]:
    """The command line that runs vLLM's OpenAI server for `cfg`."""
    from huarizo.formats.models import resolve_model

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(cfg.model)]
    cmd += ["--host", cfg.host, "--port", str(cfg.port), "--dtype", cfg.dtype]
    cmd += ["--served-model-name", cfg.model_name or default_model_name(cfg.model)]
    cmd += ["--max-num-seqs", str(cfg.max_batch_size)]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    for key in cfg.api_keys:
        cmd += ["--api-key", key]
    if chat_template:
        cmd += ["--chat-template", chat_template]
    return cmd


def run_vllm(cfg: ServeConfig) -> int:
    """Replace this process by vLLM's OpenAI server, with Huarizo's template as its chat template."""
    if importlib.util.find_spec("vllm") is None:
        raise ServeError("--backend vllm needs vLLM on a GPU machine: pip install vllm")
    from transformers import AutoTokenizer

    from huarizo.formats.models import resolve_model
    from huarizo.formats.templates import ChatTemplate, get_template, template_for_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    template = (
        get_template(cfg.template, tokenizer) if cfg.template else template_for_tokenizer(tokenizer, DEFAULT_TEMPLATE)
    )
    jinja = None
    if isinstance(template, ChatTemplate):
        fd, jinja = tempfile.mkstemp(prefix="huarizo-template-", suffix=".jinja")
        Path(jinja).write_text(template.to_jinja())
        os.close(fd)
    cmd = vllm_command(cfg, jinja)
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover

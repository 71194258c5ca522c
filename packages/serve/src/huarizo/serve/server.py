"""Starting a server: `serve(cfg)` blocks (the CLI), `start_server(cfg)` runs one in the background (tests,
pipelines), with Huarizo's engine in a thread or, with `backend: vllm`, vLLM's server in a child process::

with start_server(ServeConfig(model="tiny", port=0)) as server:
    client = openai.OpenAI(base_url=server.base_url, api_key="none")
    litellm.completion(model=f"openai/{server.model_name}", api_base=server.base_url, ...)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from huarizo.formats import HuarizoError
from huarizo.serve.config import ServeConfig
from huarizo.serve.model import ServedModel, default_model_name

log = logging.getLogger("huarizo.serve")


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


def warn_if_exposed(cfg: ServeConfig) -> None:
    """Warn when the server listens beyond this machine without an API key."""
    if cfg.api_keys:
        return
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the model "
            "(set --api-key, or bind 127.0.0.1)",
            cfg.host,
        )


def _protocol(read_timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive within `read_timeout`
    seconds of connecting or of the last response (a half-open or stalled client never holds a connection).
    Bodies have the same time, counted by the API."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(read_timeout, self._late)

        def _late(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.info("%s: no request within %g s; closing", self.client, read_timeout)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

    return Protocol


def _uvicorn(served: ServedModel, cfg: ServeConfig) -> Any:
    import uvicorn

    from huarizo.serve.api import create_app

    config = uvicorn.Config(
        create_app(served, cfg),
        http=_protocol(cfg.read_timeout),
        log_level=cfg.log_level,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


class Server:
    """A server running in the background; `base_url` is what OpenAI clients and litellm take. A context manager."""

    cfg: ServeConfig
    port: int

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
        return self.cfg.model_name or default_model_name(self.cfg.model)

    def start(self, timeout: float = 60.0) -> Server:
        """Start serving; returns once the server accepts requests."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server."""
        raise NotImplementedError

    def __enter__(self) -> Server:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RunningServer(Server):
    """Huarizo's engine behind its OpenAI API, served from a background thread; `served` is the loaded model."""

    def __init__(self, cfg: ServeConfig, served: ServedModel | None = None) -> None:
        warn_if_exposed(cfg)
        self.cfg = cfg
        self.served = served or ServedModel.load(cfg)
        self._sock = _bind(cfg.host, cfg.port)
        self.port = self._sock.getsockname()[1]
        try:
            self._server = _uvicorn(self.served, cfg)
        except BaseException:  # e.g. an arena that cannot start: free the port and the engine
            self._sock.close()
            self.served.close()
            raise
        self._thread = threading.Thread(target=self._run, name="huarizo-serve", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

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


def start_server(cfg: ServeConfig, served: ServedModel | None = None) -> Server:
    """Start a server in the background and return it once it answers; use it as a context manager.

    `backend: hf` loads the model (unless `served` is given) and serves it from a thread (a `RunningServer`);
    `backend: vllm` runs vLLM's OpenAI server in a child process (a `VLLMServer`).
    """
    if cfg.backend == "vllm":
        from huarizo.serve.vllm import VLLMServer

        return VLLMServer(cfg).start()
    return RunningServer(cfg, served).start()


def serve(cfg: ServeConfig, *, announce: Callable[[str], None] = print) -> int:
    """Serve until interrupted (Ctrl-C); prints the base URL once it accepts connections."""
    if cfg.backend == "vllm":
        from huarizo.serve.vllm import exec_vllm

        return exec_vllm(cfg)
    warn_if_exposed(cfg)
    served = ServedModel.load(cfg, announce=lambda line: print(line, file=sys.stderr, flush=True))
    sock = _bind(cfg.host, cfg.port)
    try:
        server = _uvicorn(served, cfg)
    except BaseException:
        sock.close()
        served.close()
        raise
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
            if cfg.web:
                arena = f", votes in {cfg.arena.out}/votes.jsonl" if cfg.arena.enabled else ""
                announce(f"pages: http://{cfg.host}:{port}/ui (chat), http://{cfg.host}:{port}/arena{arena}")
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

"""Models served for the run: `huarizo serve` subprocesses on free ports, started on first use, health-checked, logs
in `RUN/serve/<name>.log`, stopped when the run ends (and when the run's own process dies, even by `kill -9`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from huarizo.formats import HuarizoError
from huarizo.formats.llm import ServerStartError, free_port, stop_process, wait_until_ready
from huarizo.serve.config import ServeConfig

_URL = re.compile(r" on (https?://\S+?)/v1\s*$", re.M)

# Runs before the real command: ask the kernel to send SIGTERM when the run's process dies (Linux), so a run killed
# with -9 leaves no trainer or server behind; then exec the command.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class ServerError(HuarizoError):
    """A served model that did not start."""


def huarizo_command() -> str:
    """The `huarizo` script of this environment."""
    beside = Path(sys.executable).with_name("huarizo")
    return str(beside) if beside.exists() else shutil.which("huarizo") or "huarizo"


def child_command(cmd: Sequence[str]) -> list[str]:
    """`cmd`, wrapped so that the process dies with the run's process."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def popen(cmd: Sequence[str], log: Path, *, keep_fds: Sequence[int] = (), env: dict[str, str] | None = None) -> Any:
    """Start `cmd` (dying with this process), its output appended to `log`; `keep_fds` stay open in it (the run's
    lock, so the run folder stays locked until every child has exited)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        return subprocess.Popen(
            child_command(cmd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=tuple(keep_fds),
            env=env,
        )


class Server:
    """One served model."""

    def __init__(self, name: str, cfg: ServeConfig, folder: Path) -> None:
        self.name, self.cfg, self.folder = name, cfg, folder
        self.log = folder / f"{name}.log"
        self.proc: Any = None
        self.url: str | None = None
        self.seconds = 0.0

    def start(self, timeout: float, keep_fds: Sequence[int]) -> str:
        """Start and wait until `/health` answers; returns the OpenAI base URL."""
        t0 = time.monotonic()
        config = self.folder / f"{self.name}.yaml"
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg, root = self.cfg, None
        if cfg.backend == "vllm":  # vLLM's server cannot take port 0 and say which port it got: pick one here
            cfg = cfg.model_copy(update={"port": free_port(cfg.host)})
            root = f"http://127.0.0.1:{cfg.port}"
        config.write_text(cfg.to_yaml(), encoding="utf-8")
        start = self.log.stat().st_size if self.log.exists() else 0
        self.proc = popen([huarizo_command(), "serve", str(config)], self.log, keep_fds=keep_fds)

        def address() -> str | None:  # `huarizo serve` on port 0 prints where it listens
            if root is not None:
                return root
            with open(self.log, "rb") as fh:
                fh.seek(start)
                found = _URL.search(fh.read().decode("utf-8", errors="replace"))
            if found is None:
                return None
            return found.group(1).replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")

        what = f"the server for {self.name!r} (model {self.cfg.model})"
        try:
            self.url = wait_until_ready(self.proc, address, timeout=timeout, what=what, log=self.log) + "/v1"
        except ServerStartError as exc:
            raise ServerError(str(exc)) from None
        self.seconds = time.monotonic() - t0
        return self.url

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s)."""
        stop_process(self.proc)


class ServerPool:
    """The run's served models, by name; each starts the first time a stage asks for its URL."""

    def __init__(
        self,
        folder: Path,
        configs: dict[str, ServeConfig],
        *,
        timeout: float = 900.0,
        keep_fds: Sequence[int] = (),
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        self.folder, self.timeout, self.keep_fds, self.on_start = folder, timeout, keep_fds, on_start
        self.servers = {name: Server(name, cfg, folder) for name, cfg in configs.items()}

    def url(self, name: str) -> str:
        """The base URL (`.../v1`) of a served model, started now if it is not running."""
        server = self.servers[name]
        if server.url is None or server.proc is None or server.proc.poll() is not None:
            if self.on_start is not None:
                self.on_start(name)
            server.start(self.timeout, self.keep_fds)
        assert server.url is not None
        return server.url

    def started(self) -> dict[str, Server]:
        """The servers started by this run so far."""
        return {n: s for n, s in self.servers.items() if s.proc is not None}

    def stop(self, names: Sequence[str] | None = None) -> None:
        """Stop the given servers (default: all)."""
        for name in names if names is not None else list(self.servers):
            self.servers[name].stop()

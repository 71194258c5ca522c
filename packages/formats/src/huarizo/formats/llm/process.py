"""Model servers run as child processes (`huarizo serve`, vLLM): a free port, waiting until one answers, stopping it.

Standard library only: the health check is a plain `GET`, so waiting for a server needs neither litellm nor httpx.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huarizo.formats.errors import HuarizoError


class ServerStartError(HuarizoError):
    """A server process that exited before it answered, or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for servers that cannot take port 0 and say which one they got)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether `GET url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def log_tail(path: Path, n: int = 1, pattern: str | None = None) -> str:
    """The last `n` non-empty lines of a log (those matching `pattern` when given), progress bars and the
    `$ command` lines left out, joined by ` | `."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("$ ")]
    if pattern is not None:
        lines = [ln for ln in lines if re.search(pattern, ln)]
    return " | ".join(lines[-n:])


def wait_until_ready(
    proc: subprocess.Popen[Any],
    root: str | Callable[[], str | None],
    *,
    timeout: float,
    what: str = "the server",
    path: str = "/health",
    log: Path | None = None,
) -> str:
    """Wait until the server `proc` runs answers `GET {root}{path}`; returns `root`.

    `root` is the server's address (`http://127.0.0.1:PORT`), or a function giving it once it is known (None
    before: a server on port 0 that prints where it listens). Raises `ServerStartError` naming `what` when the
    process exits first (with the last error line of `log`) or when `timeout` seconds pass (the process is stopped).
    """
    deadline = time.monotonic() + timeout
    where = f"; log: {log}" if log is not None else ""
    while True:
        try:
            code = proc.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            why = (log_tail(log, 1, r"error|Error|rror:") or log_tail(log, 1)) if log is not None else ""
            raise ServerStartError(f"{what} exited while starting (code {code}): {why or 'no output'}{where}")
        found = root() if callable(root) else root
        if found is not None and answers(found + path):
            return found
        if time.monotonic() > deadline:
            stop_process(proc)
            raise ServerStartError(f"{what} was not ready within {timeout:.0f} s{where}")


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 30.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after `grace` seconds (nothing when it already ended)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

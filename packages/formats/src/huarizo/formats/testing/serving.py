"""`huarizo serve` in a child process for tests that need a real model server: started on a free port, waited for
until it answers, stopped when the test is done."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from huarizo.formats.llm.process import free_port, stop_process, wait_until_ready

HUARIZO = [sys.executable, "-c", "from huarizo.formats import main; raise SystemExit(main())"]
"""The `huarizo` command of this interpreter (whatever its scripts folder)."""


@contextmanager
def huarizo_serve(
    model: str | os.PathLike[str],
    log: Path,
    *,
    name: str = "served",
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[str]:
    """`huarizo serve --model MODEL --model-name NAME [args]` on a free port, its output in `log`; yields its OpenAI
    base URL (`.../v1`) once `/health` answers, and stops it afterwards. A server that exits or does not answer
    within `timeout` seconds fails with the last error line of its log."""
    port = free_port()
    cmd = [*HUARIZO, "serve", "--model", str(model), "--port", str(port), "--model-name", name, *args]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, env=environ, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        root = wait_until_ready(proc, f"http://127.0.0.1:{port}", timeout=timeout, what="huarizo serve", log=log)
        yield f"{root}/v1"
    finally:
        stop_process(proc)

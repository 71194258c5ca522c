"""Test-only fault injection. Python imports this module at startup when its folder is on PYTHONPATH; with
HUARIZO_TEST_KILL_AFTER_STEP=N set, the training process (rank 0) SIGKILLs itself as soon as the recipe reports
step N on the `huarizo.trainer` logger: after the step is logged and checkpointed, before the next one starts,
exactly where a `kill -9` from outside could land."""

from __future__ import annotations

import logging
import os
import signal


class KillAfterStep(logging.Handler):
    def __init__(self, step: int) -> None:
        super().__init__(logging.INFO)
        self.step = step

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "step", None) == self.step and os.environ.get("RANK", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)


_step = int(os.environ.get("HUARIZO_TEST_KILL_AFTER_STEP", "0"))
if _step:
    _logger = logging.getLogger("huarizo.trainer")
    _logger.setLevel(logging.INFO)
    _logger.addHandler(KillAfterStep(_step))

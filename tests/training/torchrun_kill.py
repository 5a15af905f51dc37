"""Launched by tests/training/test_distributed.py under torchrun: `effiminivlm train ...` whose ranks all die
(like a SIGKILL: no cleanup, no exception handling) at training step KILL_AT_STEP, to test `--resume`."""

from __future__ import annotations

import os
import sys

from effiminivlm import cli
from effiminivlm.training import loop

KILL_AT_STEP = int(os.environ["KILL_AT_STEP"])
_real_step = loop.train_step
_calls = 0


def _dying_step(*args, **kwargs):
    global _calls
    _calls += 1
    if _calls == KILL_AT_STEP:
        os._exit(17)
    return _real_step(*args, **kwargs)


loop.train_step = _dying_step
sys.exit(cli.main(sys.argv[1:]))

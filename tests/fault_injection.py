"""`python -m tests.fault_injection STEP <uamix_jax.main flags>`: the training command, SIGKILLed after step STEP.

For the kill-and-resume test. After STEP's metrics row is written (and once any pending checkpoint is on disk) the
process kills itself with SIGKILL, as a pre-empted TPU VM or an OOM killer would: no cleanup runs.
"""
import os
import signal
import sys

from absl import app

from uamix_jax import main
from uamix_jax.train import checkpoint, metrics

KILL_AT = int(sys.argv.pop(1))
_checkpointers: list = []
_init, _write = checkpoint.Checkpointer.__init__, metrics.MetricWriter.write


def _init_and_remember(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _checkpointers.append(self)


def _write_then_kill(self, step, row):
    _write(self, step, row)
    if step == KILL_AT:
        for c in _checkpointers:
            c.wait()
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint.Checkpointer.__init__ = _init_and_remember
metrics.MetricWriter.write = _write_then_kill

if __name__ == "__main__":
    app.run(main.main)

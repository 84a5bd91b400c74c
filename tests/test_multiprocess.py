"""Two processes × 2 CPU devices (jax.distributed on loopback, gloo collectives) equal one process × 4 devices
(computed here, on 4 of the test process's 8 fake devices)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from tests.train_util import ROOT

pytestmark = pytest.mark.slow
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_COMPILATION_CACHE_DIR"] = os.environ["UAMIX_TEST_JAX_CACHE"]
    return env


def test_two_processes_match_one_process(tmp_path):
    import jax

    from tests.multiprocess_worker import run_steps

    a = run_steps(jax.devices()[:4])  # one process × 4 devices, here (8 fake CPU devices)
    port = portpicker.pick_unused_port()
    multi = tmp_path / "multi.npz"
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", "2", str(port), str(multi)], env=_env(),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    b = np.load(multi)
    assert sorted(a) == sorted(b.files)
    np.testing.assert_allclose(b["losses"], a["losses"], atol=1e-5, rtol=1e-5)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=1e-5, err_msg=k)

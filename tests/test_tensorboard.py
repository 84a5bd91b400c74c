"""MetricWriter's TensorBoard events (tensorboardX) read back with TensorBoard's own reader, purge on resume included."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from tests.tb_util import load_run, scalar_series
from uamix_jax.train.metrics import MetricWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = {1: {"loss": 4.25, "lr": 1e-4, "nn_accuracy": 0.3}, 2: {"loss": 3.5, "lr": 2e-4, "nn_accuracy": 0.35},
        3: {"loss": 3.125, "lr": 3e-4, "nn_accuracy": 0.5}}


def test_scalars_read_back_with_tensorboard_and_equal_the_jsonl(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step, row in ROWS.items():
        writer.write(step, {**row, "phase": "warmup", "grad_norm": np.float32(0.5) * step})
    writer.write(4, {"loss": float("nan")})  # not finite: kept in the JSONL as text, left out of TensorBoard
    writer.close()
    run = load_run(tmp_path / "tensorboard")
    assert sorted(run.Tags()["scalars"]) == ["grad_norm", "loss", "lr", "nn_accuracy"]  # the text field is skipped
    for tag in ("loss", "lr", "nn_accuracy"):
        # TensorBoard stores float32 simple values
        assert scalar_series(tmp_path / "tensorboard", tag) == {s: float(np.float32(r[tag])) for s, r in ROWS.items()}
    assert scalar_series(tmp_path / "tensorboard", "grad_norm") == {1: 0.5, 2: 1.0, 3: 1.5}
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[3]["loss"] == "nan"
    assert all(rows[s - 1][k] == v for s, r in ROWS.items() for k, v in r.items())
    with pytest.raises(KeyError, match="no scalar tag 'missing'"):
        scalar_series(tmp_path / "tensorboard", "missing")


def test_resume_purges_later_events_and_jsonl_rows(tmp_path):
    """A run logs steps 1-5, is resumed from step 3's checkpoint and logs 4-6 again with other values: TensorBoard
    shows 1-3 from the first file and 4-6 from the second, and so does the JSONL."""
    first = MetricWriter(str(tmp_path))
    for step in range(1, 6):
        first.write(step, {"loss": float(step)})
    first.close()
    resumed = MetricWriter(str(tmp_path), resume_step=3)  # the same second as `first`: files must still differ
    for step in range(4, 7):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()
    files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    want = {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0, 5: 50.0, 6: 60.0}
    assert scalar_series(tmp_path / "tensorboard", "loss") == want
    assert {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))} == want
    # Without the purge marker TensorBoard would keep the first run's 4 and 5: the first file alone shows them.
    (tmp_path / "first").mkdir()
    files[0].rename(tmp_path / "first" / files[0].name)
    assert scalar_series(tmp_path / "first", "loss") == {s: float(s) for s in range(1, 6)}


def test_events_survive_sigkill(tmp_path):
    """A process killed with SIGKILL (no close) 1.75 flush periods (flush_secs = 2) after its last write has every
    event on disk."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from uamix_jax.train.metrics import MetricWriter
        writer = MetricWriter({str(tmp_path)!r})
        for step in (1, 2, 3):
            writer.write(step, {{"loss": step / 4}})
        time.sleep(3.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert scalar_series(tmp_path / "tensorboard", "loss") == {1: 0.25, 2: 0.5, 3: 0.75}
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()] == [0.25, 0.5, 0.75]


def test_processes_other_than_zero_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    writer = MetricWriter(str(tmp_path / "w"), resume_step=2)
    writer.write(3, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()

"""Every config and preset builds from the one base, and its effective learning-rate schedule is the recorded one.

tests/data/effective_schedules.json was recorded from the configs as they were before they moved onto the one base
(`uamix_jax.config_base`): per file:variant, the peak rate, warmup steps, total steps and the rate at a few steps,
for a data set of `clips` clips. Recomputing them through `uamix_jax.schedules` (the one place the trainer, every
task's optimizer and the linear probe take their rate from) must give the same values.
"""
import json
import os

import numpy as np
import pytest

from tests.train_util import ROOT, load_config
from uamix_jax.config_base import base_config
from uamix_jax.schedules import lr_schedule, peak_lr, warmup_steps

RECORD = json.load(open(os.path.join(ROOT, "tests", "data", "effective_schedules.json"), encoding="utf-8"))
VARIANTS = sorted(RECORD["configs"])  # "file.py:variant"


def _steps(config, clips: int) -> tuple[int, int]:
    """(global batch, total steps) the trainer derives (the linear probe: its batch is at most the clip count)."""
    batch = min(config.train.global_batch, clips) if config.task == "linear_probe" else config.train.global_batch
    return batch, config.train.total_steps or config.train.epochs * max(1, clips // batch)


def _flat_keys(c, prefix=""):
    out = set()
    for k, v in c.items():
        out |= _flat_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}"}
    return out


def test_every_config_file_and_variant_is_in_the_record():
    files = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    assert sorted({v.split(":")[0] for v in VARIANTS}) == files


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_builds_from_the_base_with_its_recorded_schedule(variant):
    name, arg = variant.split(":")
    config = load_config(name[:-3], arg or None)
    base = _flat_keys(base_config(config.task))
    assert base <= _flat_keys(config), sorted(base - _flat_keys(config))
    want = RECORD["configs"][variant]
    if want is None:  # few-shot evaluation: nothing trains
        assert "optim" not in config
        return
    batch, total = _steps(config, RECORD["clips"])
    assert total == want["total_steps"]
    assert warmup_steps(config.optim, total) == want["warmup_steps"]
    assert peak_lr(config.optim, batch) == pytest.approx(want["peak_lr"], rel=1e-12)
    schedule = lr_schedule(config.optim, batch, total)
    # atol: the recorded fine-tuning and probe rates came from optax's linear warmup, which computes
    # peak − peak·(1 − s/W) in float32: an absolute rounding of a few float32 ulps of the peak.
    for step, lr in want["lr"].items():
        np.testing.assert_allclose(float(schedule(int(step))), lr, rtol=2e-6, atol=1e-6 * want["peak_lr"],
                                   err_msg=f"step {step}")

"""TPU plans (uamix_jax.train.tpu_plan): training steps compiled by XLA:TPU for TPU slices on this CPU machine.

libtpu is in the test extra; without it these tests fail (the import below), they do not skip. Each real-step
compile takes 30-60 s on 2 cores whatever the model size (XLA:TPU's code generation per fusion dominates), so the
module compiles the 'mini' stage-2 step once (batch 16), in one test so that pytest-xdist's workers do not each compile
it (the max-batch search runs on a memory line through that plan), and lowers ViT-B without compiling it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import libtpu  # noqa: F401  (a missing TPU compiler fails this module)
import pytest
from jax.sharding import PartitionSpec as P

from tests.train_util import ROOT, load_config
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.train import optim, tpu_plan
from uamix_jax.train.accelerators import CHIPS, no_persistent_cache, num_processes, slice_mesh, slice_of
from uamix_jax.train.hlo_collectives import collective_totals, collectives
from uamix_jax.train.tune import tune_groups

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from train_step import step_flops  # noqa: E402  (benchmarks/train_step.py's analytic matmul count)


def _mini_stage2():
    config = load_config("test", "stage2")
    config.model.size = "mini"  # ViT-Ti width, 4 blocks: matmuls dominate enough for a FLOP count to mean something
    return config


def test_mini_stage2_step_on_a_small_tpu_slice():
    """The 'mini' stage-2 step (test config: T = 128, 1.5 s clips, queue 64, mix groups of 2) on v5e-4, batch 16:
    it compiles, its FLOPs agree with the matmul count, and --max-batch's search finds the boundary of a memory line
    through this plan."""
    config = _mini_stage2()
    plan = tpu_plan.plan_step(config, "v5e-4", 16)
    _check_compiled(config, plan)
    _check_flops(config, plan)
    _check_max_batch(config, plan)


def _check_compiled(config, plan):
    assert (plan.task, plan.devices, plan.processes, plan.per_device_batch) == ("stage2", 4, 1, 4)
    assert plan.total == plan.argument + plan.output + plan.temp + plan.code - plan.alias
    assert plan.fits and plan.hbm == pytest.approx(15.75 * tpu_plan.GIB, rel=0.01)  # the compiler's v5e limit
    _, state = tpu_plan.lower_step(config, slice_mesh("v5e-4")[0], 16)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    rows = 4 * (int(1.5 * 16000) * 4 + 3 * 4)  # this chip's waveform, length, index and label rows
    assert plan.alias >= 0.99 * state_bytes  # the donated state is updated in place
    assert plan.argument >= state_bytes + rows
    # collectives: the gradient all-reduce carries each trainable float32 parameter once; the rest (BatchNorm
    # statistics, the gathered predictions, queue rows and soft targets) is a few KiB at this size
    trainable = optim.count_params(state.params, optim.trainable_mask(
        optim.label_params(state.params, tune_groups(config, 4).rules)))
    all_reduce, all_gather = plan.collectives["all-reduce"][1], plan.collectives["all-gather"][1]
    assert 4 * trainable <= all_reduce <= 4 * trainable + 64 * 1024
    assert 0 < all_gather <= 16 * 1024
    assert plan.largest_collectives[0].kind == "all-reduce" and "transpose(jvp(" in plan.largest_collectives[0].op_name


def _check_flops(config, plan):
    """Cost analysis vs benchmarks/train_step.py's analytic matmul FLOPs, per chip (batch 4).

    The count is a lower bound up to < 1 % (it gives the first trained block an input gradient the step does not
    need), and leaves out work the compiler counts: the fbank (XLA:TPU computes the 512-point FFT as DFT matmuls:
    ~70 MFLOP a 1.5-s clip, 6-7 % of this step) and elementwise work (LayerNorm, GELU, softmax, BatchNorm, AdamW,
    ~5-8 % at width 192). Measured 1.15; tolerance [0.99, 1.25].
    """
    enc = AudioMAEEncoder.from_size("mini", target_length=128)
    per_chip = config.copy_and_resolve_references()
    per_chip.train.global_batch = plan.per_device_batch
    analytic = step_flops(per_chip, enc)
    assert 0.99 <= plan.flops / analytic <= 1.25, plan.flops / analytic
    assert plan.floor_s == pytest.approx(plan.flops / 197e12)


def _check_max_batch(config, plan16):
    """--max-batch on a memory line through batch 16's real plan (fixed + per-clip · b, as the ViT-B compiles
    measured it): for every HBM it returns the largest batch the step takes (v5e-4 × mix groups of 2, dividing the
    64-row queue: 8, 16, 32, 64) whose total fits, compiling at most four of them."""
    import dataclasses

    per_clip = plan16.total // 64  # a quarter of the step's bytes scale with the batch
    fixed = plan16.total - 16 * per_clip
    compiled = []

    def fake_plan_step(config, slice_name, global_batch, hbm_bytes):
        compiled.append(global_batch)
        total = fixed + per_clip * global_batch
        return dataclasses.replace(plan16, global_batch=global_batch, total=total, hbm=hbm_bytes,
                                   fits=total <= hbm_bytes)

    allowed = [8, 16, 32, 64]
    mp = pytest.MonkeyPatch()
    mp.setattr(tpu_plan, "plan_step", fake_plan_step)
    try:
        for hbm in [fixed + per_clip * b + d for b in allowed for d in (-1, 0)] + [fixed - 1, 10 * plan16.total]:
            compiled.clear()
            best, plans = tpu_plan.max_batch(config, "v5e-4", hbm)
            expected = [b for b in allowed if fixed + per_clip * b <= hbm]
            assert (best.global_batch if best else None) == (expected[-1] if expected else None), hbm
            assert best is None or (best.fits and best.total <= hbm and best.hbm == hbm)
            assert all(not plans[b].fits for b in plans if b > (best.global_batch if best else 0))
            assert len(compiled) == len(set(compiled)) <= 4
    finally:
        mp.undo()


def test_collectives_are_counted_by_their_operand_bytes():
    mesh, _ = slice_mesh("v5e-4")

    def f(x, y):
        return jax.lax.psum(x, "data"), jax.lax.all_gather(y, "data", tiled=True)

    fn = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P("data"))))
    x = jax.ShapeDtypeStruct((4 * 1000,), jnp.float32)
    y = jax.ShapeDtypeStruct((4 * 1024,), jnp.bfloat16)  # XLA:TPU turns a gather of a few bytes into an all-reduce
    with no_persistent_cache():
        found = collective_totals(collectives(fn.lower(x, y).compile().as_text()))
    assert found["all-reduce"] == (1, 4000) and found["all-gather"] == (1, 2048)  # this chip's operand bytes


def test_planning_vit_b_allocates_nothing():
    """Lowering ViT-B's stage-2 step for v5e-8 at the paper's batch: abstract state and batch only (compiling it
    would take about two minutes; the lowering holds every full-size shape)."""
    config = load_config("stage2")
    before = sum(a.nbytes for a in jax.live_arrays())
    lowered, state = tpu_plan.lower_step(config, slice_mesh("v5e-8")[0], 128)
    after = sum(a.nbytes for a in jax.live_arrays())
    assert optim.count_params(state.params) > 85_000_000  # ViT-B and its head, at full size
    assert state.queue.shape == (65536, 256)
    assert "f32[65536,256]" in lowered.as_text(dialect="hlo")
    assert after - before < 2**20


def test_cli_names_the_slices_it_knows():
    proc = subprocess.run([sys.executable, "tools/plan_tpu.py", "--config=configs/test.py:stage2", "--topology=v5e-3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode != 0
    assert "unknown TPU slice 'v5e-3'" in proc.stderr and "v5e-8" in proc.stderr and "v6e-1" in proc.stderr


def test_slices_describe_the_chips_they_name():
    for name in ("v5e-1", "v6e-1", "v4-8", "v5e-8", "v5p-8", "v6e-8", "v5e-16"):
        mesh, s = slice_mesh(name)
        chips = int(name.split("-")[1]) // (2 if s.chip in ("v4", "v5p") else 1)
        assert mesh.devices.size == chips, name
        assert {d.device_kind for d in mesh.devices.flat} == {CHIPS[s.chip].device_kind}
        assert slice_of(mesh.devices.flat) == name  # what a notebook on that TPU finds
    assert num_processes(slice_mesh("v5e-16")[0]) == 4
    assert num_processes(slice_mesh("v5e-8")[0]) == 1
    assert slice_of(jax.devices()) is None  # the CPU

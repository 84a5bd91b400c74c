#!/usr/bin/env python3
"""Compile a config's training step for a TPU slice on this machine (no TPU needed) and print its plan per chip.

    python tools/plan_tpu.py --config=configs/stage2.py --topology=v5e-8 [--global-batch N] [--max-batch]
                             [--hbm-gib X] [--config.dtype=bfloat16 ...]

Whatever task the config names (pretraining, stage 1 or 2 tuning, fine-tuning) is compiled by XLA:TPU from
abstract shapes (nothing is allocated) with the trainer's own sharding over every chip of the slice. Printed per
chip: arguments, outputs, temporaries, generated code and their total against the chip's HBM (fits or not, with the
headroom); FLOPs per step and the step time at 100 % of the chip's bf16 peak (a floor); bytes moved by collectives.
`--max-batch` finds the largest global batch that fits (multiples of chips × rows per mix group): a line of memory
against batch through two compiles, confirmed and refitted, then bisection to the boundary;
`--hbm-gib` plans against less memory than the chip has. Needs libtpu: pip install -e '.[tpu]'.
Slices: v5e-1 ... v5e-256, v6e-1 ... v6e-256 (chips), v4-8 ... v4-128, v5p-8 ... v5p-128 (TensorCores), see
`uamix_jax.train.accelerators.SLICES`. A multi-host slice compiles the program every host of that job compiles.
One GPU (a100-40gb, a100-80gb, h100-80gb) compiles with XLA:GPU when JAX's CUDA plugin is installed.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the local backend only traces; libtpu compiles without a TPU

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A training config, e.g. configs/stage2.py or configs/finetune.py.",
                                lock_config=True)
flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e-1, v6e-1 (Colab), v4-8, v5e-8, v5p-8, v6e-8, v5e-16.")
flags.DEFINE_integer("global-batch", None, "Global batch to plan (default: config.train.global_batch).")
flags.DEFINE_bool("max-batch", False,
                  "Find the largest global batch that fits (a line through two compiles, then bisection).")
flags.DEFINE_float("hbm-gib", None, "Plan against this much HBM per chip in GiB (default: what the compiler allows).")
flags.mark_flags_as_required(["config", "topology"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from uamix_jax.train import tpu_plan

    name = FLAGS.topology
    if name not in tpu_plan.SLICES:
        raise app.UsageError(f"unknown TPU slice {name!r}; known slices: {', '.join(tpu_plan.SLICES)}")
    try:
        tpu_plan.require_compiler(tpu_plan.SLICES[name].platform)
    except ImportError as e:
        raise app.UsageError(str(e)) from None
    config = FLAGS.config
    hbm = int(FLAGS["hbm-gib"].value * tpu_plan.GIB) if FLAGS["hbm-gib"].value else None
    chip = tpu_plan.CHIPS[tpu_plan.SLICES[name].chip]
    print(f"{chip.name}: {chip.hbm} HBM, {chip.bf16_flops / 1e12:.0f} TFLOP/s bf16 per chip ({chip.url})",
          flush=True)
    if not FLAGS["max-batch"].value:
        try:
            plan = tpu_plan.plan_step(config, name, FLAGS["global-batch"].value, hbm)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(tpu_plan.format_plan(plan), flush=True)
        return
    best, plans = tpu_plan.max_batch(
        config, name, hbm, log=lambda p: print(f"  global batch {p.global_batch}: "
                                               + (f"total {p.total / tpu_plan.GIB:.2f} GiB" if p.total else
                                                  f"rejected, temporaries {p.temp / tpu_plan.GIB:.2f} GiB")
                                               + f" → {'fits' if p.fits else 'does not fit'} "
                                               f"({p.compile_s:.0f} s)", flush=True))
    if best is None:
        print(f"no global batch fits: even {min(plans)} ({min(plans) // plans[min(plans)].devices} per chip) "
              f"does not", flush=True)
        return
    print(tpu_plan.format_plan(best))
    bigger = [b for b in sorted(plans) if b > best.global_batch]
    print(f"largest global batch that fits: {best.global_batch} ({best.per_device_batch} per chip); "
          + (f"{bigger[0]} does not" if bigger else "the largest the step takes") + f" ({len(plans)} compiles)",
          flush=True)


if __name__ == "__main__":
    app.run(main)

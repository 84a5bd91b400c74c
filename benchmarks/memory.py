"""Device memory of the stage-2 training step (ViT-B, T = 1024): XLA's memory analysis of the compiled step.

    python benchmarks/memory.py [--size base] [--target-length 1024] [--batches 8,16,32,64]
                                [--dtypes float32,bfloat16] [--remat] [--topology v5e-1] [--cpu]

With libtpu installed (`pip install -e '.[tpu]'`) the step is compiled by XLA:TPU for one TPU slice (--topology,
default v5e-1; `uamix_jax.train.tpu_plan`, no TPU needed): memory per chip as the TPU will hold it, bfloat16 at
half the activations of float32, and batches over the chip's memory rejected by the compiler (their temporaries
printed); the largest batch comes from the line through the batches that fit, under the chip's own limit. Without
libtpu, or with --cpu, it is compiled for the local backend as below, and the figures are labelled as the CPU
compiler's.

For each per-device batch and compute dtype, the real stage-2 step (`uamix_jax.train.tune_step`: fbank, two views,
T-CutMix, ViT on both views, NNCLR head + EMA projector, 65,536-row queue, soft NNCLR loss, gradients of the top
half, AdamW, EMA and queue updates; state donated) is lowered on abstract inputs (nothing is allocated) and compiled
for the default backend; `compiled.memory_analysis()` gives the bytes of its arguments (parameters, optimizer state,
queue, batch), temporaries and outputs, and the peak is arguments + temporaries + outputs − donated aliases. On a
CPU these are the CPU compiler's estimates: its fusion and buffer reuse are not a GPU's or a TPU's, and XLA:CPU
upcasts bfloat16 arithmetic to float32 copies, so here bfloat16 shows no saving (measured: slightly more), unlike
on an accelerator; on a GPU or TPU they are that compiler's own plan. The largest batch under 16, 32 and 80 GiB
comes from a straight-line fit peak = fixed + per-sample · B through the measured batches. Compilation costs
time: each (batch, dtype) is one ViT-B compile (tens of seconds on a CPU); the time is printed per row. The last
line is the figure, e.g.
`stage-2 step memory (ViT-base, T=1024, cpu compiler estimate): B=64/device float32 45.9 GiB, bfloat16 48.3 GiB;
largest batch under 16/32/80 GiB: float32 21/44/112, bfloat16 20/41/106` (measured here with --batches 8,64; the
four ViT-B compiles took 20-104 s each on 2 busy cores).

Imports only the model, objective and step modules (and the config defaults), so it runs from a source tree on an
accelerator machine without the data packages.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from uamix_jax.config_base import tuning_config  # noqa: E402
from uamix_jax.sharding import data_mesh  # noqa: E402
from uamix_jax.train.accelerators import has_libtpu  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_bench beside this file
from step_bench import SMOKE_COMPILER_OPTIONS  # noqa: E402

GIB = 2**30
CAPACITIES_GIB = (16, 32, 80)


def stage2_config(size: str, target_length: int, dtype: str, batch: int, remat: bool, per_device: int):
    """configs/stage2.py's recipe (top_k 20, EMA 0.99, 65,536-row queue) at global `batch`, mix groups fitted to
    `per_device` rows."""
    config = tuning_config(stage=2)
    config.dtype = dtype
    config.model.update(size=size, target_length=target_length, remat=remat)
    config.nnclr.update(temperature=0.15, top_k=20, ema_momentum=0.99)
    config.train.global_batch = batch
    config.mix.group = min(config.mix.group, per_device)  # a mix group divides the per-device batch
    return config


def tpu_step_memory(size: str, target_length: int, dtype: str, batch: int, remat: bool, topology: str
                    ) -> dict[str, float]:
    """Bytes per chip of the stage-2 step compiled by XLA:TPU for `topology` at `batch` per chip; 'peak' is None
    when the compiler rejects it (then 'temp' is the temporaries it named)."""
    from uamix_jax.train import tpu_plan

    devices = tpu_plan.slice_mesh(topology)[0].devices.size
    config = stage2_config(size, target_length, dtype, batch * devices, remat, batch)
    plan = tpu_plan.plan_step(config, topology, batch * devices)
    return {"argument": plan.argument, "temp": plan.temp, "output": plan.output, "alias": plan.alias,
            "peak": plan.total or None, "hbm": plan.hbm, "compile_s": plan.compile_s}


def step_memory(size: str, target_length: int, dtype: str, batch: int, remat: bool = False,
                compiler_options: dict | None = None) -> dict[str, float]:
    """Bytes of the compiled stage-2 step at per-device `batch` on one local device (`tpu_plan.lower_step`: the
    trainer's sharded step from abstract shapes): argument, temp, output, alias, peak."""
    from uamix_jax.train.tpu_plan import lower_step

    config = stage2_config(size, target_length, dtype, batch, remat, batch)
    lowered, _ = lower_step(config, data_mesh(jax.devices()[:1]), batch)
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options)
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    out = {"argument": m.argument_size_in_bytes, "temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes}
    out["peak"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
    out["compile_s"] = seconds
    return out


def largest_batch(batches: list[int], peaks: list[float], capacity_bytes: float) -> int:
    """The largest per-device batch whose peak stays under `capacity_bytes` on the line fitted through the points."""
    per_sample, fixed = np.polyfit(np.asarray(batches, np.float64), np.asarray(peaks, np.float64), 1)
    if per_sample <= 0:
        return 0
    return max(0, int((capacity_bytes - fixed) // per_sample))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="ViT size (default: base)")
    parser.add_argument("--target-length", type=int, default=1024, help="frames T (default: 1024)")
    parser.add_argument("--batches", default="8,16,32,64", help="per-device batches (default: 8,16,32,64)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (default: both)")
    parser.add_argument("--remat", action="store_true", help="recompute each block in the backward pass")
    parser.add_argument("--topology", default="v5e-1", help="TPU slice to compile for when libtpu is installed")
    parser.add_argument("--cpu", action="store_true", help="compile for the local backend even with libtpu")
    parser.add_argument("--smoke", action="store_true",
                        help="checks the script: the 'test' ViT at T = 128, batches 2 and 4, float32, local backend, "
                             "XLA's backend optimisation off")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.target_length, args.batches, args.dtypes, args.cpu = "test", 128, "2,4", "float32", True
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    tpu = has_libtpu() and not args.cpu
    if tpu:  # the local backend only traces: keep libtpu from looking for a TPU here
        jax.config.update("jax_platforms", "cpu")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    backend = jax.default_backend()
    if tpu:
        label, device = f"TPU compiler, {args.topology}", f"{args.topology}, per chip"
    else:
        label = "cpu compiler estimate" if backend == "cpu" else f"{backend} compiler plan"
        device = f"{jax.devices()[0].device_kind}; {label}"
    print(f"stage-2 step, ViT-{args.size}, T = {args.target_length}, remat {args.remat}, one device ({device})",
          flush=True)
    print(f"{'dtype':<9} {'batch':>5}  {'arguments':>9}  {'temporaries':>11}  {'peak':>8}  compile", flush=True)
    fitted: dict[str, list[tuple[int, float]]] = {d: [] for d in dtypes}
    shown: dict[str, float | None] = {}
    hbm = None
    for dtype in dtypes:
        for b in batches:
            if tpu:
                m = tpu_step_memory(args.size, args.target_length, dtype, b, args.remat, args.topology)
                hbm = m["hbm"]
            else:
                m = step_memory(args.size, args.target_length, dtype, b, args.remat,
                                SMOKE_COMPILER_OPTIONS if args.smoke else None)
            if m["peak"] is not None:
                fitted[dtype].append((b, m["peak"]))
            shown[(dtype, b)] = m["peak"]
            peak = f"{m['peak'] / GIB:>6.2f} G" if m["peak"] is not None else "rejected"
            print(f"{dtype:<9} {b:>5}  {m['argument'] / GIB:>7.2f} G  {m['temp'] / GIB:>9.2f} G  {peak:>8}  "
                  f"{m['compile_s']:.0f} s", flush=True)
    capacities = (hbm / GIB,) if tpu else CAPACITIES_GIB
    names = "/".join(f"{c:g}" for c in capacities)
    fits = []
    for dtype in dtypes:
        if len(fitted[dtype]) >= 2:
            bs, ps = zip(*fitted[dtype])
            largest = [largest_batch(list(bs), list(ps), c * GIB) for c in capacities]
            fits.append(f"{dtype} " + "/".join(str(x) for x in largest))
            print(f"{dtype}: largest per-device batch under {names} GiB: {', '.join(str(x) for x in largest)} "
                  f"(linear fit)", flush=True)
    ref = batches[len(batches) // 2]
    cells = [f"{d} " + (f"{shown[(d, ref)] / GIB:.1f} GiB" if shown.get((d, ref)) is not None else "rejected")
             for d in dtypes]
    tail = f"; largest batch under {names} GiB: {', '.join(fits)}" if fits else ""
    print(f"stage-2 step memory (ViT-{args.size}, T={args.target_length}, {label}): B={ref}/device "
          f"{', '.join(cells)}{tail}")


if __name__ == "__main__":
    main()

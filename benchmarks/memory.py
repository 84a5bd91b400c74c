"""Device memory of the stage-2 training step (ViT-B, T = 1024): XLA's memory analysis of the compiled step.

    python benchmarks/memory.py [--size base] [--target-length 1024] [--batches 8,16,32,64]
                                [--dtypes float32,bfloat16] [--remat]

For each per-device batch and compute dtype, the real stage-2 step (`uamix_jax.train.step`: fbank, two views,
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

from uamix_jax.audio.fbank import SAMPLE_RATE  # noqa: E402
from uamix_jax.train import build, optim  # noqa: E402
from uamix_jax.train.config_base import base_config  # noqa: E402
from uamix_jax.train.step import data_mesh, make_train_step, shard_train_step  # noqa: E402

GIB = 2**30
CAPACITIES_GIB = (16, 32, 80)


def stage2_config(size: str, target_length: int, dtype: str, batch: int, remat: bool):
    """The stage-2 recipe (configs/stage2.py's numbers: top_k 20, EMA 0.99, 65,536-row queue) at one device."""
    config = base_config()
    config.stage = 2
    config.dtype = dtype
    config.model.update(size=size, target_length=target_length, remat=remat)
    config.nnclr.update(top_k=20, ema_momentum=0.99)
    config.train.global_batch = batch
    config.mix.group = min(config.mix.group, batch)  # a mix group divides the per-device batch
    return config


def step_memory(size: str, target_length: int, dtype: str, batch: int, remat: bool = False) -> dict[str, float]:
    """Bytes of the compiled stage-2 step at per-device `batch` on one device: argument, temp, output, alias, peak."""
    config = stage2_config(size, target_length, dtype, batch, remat)
    encoder, head = build.build_models(config)
    holder = {}

    def fresh(key):
        state, labels, _ = build.create_state(config, encoder, head, 1000, key)
        holder["labels"] = labels  # strings: a static side result of the trace
        return state

    state = jax.eval_shape(fresh, jax.random.key(0))  # abstract: nothing allocated
    step = make_train_step(encoder, head, build.step_options(config), optim.trainable_mask(holder["labels"]))
    mesh = data_mesh(jax.devices()[:1])
    n = int(round(config.data.clip_seconds * SAMPLE_RATE))
    shapes = {"waveform": ((batch, n), np.float32), "length": ((batch,), np.int32), "index": ((batch,), np.int32),
              "label": ((batch,), np.int32)}
    batch_abstract = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
    start = time.perf_counter()
    compiled = shard_train_step(step, mesh).lower(state, batch_abstract, jax.random.key(1)).compile()
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
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    backend = jax.default_backend()
    label = "cpu compiler estimate" if backend == "cpu" else f"{backend} compiler plan"
    print(f"stage-2 step, ViT-{args.size}, T = {args.target_length}, remat {args.remat}, one device "
          f"({jax.devices()[0].device_kind}; {label})", flush=True)
    print(f"{'dtype':<9} {'batch':>5}  {'arguments':>9}  {'temporaries':>11}  {'peak':>8}  compile", flush=True)
    peaks: dict[str, list[float]] = {d: [] for d in dtypes}
    for dtype in dtypes:
        for b in batches:
            m = step_memory(args.size, args.target_length, dtype, b, args.remat)
            peaks[dtype].append(m["peak"])
            print(f"{dtype:<9} {b:>5}  {m['argument'] / GIB:>7.2f} G  {m['temp'] / GIB:>9.2f} G  "
                  f"{m['peak'] / GIB:>6.2f} G  {m['compile_s']:.0f} s", flush=True)
    fits = []
    for dtype in dtypes:
        if len(batches) >= 2:
            largest = [largest_batch(batches, peaks[dtype], c * GIB) for c in CAPACITIES_GIB]
            fits.append(f"{dtype} " + "/".join(str(x) for x in largest))
            print(f"{dtype}: largest per-device batch under {'/'.join(map(str, CAPACITIES_GIB))} GiB: "
                  f"{', '.join(str(x) for x in largest)} (linear fit)", flush=True)
    ref = batches[len(batches) // 2]
    shown = ", ".join(f"{d} {peaks[d][batches.index(ref)] / GIB:.1f} GiB" for d in dtypes)
    tail = f"; largest batch under {'/'.join(map(str, CAPACITIES_GIB))} GiB: {', '.join(fits)}" if fits else ""
    print(f"stage-2 step memory (ViT-{args.size}, T={args.target_length}, {label}): B={ref}/device {shown}{tail}")


if __name__ == "__main__":
    main()

"""Where the time of a ViT-B training step goes on CPU: one traced step, grouped by layer and pass.

    python benchmarks/profile_train_step.py [--stage 2] [--batch 4] [--size base] [--target-length 1024]
                                            [--malloc-tuning] [--top 25]
    python benchmarks/profile_train_step.py --smoke      # train_step.py --smoke's stage-2 step

Compiles the step of benchmarks/train_step.py (the tuning step as training runs it, `tune_task` + `shard_step`),
runs it untraced, then once under `jax.profiler.trace`. Every XLA thunk in the trace is matched to its instruction in
the compiled HLO; the time is grouped by the layer its metadata names (`attn/qkv`, `attn/bqhd,bkhd->bhqk` = q·kᵀ,
`mlp/fc1`, ...; blocks merged) and by pass (forward, or backward when the op name holds `transpose(`). For fusions
holding a dot, the dot's FLOPs (2·|out|·|contracted|) give the achieved GFLOP/s, to set against the plain `jnp.dot`
rate printed with it (a dot of the encoder's fc1 shape in this step, [2B·(N+1), D] × [D, mlp]). Plain `dot` thunks
(matmuls XLA leaves to Eigen, e.g. weight gradients whose operands need a transpose) run asynchronously: their events
cover only the launch, so their work is the step's time covered by no thunk event, reported as one row with their
FLOPs. Labels come from the root op of each fusion: `attn/reduce_max` is q·kᵀ fused with the row max,
`attn/reduce_sum` the exponentials and a·v fused with the softmax denominator. The last line sums it up: the share of
the traced step in matmuls, their rate, and the share spent outside them, e.g. `profile (stage 2, ViT-base, T=1024,
B=4): matmul fusions 92% of the step at 117 GFLOP/s (82% of jnp.dot), everything else 8%`.
"""
from __future__ import annotations

import collections
import glob
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_bench, train_step beside this file

import jax  # noqa: E402

import step_bench as sb  # noqa: E402
from cpu_malloc import is_tuned  # noqa: E402
from train_step import fc1_rows, fit_mix_group, tuning_config, tuning_step  # noqa: E402
from uamix_jax.models.vit import AudioMAEEncoder  # noqa: E402

_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def _dims(text: str) -> list[int]:
    match = _SHAPE.search(text)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def parse_hlo(hlo: str) -> dict[str, tuple[str, float]]:
    """instruction name → (op name of its metadata, matmul FLOPs inside it), for every instruction of the module."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[0].lstrip("%") if not line.startswith("ENTRY") else line.split()[1].lstrip("%")
            computations[current] = []
        elif current is not None and line.startswith("  "):
            computations[current].append(line)

    def shapes_of(lines: list[str]) -> dict[str, list[int]]:
        out = {}
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?(\S+) = (\S+)", line)
            if m:
                out[m.group(1)] = _dims(m.group(2))
        return out

    def dot_flops(lines: list[str], shapes: dict[str, list[int]]) -> float:
        """2·|out|·|contracted| summed over the dots among `lines`; operand shapes from `shapes`."""
        flops = 0.0
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?\S+ = (\S+) dot\(%?([\w.\-]+), .*lhs_contracting_dims=\{([\d,]*)\}", line)
            if m:
                lhs = shapes.get(m.group(2), [])
                contracted = math.prod(lhs[int(i)] for i in m.group(3).split(",") if i) if lhs else 0
                flops += 2.0 * math.prod(_dims(m.group(1))) * contracted
        return flops

    fused = {c for lines in computations.values() for line in lines for c in re.findall(r"calls=%?([\w.\-]+)", line)}
    info = {}
    for comp, lines in computations.items():
        if comp in fused:  # instructions inside a fusion are not thunks of their own
            continue
        shapes = shapes_of(lines)
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?(\S+) = \S+ (\w[\w\-]*)\(", line)
            if not m:
                continue
            name, op = m.group(1), m.group(2)
            meta = re.search(r'op_name="([^"]*)"', line)
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called:
                body = computations.get(called.group(1), [])
                flops = dot_flops(body, shapes_of(body))
            else:
                flops = dot_flops([line], shapes)
            info[name] = (meta.group(1) if meta else op, flops)
    return info


def layer_of(op_name: str) -> tuple[str, str]:
    """('attn/qkv', 'backward') from 'jit(step)/.../transpose(jvp(AudioMAEEncoder))/blocks_6/attn/qkv/dot_general'."""
    passname = "backward" if "transpose(" in op_name else "forward"
    m = re.search(r"blocks_\d+/(.*)", op_name)
    if m:
        parts = m.group(1).split("/")
        layer = "/".join(parts[:2]) if parts[0] in ("attn", "mlp") else parts[0]
        return f"block {layer}", passname
    for key in ("patch_embed", "NNCLRHead", "nearest_neighbour", "kaldi_fbank", "adamw", "update_queue", "norm"):
        if key in op_name:
            return key, passname
    return "other: " + re.sub(r"^jit\([^)]*\)/", "", op_name).split("/")[-1][:30], passname


def thunk_intervals(xplane: str) -> list[tuple[int, int, str]]:
    """(start ns, end ns, thunk name) of every thunk event on XLA's Eigen threads, in start order."""
    profile = jax.profiler.ProfileData.from_file(xplane)
    out = []
    for plane in profile.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the threads that run XLA's thunks
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "end:", "Slinky", "ThreadpoolListener")):
                    out.append((event.start_ns, event.start_ns + event.duration_ns, event.name))
    return sorted(out)


def span_and_union(intervals: list[tuple[int, int, str]]) -> tuple[float, float]:
    """Seconds from the first thunk's start to the last one's end, and seconds covered by at least one thunk."""
    covered, cur_start, cur_end = 0, None, None
    for start, end, _ in intervals:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                covered += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    covered += cur_end - cur_start
    return (intervals[-1][1] - intervals[0][0]) * 1e-9, covered * 1e-9


def main(argv: Sequence[str] | None = None) -> None:
    def add(parser):
        parser.add_argument("--stage", type=int, default=2)
        parser.add_argument("--top", type=int, default=25)

    args = sb.step_args(__doc__, __file__, argv, batch=4, repeats=2, smoke_batch=4, torch_flag=False, add=add)
    config = fit_mix_group(tuning_config(args.stage, args.size, args.target_length, args.batch, smoke=args.smoke))
    encoder = AudioMAEEncoder.from_config(config.model)
    run = tuning_step(config, clip_from_config=False, smoke=args.smoke)
    run()  # the first call still page-faults its buffers in
    untraced = sb.best_of(run, args.repeats)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            run()
        intervals = thunk_intervals(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0])
    info = parse_hlo(run.compiled.as_text())

    # Plain `dot` thunks (matmuls XLA does not hand to YNNPACK, e.g. some weight gradients) run asynchronously on
    # Eigen's pool: their events cover only the launch, and their work shows as time with no thunk event running.
    groups: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    async_flops = 0.0
    for start_ns, end_ns, name in intervals:
        op_name, flops = info.get(name, (name, 0.0))
        if name.startswith("dot"):
            async_flops += flops
            continue
        groups[layer_of(op_name)][0] += (end_ns - start_ns) * 1e-9
        groups[layer_of(op_name)][1] += flops
    span, covered = span_and_union(intervals)
    groups[("async Eigen dots (uncovered time)", "both")] = [span - covered, async_flops]
    total = sum(s for s, _ in groups.values())

    rows = fc1_rows(config, encoder)
    peak = sb.dot_rate(rows, encoder.width, encoder.mlp_dim) / 1e9
    label = f"stage {args.stage}, ViT-{config.model.size}, T={encoder.target_length}, B={args.batch}"
    print(f"{label}: step {untraced:.3f} s untraced, {span:.3f} s traced (thunk events {total - (span - covered):.3f} "
          f"s, uncovered {span - covered:.3f} s); {sb.describe_dot(rows, encoder.width, encoder.mlp_dim, peak * 1e9)}; "
          f"{sb.machine_line(is_tuned())}")
    print(f"{'layer':34s} {'pass':9s} {'seconds':>8s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for (layer, passname), (seconds, flops) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        rate = f"{flops / seconds / 1e9:8.0f}" if flops else f"{'-':>8s}"
        print(f"{layer:34s} {passname:9s} {seconds:8.2f} {100 * seconds / total:5.1f}% {flops / 1e9:7.0f} {rate}")
    mm_s = sum(s for s, f in groups.values() if f)
    mm_f = sum(f for _, f in groups.values())
    if not mm_s:
        raise SystemExit("profile_train_step.py: the trace holds no matmul fusion; nothing to report")
    print(f"profile ({label}): matmul fusions {100 * mm_s / total:.0f}% of the step at "
          f"{mm_f / mm_s / 1e9:.0f} GFLOP/s ({100 * mm_f / mm_s / 1e9 / peak:.0f}% of jnp.dot), "
          f"everything else {100 * (1 - mm_s / total):.0f}%")


if __name__ == "__main__":
    main()

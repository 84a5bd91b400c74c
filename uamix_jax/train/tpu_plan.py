"""A config's training step compiled for a TPU slice (or a GPU) on any machine: memory per chip, FLOPs, collectives,
and the largest batch that fits.

The step is compiled exactly as the trainer runs it, `jit(shard_map(step))` over a 1-D 'data' mesh of every chip of
the slice, state and key replicated, batch rows split, state donated (`uamix_jax.sharding.shard_step`), by
the real compiler (XLA:TPU from libtpu: `pip install -e '.[tpu]'`) for compile-only devices
(`uamix_jax.train.accelerators`), from abstract shapes: nothing is allocated. A multi-host slice (v5e-16, v4-16, ...)
is compiled as each of its hosts compiles it in a `--distributed` run: one SPMD program over the global mesh of all
chips, the same on every host, each host feeding global_batch / hosts rows.

Per chip, from the compiled executable:
- memory (`memory_analysis()`): arguments (parameters, optimizer state, queue, this chip's batch rows), outputs,
  temporaries and generated code; total = arguments + outputs + temporaries + code − aliased (the donated state is
  both an argument and an output, counted once), against the memory the compiler allows the chip
  (`accelerators.compiler_hbm_bytes`); a step that does not fit is rejected by XLA:TPU, which names the size of its
  temporaries;
- FLOPs (`cost_analysis()`) and the step time at 100 % of the chip's bf16 peak: a floor, never a prediction;
- bytes moved by collectives per step (`hlo_collectives`): operand bytes of every all-reduce, all-gather,
  reduce-scatter, collective-permute and all-to-all in the compiled HLO.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from uamix_jax.models.precision import check_precision
from uamix_jax.train import batch_search
from uamix_jax.train.accelerators import (
    CHIPS, GIB, SLICES, TEMPORARIES, compiler_hbm_bytes, no_persistent_cache, num_processes, parse_bytes,
    require_compiler, slice_mesh)
from uamix_jax.train.hlo_collectives import Collective, collective_totals, collectives
from uamix_jax.sharding import AXIS, shard_step
from uamix_jax.train.plan_inputs import (abstract_batch, allowed_global_batches, batch_multiple, planning_task,
                                         task_name)

# Without a GPU, XLA:GPU cannot autotune and its default tiling rejects some Triton GEMMs ("Couldn't find output
# tile sizes"): plan GPUs with cuBLAS GEMMs, one of the two kernels the autotuner chooses between on a real GPU.
COMPILER_OPTIONS = {"cuda": {"xla_gpu_enable_triton_gemm": False}}

__all__ = ["CHIPS", "GIB", "SLICES", "StepPlan", "format_plan", "lower_step", "max_batch", "plan_step",
           "require_compiler", "slice_mesh"]


@dataclasses.dataclass
class StepPlan:
    """One compile of a config's step for a slice; bytes and FLOPs are per chip."""

    task: str
    slice: str
    chip: str
    devices: int
    processes: int
    global_batch: int
    hbm: int  # the limit compared against (the compiler's, or --hbm-gib)
    fits: bool
    argument: int = 0
    output: int = 0
    temp: int = 0
    code: int = 0
    alias: int = 0
    total: int = 0  # argument + output + temp + code − alias; 0 when the compiler rejected the step
    flops: float = 0.0
    collectives: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    largest_collectives: list[Collective] = dataclasses.field(default_factory=list)
    queue: dict[str, float] = dataclasses.field(default_factory=dict)
    compile_s: float = 0.0
    rejected: str = ""  # the compiler's out-of-memory message

    @property
    def per_device_batch(self) -> int:
        return self.global_batch // self.devices

    @property
    def floor_s(self) -> float:
        """Step time at 100 % of the chip's bf16 peak: a floor."""
        return self.flops / CHIPS[self.chip].bf16_flops

    def row(self) -> dict[str, Any]:
        """The plan as plain JSON values."""
        out = dataclasses.asdict(self)
        out["largest_collectives"] = [dataclasses.asdict(c) for c in self.largest_collectives]
        out.update(per_device_batch=self.per_device_batch, floor_s=self.floor_s)
        return out


def _replicated(tree: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def _queue_cost(state: Any, per_device: int) -> dict[str, float]:
    """The NNCLR queue per chip: its bytes in the state, the look-up's FLOPs (both views, 2·b·K·D each) and the
    similarity rows it builds ([b, K] float32 per view)."""
    if state.queue is None:
        return {}
    k, d = state.queue.shape
    held = sum(x.size * x.dtype.itemsize for x in (state.queue, state.queue_ids, state.queue_labels))
    return {"rows": k, "bytes": float(held), "lookup_flops": float(2 * 2 * per_device * k * d),
            "similarity_bytes": float(2 * per_device * k * 4)}


def check_batch(config: ml_collections.ConfigDict, global_batch: int, devices: int, processes: int) -> None:
    """Raises ValueError unless the step takes this global batch on these devices and hosts."""
    if global_batch % processes or global_batch not in allowed_global_batches(config, devices, global_batch):
        near = allowed_global_batches(config, devices, 2 * global_batch + devices * batch_multiple(config))
        raise ValueError(
            f"global batch {global_batch} does not split on {devices} devices / {processes} hosts: it must be a "
            f"multiple of {devices} devices × {batch_multiple(config)} rows per mix group"
            + (f" and divide the queue's {config.nnclr.queue_size} rows" if task_name(config).startswith("stage")
               else "") + f"; nearby batches that do: {near[-8:]}")


def lower_step(config: ml_collections.ConfigDict, mesh: Mesh, global_batch: int) -> tuple[jax.stages.Lowered, Any]:
    """(config's step lowered for `mesh` at `global_batch` from abstract shapes, the abstract state): the trainer's
    jit(shard_map(step)) with the state and key replicated and the batch split over 'data'. Allocates nothing."""
    task = planning_task(config, mesh.devices.size, num_processes(mesh), global_batch)
    replicated = NamedSharding(mesh, P())
    state = _replicated(task.state, replicated)
    data = _replicated(abstract_batch(task, config, global_batch), NamedSharding(mesh, P(AXIS)))
    key = _replicated(jax.eval_shape(lambda: jax.random.key(0)), replicated)
    with jax.default_matmul_precision(check_precision(config.get("precision", "default"))):
        return shard_step(task.step, mesh).lower(state, data, key), state


def plan_step(config: ml_collections.ConfigDict, slice_name: str, global_batch: int | None = None,
              hbm_bytes: int | None = None, *, keep_collectives: int = 6) -> StepPlan:
    """Compiles config's training step for `slice_name` at `global_batch` (default config.train.global_batch)."""
    mesh, s = slice_mesh(slice_name)
    devices, processes = mesh.devices.size, num_processes(mesh)
    batch = int(global_batch or config.train.global_batch)
    check_batch(config, batch, devices, processes)
    hbm = int(hbm_bytes or compiler_hbm_bytes(mesh, s.chip))
    lowered, state = lower_step(config, mesh, batch)
    plan = StepPlan(task_name(config), slice_name, s.chip, devices, processes, batch, hbm, fits=False,
                    queue=_queue_cost(state, batch // devices))
    start = time.perf_counter()
    try:
        with no_persistent_cache():
            compiled = lowered.compile(COMPILER_OPTIONS.get(s.platform))
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        plan.compile_s = time.perf_counter() - start
        plan.temp = parse_bytes(TEMPORARIES, str(e)) or 0
        plan.rejected = str(e).strip().splitlines()[0]
        return plan
    plan.compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    plan.argument, plan.output, plan.temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
    plan.code, plan.alias = m.generated_code_size_in_bytes, m.alias_size_in_bytes
    plan.total = plan.argument + plan.output + plan.temp + plan.code - plan.alias
    plan.fits = plan.total <= hbm
    cost = compiled.cost_analysis() or lowered.cost_analysis() or {}  # XLA:GPU without a device: the HLO's
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    plan.flops = float(cost.get("flops", 0.0))
    found = collectives(compiled.as_text())
    plan.collectives = collective_totals(found)
    plan.largest_collectives = sorted(found, key=lambda c: -c.bytes)[:keep_collectives]
    return plan


def max_batch(config: ml_collections.ConfigDict, slice_name: str, hbm_bytes: int | None = None,
              log: Callable[[StepPlan], None] | None = None, upto_per_chip: int = 4096,
              known: dict[int, StepPlan] | None = None) -> tuple[StepPlan | None, dict[int, StepPlan]]:
    """(plan of the largest global batch that fits, every plan compiled on the way, keyed by global batch).

    `batch_search.largest(..., exact=True)` over the global batches the step takes (`plan_inputs.
    allowed_global_batches`: multiples of devices × rows per mix group; for tuning, divisors of the queue size),
    from the config's own batch: a line through two compiles, confirmed and refitted, then bisection between the
    largest batch that fits and the smallest rejected one; a step whose memory is linear in the batch takes about four
    compiles. None when the smallest does not fit. `known`: plans of this config and slice already compiled (by
    global batch), reused, judged against this HBM.
    """
    mesh, s = slice_mesh(slice_name)
    allowed = allowed_global_batches(config, mesh.devices.size, upto_per_chip * mesh.devices.size)
    if not allowed:
        raise ValueError(f"no global batch splits over the {mesh.devices.size} devices of {slice_name}")
    hbm = int(hbm_bytes or compiler_hbm_bytes(mesh, s.chip))
    plans = {b: dataclasses.replace(p, hbm=hbm, fits=bool(p.total) and p.total <= hbm)
             for b, p in (known or {}).items()}

    def measure(b: int) -> batch_search.Fit:
        if b not in plans:
            plans[b] = plan_step(config, slice_name, b, hbm)
            if log is not None:
                log(plans[b])
        return batch_search.Fit(plans[b].fits, plans[b].total, plans[b].temp, hbm)

    found = batch_search.largest(allowed, measure, start=int(config.train.global_batch), exact=True)
    return (plans[found.best] if found.best else None), plans


def format_plan(plan: StepPlan) -> str:
    """The plan as the lines tools/plan_tpu.py prints (GiB per chip)."""
    chip = CHIPS[plan.chip]
    g = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    head = (f"{plan.task} step on {plan.slice} ({plan.devices} × {chip.name}, {plan.processes} host"
            f"{'s' if plan.processes > 1 else ''}): global batch {plan.global_batch} = {plan.per_device_batch} per "
            f"chip; compiled in {plan.compile_s:.0f} s")
    if plan.rejected:
        return "\n".join([head, f"  does NOT fit: the compiler rejects it: temporaries alone {g(plan.temp)} > "
                                f"{g(plan.hbm)} HBM ({plan.rejected})"])
    verdict = "fits" if plan.fits else "does NOT fit"
    lines = [head,
             (f"  memory per chip: arguments {g(plan.argument)}, outputs {g(plan.output)}, temporaries "
              f"{g(plan.temp)}, generated code {g(plan.code)}, donated (counted once) {g(plan.alias)}"),
             f"  total {g(plan.total)} of {g(plan.hbm)} HBM: {verdict}, headroom {g(plan.hbm - plan.total)}",
             (f"  FLOPs per step per chip {plan.flops:.3e}; floor at 100 % of the bf16 peak "
              f"({chip.bf16_flops / 1e12:.0f} TFLOP/s): {plan.floor_s * 1e3:.1f} ms per step") if plan.flops else
             "  FLOPs: not reported by this compiler without a device (XLA:GPU); see the same step's TPU plan",
             "  collectives per step per chip: " + ", ".join(
                 f"{k} {n} × = {b / 2**20:.1f} MiB" for k, (n, b) in plan.collectives.items() if n)
             if any(n for n, _ in plan.collectives.values()) else "  collectives per step per chip: none"]
    for c in plan.largest_collectives:
        lines.append(f"    {c.kind} {c.bytes / 2**20:.2f} MiB {c.operands[:60]}  {c.op_name[-90:]}")
    if plan.queue:
        q = plan.queue
        share = f" ({100 * q['lookup_flops'] / plan.flops:.1f} % of the step)" if plan.flops else ""
        lines.append(f"  queue: {int(q['rows'])} rows, {q['bytes'] / 2**20:.1f} MiB per chip; look-up "
                     f"{q['lookup_flops']:.2e} FLOPs{share}, similarity rows {q['similarity_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)

"""A config's training step compiled for a TPU slice on any machine: memory per chip, FLOPs, collectives, max batch.

libtpu (`pip install -e '.[tpu]'`) describes a slice without a TPU (`jax.experimental.topologies`); the step runs
there exactly as the trainer runs it, `jit(shard_map(step))` over a 1-D 'data' mesh of every chip of the slice,
state and key replicated, batch rows split, state donated (`uamix_jax.train.step.shard_train_step`), and the real
TPU compiler (XLA:TPU) compiles it from abstract shapes: nothing is allocated. A multi-host slice (v5e-16, v4-16, ...)
is compiled as each of its hosts compiles it in a `--distributed` run: one SPMD program over the global mesh of all
chips, the same on every host, each host feeding global_batch / hosts rows.

Per chip, from the compiled executable:
- memory (`memory_analysis()`): arguments (parameters, optimizer state, queue, this chip's batch rows), outputs,
  temporaries and generated code; total = arguments + outputs + temporaries + code − aliased (the donated state is
  both an argument and an output, counted once), against the HBM the compiler allows the chip (found by asking the
  compiler for more than any chip has: its error names the limit; `CHIPS` gives the documented capacity);
  a step that does not fit is rejected by the compiler, which names its temporaries' size;
- FLOPs (`cost_analysis()`) and the step time at 100 % of the chip's bf16 peak: a floor, never a prediction;
- bytes moved by collectives: the operand bytes of every all-reduce, all-gather, reduce-scatter, collective-permute
  and all-to-all in the compiled HLO (async pairs counted once, at their start).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from uamix_jax.models.precision import check_precision
from uamix_jax.train.plan_inputs import batch_multiple, planning_inputs, task_name
from uamix_jax.train.step import AXIS, shard_train_step

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU chip as Google documents it (`url`): HBM capacity in the page's unit, bf16 peak FLOP/s."""

    name: str
    device_kind: str  # jax.Device.device_kind of this chip
    hbm: str  # as documented
    hbm_bytes: float
    bf16_flops: float
    url: str


# Each figure as the chip's page on cloud.google.com states it (checked against those pages).
CHIPS = {
    "v4": Chip("TPU v4", "TPU v4", "32 GiB", 32 * GIB, 275e12, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", "TPU v5 lite", "16 GB", 16e9, 197e12, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", "TPU v5", "95 GB", 95e9, 459e12, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e (Trillium)", "TPU v6 lite", "32 GB", 32e9, 918e12, "https://cloud.google.com/tpu/docs/v6e"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A slice name users know → libtpu's `get_topology_desc(topology, 'tpu', **options)`."""

    chip: str  # key of CHIPS
    topology: str
    options: tuple[tuple[str, Any], ...] = ()


_ONE_HOST = lambda x, y: (("chips_per_host_bounds", (x, y, 1)),)  # noqa: E731  (libtpu's default is 2x2x1)
_MEGACORE = (("chip_config_name", "megacore"),)  # v4: one device per chip (default: one per TensorCore)

# Slice names count chips (v5e, v6e: one TensorCore each) or TensorCores (v4, v5p: two per chip, one device each).
# Multi-host slices take libtpu's hosts of 2x2 chips (v5e, v6e: 4-chip VMs; v4, v5p: 4 chips a host).
SLICES = {
    "v5e-1": Slice("v5e", "v5e:1x1", _ONE_HOST(1, 1)),
    "v5e-4": Slice("v5e", "v5e:2x2", _ONE_HOST(2, 2)),
    "v5e-8": Slice("v5e", "v5e:2x4", _ONE_HOST(2, 4)),
    "v5e-16": Slice("v5e", "v5e:4x4"),
    "v5e-32": Slice("v5e", "v5e:4x8"),
    "v5e-64": Slice("v5e", "v5e:8x8"),
    "v5e-128": Slice("v5e", "v5e:8x16"),
    "v5e-256": Slice("v5e", "v5e:16x16"),
    "v6e-1": Slice("v6e", "v6e:1x1", _ONE_HOST(1, 1)),
    "v6e-4": Slice("v6e", "v6e:2x2", _ONE_HOST(2, 2)),
    "v6e-8": Slice("v6e", "v6e:2x4", _ONE_HOST(2, 4)),
    "v6e-16": Slice("v6e", "v6e:4x4"),
    "v6e-32": Slice("v6e", "v6e:4x8"),
    "v6e-64": Slice("v6e", "v6e:8x8"),
    "v6e-128": Slice("v6e", "v6e:8x16"),
    "v6e-256": Slice("v6e", "v6e:16x16"),
    "v4-8": Slice("v4", "v4:2x2x1", _MEGACORE),
    "v4-16": Slice("v4", "v4:2x2x2", _MEGACORE),
    "v4-32": Slice("v4", "v4:2x2x4", _MEGACORE),
    "v4-64": Slice("v4", "v4:2x4x4", _MEGACORE),
    "v4-128": Slice("v4", "v4:4x4x4", _MEGACORE),
    "v5p-8": Slice("v5p", "v5p:2x2x1"),
    "v5p-16": Slice("v5p", "v5p:2x2x2"),
    "v5p-32": Slice("v5p", "v5p:2x2x4"),
    "v5p-64": Slice("v5p", "v5p:2x4x4"),
    "v5p-128": Slice("v5p", "v5p:4x4x4"),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def require_libtpu() -> None:
    """Raises ImportError saying what to install when libtpu (the TPU compiler) is missing."""
    if importlib.util.find_spec("libtpu") is None:
        raise ImportError(f"planning for a TPU needs libtpu, the TPU compiler: pip install -e '.[tpu]' (or "
                          f"pip install \"jax[tpu]=={jax.__version__}\"); no TPU is needed")


def slice_mesh(name: str) -> tuple[Mesh, Slice]:
    """The 'data' mesh over every chip of slice `name` (compile-only devices) and its Slice."""
    if name not in SLICES:
        raise ValueError(f"unknown TPU slice {name!r}; known slices: {', '.join(SLICES)}")
    require_libtpu()
    from jax.experimental import topologies

    s = SLICES[name]
    devices = topologies.get_topology_desc(s.topology, "tpu", **dict(s.options)).devices
    return Mesh(np.asarray(devices), (AXIS,)), s


def num_processes(mesh: Mesh) -> int:
    """Hosts of the slice: the distinct process indices of its devices."""
    return len({d.process_index for d in mesh.devices.flat})


@contextlib.contextmanager
def _no_persistent_cache():
    """Compile-only executables can be written to JAX's persistent cache but never read back: keep them out."""
    try:
        from jax._src.config import enable_compilation_cache
    except ImportError:  # pragma: no cover
        yield
        return
    with enable_compilation_cache(False):
        yield


_HBM_LIMIT = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT])\)")
_TEMPS = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_hbm_cache: dict[str, int] = {}


def _parse_bytes(pattern: re.Pattern, text: str) -> int | None:
    m = pattern.search(text)
    return None if m is None else int(float(m.group(1)) * _UNIT[m.group(2)])


def compiler_hbm_bytes(mesh: Mesh, chip: str) -> int:
    """The HBM the TPU compiler lets one chip use (v5e: 15.75 GiB of 16), from the error it raises for a program
    that needs more than any chip has; the documented capacity if the message cannot be read."""
    if chip not in _hbm_cache:
        big = jax.ShapeDtypeStruct((2**20,), jnp.float32, sharding=NamedSharding(mesh, P()))
        too_much = lambda x: jnp.sort(jnp.broadcast_to(x, (2**15, 2**20)) * jnp.arange(2.0**15)[:, None], 1).sum(0)  # noqa: E731
        limit = None
        try:
            with _no_persistent_cache():
                jax.jit(too_much).lower(big).compile()
        except jax.errors.JaxRuntimeError as e:
            limit = _parse_bytes(_HBM_LIMIT, str(e))
        _hbm_cache[chip] = limit or int(CHIPS[chip].hbm_bytes)
    return _hbm_cache[chip]


# ------------------------------------------------------------------------------------------ collectives in HLO
_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_ELEMENT_BYTES) + r")\[([\d,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _balanced(text: str, start: int) -> int:
    """The index just past the ')' closing the '(' at text[start], skipping {...} (layouts, attributes)."""
    depth = braces = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            braces += 1
        elif ch == "}":
            braces -= 1
        elif braces == 0 and ch == "(":
            depth += 1
        elif braces == 0 and ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _instructions(hlo_text: str):
    """(name, result type, opcode, operand text, line) of every instruction of an HLO module's text."""
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m is None:
            continue
        i = m.end()
        j = _balanced(line, i) if line.startswith("(", i) else line.index(" ", i)
        k = line.find("(", j)
        if k < 0:
            continue
        yield m.group(1), line[i:j], line[j:k].strip(), line[k + 1:_balanced(line, k) - 1], line


def _nbytes(types: str) -> int:
    return sum(_ELEMENT_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
               for t, dims in _SHAPE.findall(types))


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int  # of its operands, per device
    operands: str  # their shapes, e.g. 'f32[768,2304] bf16[12]'
    op_name: str  # the JAX source of the op (HLO metadata), '' when absent


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled HLO module with the bytes of its operands (per device); an async pair
    (`all-gather-start` / `-done`) is counted once, at its start."""
    types, found = {}, []
    for name, result, opcode, operands, line in _instructions(hlo_text):
        types[name] = result
        kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if kind not in COLLECTIVES:
            continue
        shapes = " ".join(types.get(op, "") for op in re.findall(r"%([\w.-]+)", operands))
        op_name = _OP_NAME.search(line)
        found.append(Collective(kind, _nbytes(shapes), " ".join("%s[%s]" % s for s in _SHAPE.findall(shapes)),
                                op_name.group(1) if op_name else ""))
    return found


def collective_totals(found: list[Collective]) -> dict[str, tuple[int, int]]:
    """{kind: (count, bytes)} over COLLECTIVES (kinds absent from the program give (0, 0))."""
    return {k: (sum(c.kind == k for c in found), sum(c.bytes for c in found if c.kind == k)) for k in COLLECTIVES}


# ---------------------------------------------------------------------------------------------------- the plan
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


def _queue_cost(config: ml_collections.ConfigDict, state: Any, per_device: int) -> dict[str, float]:
    """The NNCLR queue per chip: its bytes in the state, the look-up's FLOPs (both views, 2·b·K·D each) and the
    similarity rows it builds ([b, K] float32 per view)."""
    if state.queue is None:
        return {}
    k, d = state.queue.shape
    held = sum(x.size * x.dtype.itemsize for x in (state.queue, state.queue_ids, state.queue_labels))
    return {"rows": k, "bytes": float(held), "lookup_flops": float(2 * 2 * per_device * k * d),
            "similarity_bytes": float(2 * per_device * k * 4)}


def check_batch(config: ml_collections.ConfigDict, global_batch: int, devices: int, processes: int) -> None:
    """Raises ValueError unless the global batch splits into whole mix groups on every device and host."""
    unit = devices * batch_multiple(config)
    if global_batch <= 0 or global_batch % unit or global_batch % processes:
        raise ValueError(f"global batch {global_batch} must be a positive multiple of {unit} ({devices} devices × "
                         f"{batch_multiple(config)} rows per mix group) and of the {processes} hosts")


def plan_step(config: ml_collections.ConfigDict, slice_name: str, global_batch: int | None = None,
              hbm_bytes: int | None = None, *, keep_collectives: int = 6) -> StepPlan:
    """Compiles config's training step for `slice_name` at `global_batch` (default config.train.global_batch)."""
    mesh, s = slice_mesh(slice_name)
    devices, processes = mesh.devices.size, num_processes(mesh)
    batch = int(global_batch or config.train.global_batch)
    check_batch(config, batch, devices, processes)
    hbm = int(hbm_bytes or compiler_hbm_bytes(mesh, s.chip))
    step, state, data = planning_inputs(config, devices, batch)
    replicated = NamedSharding(mesh, P())
    state = _replicated(state, replicated)
    data = _replicated(data, NamedSharding(mesh, P(AXIS)))
    key = _replicated(jax.eval_shape(lambda: jax.random.key(0)), replicated)
    plan = StepPlan(task_name(config), slice_name, s.chip, devices, processes, batch, hbm, fits=False,
                    queue=_queue_cost(config, state, batch // devices))
    start = time.perf_counter()
    try:
        with jax.default_matmul_precision(check_precision(config.get("precision", "default"))), _no_persistent_cache():
            compiled = shard_train_step(step, mesh).lower(state, data, key).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        plan.compile_s = time.perf_counter() - start
        plan.temp = _parse_bytes(_TEMPS, str(e)) or 0
        plan.rejected = str(e).strip().splitlines()[0]
        return plan
    plan.compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    plan.argument, plan.output, plan.temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
    plan.code, plan.alias = m.generated_code_size_in_bytes, m.alias_size_in_bytes
    plan.total = plan.argument + plan.output + plan.temp + plan.code - plan.alias
    plan.fits = plan.total <= hbm
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    plan.flops = float(cost.get("flops", 0.0))
    found = collectives(compiled.as_text())
    plan.collectives = collective_totals(found)
    plan.largest_collectives = sorted(found, key=lambda c: -c.bytes)[:keep_collectives]
    return plan


def max_batch(config: ml_collections.ConfigDict, slice_name: str, hbm_bytes: int | None = None,
              log: Callable[[StepPlan], None] | None = None) -> tuple[StepPlan | None, dict[int, StepPlan]]:
    """(plan of the largest global batch that fits, every plan compiled on the way, keyed by global batch).

    Global batches step over u = devices × rows per mix group. Bisection on k (batch k·u) between a fitting k and a
    rejected one; the bracket starts from a straight line through the totals of k = 1 and 2, so a step whose memory
    is linear in the batch takes four compiles (1, 2, the line's k and k + 1). None when k = 1 does not fit.
    """
    mesh, s = slice_mesh(slice_name)
    unit = mesh.devices.size * batch_multiple(config)
    hbm = int(hbm_bytes or compiler_hbm_bytes(mesh, s.chip))
    plans: dict[int, StepPlan] = {}

    def fits(k: int) -> bool:
        if k * unit not in plans:
            plans[k * unit] = plan_step(config, slice_name, k * unit, hbm)
            if log is not None:
                log(plans[k * unit])
        return plans[k * unit].fits

    if not fits(1):
        return None, plans
    if not fits(2):
        return plans[unit], plans
    lo, hi = 2, None
    t1, t2 = plans[unit].total, plans[2 * unit].total
    if t2 > t1:  # the line total(k) = t1 + (k − 1)(t2 − t1) reaches the HBM at k = 1 + (hbm − t1) / (t2 − t1)
        guess = min(max(3, 1 + int((hbm - t1) // (t2 - t1))), 1024)
        if not fits(guess):
            hi = guess
        elif not fits(guess + 1):
            lo, hi = guess, guess + 1
        else:
            lo = guess + 1
    while hi is None:  # memory grew slower than the line: double until rejected
        if fits(2 * lo):
            lo *= 2
        else:
            hi = 2 * lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return plans[lo * unit], plans


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
             f"  memory per chip: arguments {g(plan.argument)}, outputs {g(plan.output)}, temporaries "
             f"{g(plan.temp)}, generated code {g(plan.code)}, donated (counted once) {g(plan.alias)}",
             f"  total {g(plan.total)} of {g(plan.hbm)} HBM: {verdict}, headroom {g(plan.hbm - plan.total)}",
             f"  FLOPs per step per chip {plan.flops:.3e}; floor at 100 % of the bf16 peak "
             f"({chip.bf16_flops / 1e12:.0f} TFLOP/s): {plan.floor_s * 1e3:.1f} ms per step",
             "  collectives per step per chip: " + ", ".join(
                 f"{k} {n} × = {b / 2**20:.1f} MiB" for k, (n, b) in plan.collectives.items() if n)
             if any(n for n, _ in plan.collectives.values()) else "  collectives per step per chip: none"]
    for c in plan.largest_collectives:
        lines.append(f"    {c.kind} {c.bytes / 2**20:.2f} MiB {c.operands[:60]}  {c.op_name[-90:]}")
    if plan.queue:
        q = plan.queue
        lines.append(f"  queue: {int(q['rows'])} rows, {q['bytes'] / 2**20:.1f} MiB per chip; look-up "
                     f"{q['lookup_flops']:.2e} FLOPs ({100 * q['lookup_flops'] / max(plan.flops, 1):.1f} % of the "
                     f"step), similarity rows {q['similarity_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)

"""The accelerators a plan compiles for: TPU slices (libtpu) and single GPUs (the jax-cuda12 plugin), no device needed.

`slice_mesh(name)` gives the 1-D 'data' mesh over every device of a slice users name (v5e-1, v6e-1, v4-8, v5e-8, ...,
a100-40gb, h100-80gb) from `jax.experimental.topologies`: compile-only devices, which XLA compiles for as it would
for the real ones. `compiler_hbm_bytes` is the memory the compiler lets one device use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from uamix_jax.sharding import AXIS

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """An accelerator as its vendor documents it (`url`): memory in the page's unit, dense bf16 peak FLOP/s."""

    name: str
    device_kind: str  # jax.Device.device_kind of this chip
    hbm: str  # as documented
    hbm_bytes: float
    bf16_flops: float
    url: str


_A100 = ("https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
         "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")

# TPUs: each figure as the chip's page on cloud.google.com states it (checked against those pages). The pages write "GB"
# for v5e, v5p and v6e; the compiler's own limits (15.75, 95.74 and 31.25 GiB; v4: 30.75 GiB) show binary units.
CHIPS = {
    "v4": Chip("TPU v4", "TPU v4", "32 GiB", 32 * GIB, 275e12, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", "TPU v5 lite", "16 GB", 16 * GIB, 197e12, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", "TPU v5", "95 GB", 95 * GIB, 459e12, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e (Trillium)", "TPU v6 lite", "32 GB", 32 * GIB, 918e12,
                "https://cloud.google.com/tpu/docs/v6e"),
    # NVIDIA's datasheets give bf16 with sparsity (624 and 1,979 TFLOP/s); dense is half.
    "a100-40gb": Chip("NVIDIA A100 SXM4 40GB", "NVIDIA A100-SXM4-40GB", "40 GB", 40 * GIB, 312e12, _A100),
    "a100-80gb": Chip("NVIDIA A100 SXM4 80GB", "NVIDIA A100-SXM4-80GB", "80 GB", 80 * GIB, 312e12, _A100),
    "h100-80gb": Chip("NVIDIA H100 SXM5 80GB", "NVIDIA H100 80GB HBM3", "80 GB", 80 * GIB, 989e12,
                      "https://www.nvidia.com/en-us/data-center/h100/"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A slice name users know → `jax.experimental.topologies.get_topology_desc(topology, platform, **options)`."""

    chip: str  # key of CHIPS
    topology: str
    options: tuple[tuple[str, Any], ...] = ()
    platform: str = "tpu"


_ONE_HOST = lambda x, y: (("chips_per_host_bounds", (x, y, 1)),)  # noqa: E731  (libtpu's default is 2x2x1)
_MEGACORE = (("chip_config_name", "megacore"),)  # v4: one device per chip (default: one per TensorCore)

# Slice names count chips (v5e, v6e: one TensorCore each) or TensorCores (v4, v5p: two per chip, one device each).
# Up to 8 chips is one host; larger slices take libtpu's hosts of 2x2 chips (v5e, v6e: the 4-chip VMs of multi-host
# slices; v4, v5p: 4 chips a host), e.g. v5e-16 = 4 hosts.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}  # chips
_SHAPES_3D = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4"}  # TensorCores
SLICES = {
    **{f"{chip}-{n}": Slice(chip, f"{chip}:{shape}", _ONE_HOST(*map(int, shape.split("x"))) if n <= 8 else ())
       for chip in ("v5e", "v6e") for n, shape in _SHAPES_2D.items()},
    **{f"{chip}-{n}": Slice(chip, f"{chip}:{shape}", _MEGACORE if chip == "v4" else ())
       for chip in ("v4", "v5p") for n, shape in _SHAPES_3D.items()},
}

# XLA's device descriptions of these GPUs (xla/backends/gpu/target_config/specs/*.txtpb in the OpenXLA sources),
# the fields XLA:GPU's compiler reads, as GpuTargetConfigProto text.
_GPU_SPEC = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: {smem_core} threads_per_core_limit: 2048 core_count: {cores} fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: {l2} clock_rate_ghz: {clock} device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_optin} cuda_compute_capability {{ major: {cc} }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
}}
platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 10 patch: 0 }} device_description_str: "{name}"
"""
_AMPERE = dict(smem_core=167936, cores=108, fpus=64, l2=41943040, clock=1.41, smem_optin=166912, cc=8)
GPU_TARGETS = {
    "a100-40gb": _GPU_SPEC.format(**_AMPERE, bandwidth=1555200000000, memory=42331013120,
                                  name="NVIDIA A100-SXM4-40GB"),
    "a100-80gb": _GPU_SPEC.format(**_AMPERE, bandwidth=2039040000000, memory=85100068864,
                                  name="NVIDIA A100-SXM4-80GB"),
    "h100-80gb": _GPU_SPEC.format(smem_core=233472, cores=132, fpus=128, l2=52428800, clock=1.98, smem_optin=232448,
                                  cc=9, bandwidth=3352320000000, memory=84942979072, name="NVIDIA H100 80GB HBM3"),
}
GPU_MEMORY = {"a100-40gb": 42331013120, "a100-80gb": 85100068864, "h100-80gb": 84942979072}
SLICES.update({name: Slice(name, "1x1x1", platform="cuda") for name in GPU_TARGETS})


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def has_libtpu() -> bool:
    """Whether XLA:TPU (libtpu) is installed, so TPU plans can be compiled here."""
    return _has_module("libtpu")


def require_compiler(platform: str = "tpu") -> None:
    """Raises ImportError saying what to install when the compiler for `platform` ('tpu' or 'cuda') is missing."""
    if platform == "tpu" and importlib.util.find_spec("libtpu") is None:
        raise ImportError(f"planning for a TPU needs libtpu, the TPU compiler: pip install -e '.[tpu]' (or "
                          f"pip install \"jax[tpu]=={jax.__version__}\"); no TPU is needed")
    if platform == "cuda" and not _has_module("jax_plugins.xla_cuda12"):
        raise ImportError(f"planning for a GPU needs JAX's CUDA plugin, XLA:GPU: pip install "
                          f"jax-cuda12-plugin=={jax.__version__} jax-cuda12-pjrt=={jax.__version__} (about 180 MB; "
                          f"no GPU and no CUDA libraries are needed to compile)")


def slice_mesh(name: str) -> tuple[Mesh, Slice]:
    """The 'data' mesh over every chip of slice `name` (compile-only devices) and its Slice."""
    if name not in SLICES:
        raise ValueError(f"unknown slice {name!r}; known slices: {', '.join(SLICES)}")
    s = SLICES[name]
    require_compiler(s.platform)
    from jax.experimental import topologies

    if s.platform == "cuda":
        desc = topologies.get_topology_desc(platform="cuda", topology=s.topology, target_config=GPU_TARGETS[name])
        return Mesh(np.asarray(desc.devices), (AXIS,)), s

    if os.environ.get("JAX_PLATFORMS") == "cpu":
        # A process that runs on the CPU only compiles for TPUs: let it load libtpu beside other such processes
        # (xdist workers, a planner beside a benchmark) instead of failing on libtpu's one-process lockfile.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")  # no local TPU to look for: quiet libtpu
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    devices = topologies.get_topology_desc(s.topology, "tpu", **dict(s.options)).devices
    return Mesh(np.asarray(devices), (AXIS,)), s


def slice_of(devices: Any) -> str | None:
    """The name in SLICES of a set of TPU devices (`jax.devices()` on a TPU VM: v5e-1, v6e-8, v4-8, ...), or None
    for other devices (CPU, GPU, TPU v2/v3) and TPU shapes not in the table."""
    devices = list(devices)
    kinds = {d.device_kind for d in devices}
    chip = next((k for k, c in CHIPS.items() if len(kinds) == 1 and c.device_kind in kinds), None)
    if chip is None or devices[0].platform != "tpu":
        return None
    name = f"{chip}-{len(devices) * (2 if chip in ('v4', 'v5p') else 1)}"
    return name if name in SLICES else None


def num_processes(mesh: Mesh) -> int:
    """Hosts of the slice: the distinct process indices of its devices."""
    return len({d.process_index for d in mesh.devices.flat})


@contextlib.contextmanager
def no_persistent_cache():
    """Compile-only executables can be written to JAX's persistent cache but never read back: keep them out."""
    try:
        from jax._src.config import enable_compilation_cache
    except ImportError:  # pragma: no cover
        yield
        return
    with enable_compilation_cache(False):
        yield


_HBM_LIMIT = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT])\)")
TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_hbm_cache: dict[str, int] = {}


def parse_bytes(pattern: re.Pattern, text: str) -> int | None:
    m = pattern.search(text)
    return None if m is None else int(float(m.group(1)) * _UNIT[m.group(2)])


def compiler_hbm_bytes(mesh: Mesh, chip: str) -> int:
    """The memory the compiler lets one device use. TPU: from the error XLA:TPU raises for a program that needs
    more than any chip has (v5e: 15.75 GiB of 16); the documented capacity if the message cannot be read. GPU: the
    device description's memory (of which JAX preallocates 75 % unless XLA_PYTHON_CLIENT_MEM_FRACTION says more)."""
    if chip in GPU_MEMORY:
        return GPU_MEMORY[chip]
    if chip not in _hbm_cache:
        big = jax.ShapeDtypeStruct((2**20,), jnp.float32, sharding=NamedSharding(mesh, P()))
        def too_much(x: jax.Array) -> jax.Array:  # 128 GiB of sorted rows
            return jnp.sort(jnp.broadcast_to(x, (2**15, 2**20)) * jnp.arange(2.0**15)[:, None], axis=1).sum(0)

        limit = None
        try:
            with no_persistent_cache():
                jax.jit(too_much).lower(big).compile()
        except jax.errors.JaxRuntimeError as e:
            limit = parse_bytes(_HBM_LIMIT, str(e))
        _hbm_cache[chip] = limit or int(CHIPS[chip].hbm_bytes)
    return _hbm_cache[chip]

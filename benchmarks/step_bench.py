"""What the training-step benchmarks share: their configs, the step as training runs it, the reference dot, flags.

A benchmarked step is the trainer's own: a task builder (`tune_task`, `pretrain_task`, `finetune_task`) makes the
fresh state and the per-device step from a config and a `TrainingPlan`, `shard_step` wraps it as the training loop
does, and it is compiled once, ahead of time, for that state and a synthetic batch on a one-device mesh, under the
config's matmul precision. A timed call runs one step on device-resident inputs and waits for the new state and the
metrics: no host copies, no recompilation (the compiled step refuses other shapes or shardings) and no padding (the
clips hold exactly T fbank frames unless a config's clip length is asked for).

utilisation = analytic matmul FLOPs of a step / its time / the FLOP/s of one jitted float32 `jnp.dot` of the model's
own fc1 shape [tokens, width] × [width, mlp_dim] (tokens: the rows the encoder's fc1 sees in that step), timed in the
same run before and after the steps (the best of the two: the machine's load varies).

`--smoke` runs a toy size with XLA's backend optimisation off (it checks the script; its figure means nothing).
`--replicate` takes the configs `benchmarks/replicate.py` trains (its default budget: configs/pretrain_mae.py:cpu's
'mini' ViT at T = 256 on 3 s clips, MAE batch 64, tuning batch 32), built by its own stage functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # cpu_malloc, replicate beside this file
try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from uamix_jax.audio.fbank import SAMPLE_RATE, frames_to_samples  # noqa: E402
from uamix_jax.models.precision import check_precision  # noqa: E402
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step  # noqa: E402
from uamix_jax.train.loop import TrainingPlan, TrainTask, plan_training  # noqa: E402

import replicate as replication  # noqa: E402  (benchmarks/replicate.py)
from cpu_malloc import reexec_with_malloc_tuning  # noqa: E402

Config = ml_collections.ConfigDict
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")
SMOKE = dict(size="test", target_length=128, repeats=2, no_torch=True)  # --smoke's defaults (and a small batch)
# --smoke checks the script, not the figure: XLA's backend optimisation off halves the compile of a step
SMOKE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


# ------------------------------------------------------------------------------------------------------- configs
def load_config(spec: str) -> Config:
    """`<file>.py[:arg]` of configs/ → its get_config(arg), as `--config=configs/<file>.py[:arg]` loads it."""
    return replication.load_config(os.path.join(CONFIGS, spec))


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is at most `at_most` (0: n itself)."""
    at_most = n if at_most <= 0 else min(at_most, n)
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def replicate_configs(budget: str = "default") -> tuple[Config, dict[int, Config]]:
    """(MAE config, {1: stage-1 config, 2: stage-2 config}) as benchmarks/replicate.py trains them with `budget`
    (the T-CutMix variant), from its own stage functions; data paths stay empty (the benchmarks feed synthetic
    batches). mix.group stays the stage config's: replicate.py fits it to this host's device count, the benchmarks
    fit it to their one device."""
    b = replication.BUDGETS[budget]

    def config_of(stage: Any) -> Config:
        config = replication.load_config(stage.config)
        config.update_from_flattened_dict({k: v for k, v in stage.overrides.items() if k != "mix.group"})
        config.progress = False
        return config

    mae_stage = replication.mae_stage("", b, "", "", {}, False)
    mae = config_of(mae_stage)
    tune = {s: config_of(replication.tune_stage("", b, "", "", mae.to_dict(), s, "t_cutmix", 0, mae_stage, {}, False))
            for s in (1, 2)}
    return mae, tune


def one_device_plan(config: Config) -> TrainingPlan:
    """The plan of a one-device, one-process run of `config` (steps do not change a step's cost)."""
    return plan_training(config, config.train.global_batch, devices=1, processes=1)


def input_samples(config: Config, *, from_config: bool) -> int:
    """Samples per clip: the config's data.clip_seconds (what its training reads), else exactly T fbank frames."""
    if from_config:
        return int(round(config.data.clip_seconds * SAMPLE_RATE))
    return frames_to_samples(config.model.target_length)


def synthetic_batch(batch: int, clip_samples: int, *, num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Noise clips, all samples valid, with every field a training step reads (waveform, length, index, label,
    multi_hot)."""
    rng = np.random.default_rng(seed)
    return {"waveform": (0.1 * rng.standard_normal((batch, clip_samples))).astype(np.float32),
            "length": np.full(batch, clip_samples, np.int32), "index": np.arange(batch, dtype=np.int32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
            "multi_hot": rng.random((batch, num_classes)) < 0.01}


# ---------------------------------------------------------------------------------------------------------- steps
@dataclasses.dataclass
class CompiledStep:
    """A task's step compiled for its state and batch on a one-device mesh; each call runs one training step."""

    compiled: Any  # jax.stages.Compiled; .as_text() is its HLO
    state: Any
    data: dict[str, jax.Array]
    key: jax.Array

    def __call__(self) -> None:
        self.state, metrics = self.compiled(self.state, self.data, self.key)
        jax.block_until_ready((self.state, metrics))


def compile_step(config: Config, task: TrainTask, batch: dict[str, np.ndarray], *,
                 smoke: bool = False) -> CompiledStep:
    """`task`'s step as the training loop runs it (shard_step, state donated, config.precision), compiled ahead of
    time on the first device for task.state and the batch's task.batch_keys fields (smoke: SMOKE_COMPILER_OPTIONS)."""
    mesh = data_mesh(jax.devices()[:1])
    state = replicate(task.state, mesh)
    data = global_batch({k: batch[k] for k in task.batch_keys}, mesh)
    key = jax.random.key(config.seed + 1)  # the loop's step key
    with jax.default_matmul_precision(check_precision(config.precision)):
        lowered = shard_step(task.step, mesh).lower(state, data, key)
    compiled = lowered.compile(compiler_options=SMOKE_COMPILER_OPTIONS if smoke else None)
    return CompiledStep(compiled, state, data, key)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The shortest wall time of `repeats` calls of fn (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_step(step: CompiledStep, repeats: int) -> tuple[float, float]:
    """(best seconds per step over `repeats`, seconds of the first call); the first call pages buffers in and is not
    counted."""
    first = best_of(step, 1)
    return best_of(step, repeats), first


def block_flops(n: int, width: int, mlp_dim: int) -> int:
    """Matmul FLOPs of one transformer block on n tokens (2 per multiply-add): qkv, q·kᵀ, a·v, proj, fc1, fc2."""
    return 2 * n * width * 3 * width + 2 * 2 * n * n * width + 2 * n * width * width + 2 * 2 * n * width * mlp_dim


def dot_rate(tokens: int, width: int, mlp_dim: int, repeats: int = 5) -> float:
    """FLOP/s of one jitted float32 jnp.dot [tokens, width] × [width, mlp_dim] (an fc1), best of `repeats`."""
    lhs = jnp.asarray(np.random.default_rng(1).standard_normal((tokens, width)), jnp.float32)
    rhs = jnp.asarray(np.random.default_rng(2).standard_normal((width, mlp_dim)), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(lhs, rhs))
    return 2 * tokens * width * mlp_dim / best_of(lambda: jax.block_until_ready(dot(lhs, rhs)), repeats)


def describe_dot(tokens: int, width: int, mlp_dim: int, rate: float) -> str:
    """The reference dot's shape and rate, for the scripts' report."""
    return f"jnp.dot [{tokens}, {width}] x [{width}, {mlp_dim}] (fc1's shape): {rate / 1e9:.1f} GFLOP/s"


def step_rate(batch: int, seconds: float, flops: float, first_s: float) -> str:
    """A timed step as the scripts report it: s/step, samples/s, GFLOP per step and per second, the first call."""
    return (f"{seconds:.3f} s/step ({batch / seconds:.2f} samples/s), {flops / 1e9:.1f} GFLOP/step, "
            f"{flops / seconds / 1e9:.1f} GFLOP/s (first call {first_s:.2f} s)")


def machine_line(tuned: bool) -> str:
    """Device, cores, jax version, malloc tuning and the load average: what a figure was measured under."""
    return (f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}, malloc tuning "
            f"{'on' if tuned else 'off'}, load average {os.getloadavg()[0]:.2f}")


# ---------------------------------------------------------------------------------------------------------- flags
def step_args(doc: str, script: str, argv: Sequence[str] | None, *, batch: int, repeats: int, smoke_batch: int,
              replicate_flag: bool = False, torch_flag: bool = True,
              add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The flags every step benchmark takes (--size, --target-length, --batch, --repeats, --malloc-tuning, --smoke;
    --no-torch where `torch_flag`, --replicate where `replicate_flag`; plus `add`'s). --smoke: the 'test' ViT at
    T = 128, `smoke_batch` clips, 2 repeats, no PyTorch, no malloc re-exec (flags given explicitly still win).
    With --malloc-tuning (and no --smoke) the process re-executes `script` under cpu_malloc.py's settings first."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", default=None, help="ViT size (default: the config's, 'base')")
    parser.add_argument("--target-length", type=int, default=None, help="T in frames (default: the config's)")
    parser.add_argument("--batch", type=int, default=None, help=f"clips per step (default {batch})")
    parser.add_argument("--repeats", type=int, default=repeats)
    if torch_flag:
        parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    parser.add_argument("--malloc-tuning", action="store_true", help="re-run with benchmarks/cpu_malloc.py's settings")
    parser.add_argument("--smoke", action="store_true", help="a toy size that runs in seconds (the tests' check)")
    if replicate_flag:
        parser.add_argument("--replicate", action="store_true",
                            help="benchmarks/replicate.py's configs and batches ('mini' ViT, T = 256; with --smoke: "
                                 "its toy budget)")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    if getattr(args, "replicate", False):
        if args.size or args.target_length or args.batch:
            parser.error("--replicate takes the size, T and batch of benchmarks/replicate.py's configs; drop "
                         "--size, --target-length and --batch")
    elif args.smoke:
        parser.set_defaults(size=SMOKE["size"], target_length=SMOKE["target_length"], batch=smoke_batch)
    if args.smoke:
        parser.set_defaults(repeats=SMOKE["repeats"], **({"no_torch": SMOKE["no_torch"]} if torch_flag else {}))
        args = parser.parse_args(argv)
    if args.batch is None and not getattr(args, "replicate", False):
        args.batch = batch
    if args.malloc_tuning and not args.smoke:
        reexec_with_malloc_tuning(script, list(argv) if argv is not None else sys.argv[1:])
    return args


def apply_model_args(config: Config, args: argparse.Namespace) -> Config:
    """--size, --target-length and --batch (one device) on a config; the progress bars off."""
    if args.size:
        config.model.size = args.size
    if args.target_length:
        config.model.target_length = args.target_length
    config.train.global_batch = args.batch
    config.progress = False
    return config

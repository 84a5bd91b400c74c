"""Every training task of ViT-B at T = 1024 compiled by XLA:TPU for six TPU slices: memory per chip, largest batch.

    python benchmarks/tpu_plan_table.py [--out benchmarks/tpu_plan.json] [--smoke] [--dtypes bfloat16,float32]
                                        [--tasks stage2,finetune,stage1,pretrain] [--slices v5e-1,v6e-1,...]

For pretraining (configs/pretrain_mae.py, global batch 512), stage 1 (configs/stage1.py, 512), stage 2
(configs/stage2.py, 128) and AudioSet-20K fine-tuning (configs/finetune.py:audioset20k, 32), in float32 and
bfloat16, on v5e-1 and v6e-1 (Colab's TPUs), v4-8, v5e-8, v5p-8 and v6e-8 (`uamix_jax.train.tpu_plan`; libtpu
needed, no TPU):
- the config's own global batch: bytes per chip, fits or not (a step that does not fit is rejected by the compiler,
  which names its temporaries), FLOPs per chip and the step-time floor at the chip's bf16 peak;
- the largest batch per chip (`uamix_jax.train.batch_search.largest`, as `tools/plan_tpu.py --max-batch` finds it,
  less the bisection that command always closes with): a straight line memory = fixed + per-sample · b through two
  compiles on the slice (the config's batch when it fits, and half or twice it), rounded down to the batches the
  step takes (multiples of the mix group; of 8 for pretraining), then confirmed by one compile (and one more, one
  batch lower, if it did not fit); when the confirmed batch uses under 90 % of the chip's memory, or both were
  rejected (two small batches misjudge a clip's cost), the line is fitted again through the largest batch that fits
  and that compile (a rejected one by the temporaries the compiler asked for), at most twice more; when those lines
  still leave it unsettled (memory that bends near the chip's limit), bisection closes the bracket. The 8-chip slice
  of a chip fits the line; the 1-chip slices of v5e and v6e start from it.
Every compile's result is written to --out as it finishes, so an interrupted run resumes where it stopped; the
Markdown table is printed from that file at the end (cells not yet compiled show '…'). A ViT-B compile takes 1 to
30 minutes on a 2-core machine (a rejected one under a minute; float32 on v6e the slowest): the full TPU table is
about 150 compiles.
`--smoke` runs the test-suite's stage-2 config ('test' ViT, T = 128) on v5e-1 into a temporary file: four compiles of
about 30 s each.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from uamix_jax.train import batch_search, tpu_plan  # noqa: E402
from uamix_jax.train.plan_inputs import allowed_global_batches, batch_multiple  # noqa: E402

TASKS = {  # task → (config file, variant)
    "pretrain": ("pretrain_mae.py", None), "stage1": ("stage1.py", None), "stage2": ("stage2.py", None),
    "finetune": ("finetune.py", "audioset20k")}
SLICES = ("v5e-1", "v6e-1", "v4-8", "v5e-8", "v5p-8", "v6e-8")
# multi-chip slices first: their line (which includes the gradient all-reduce's buffers) serves the 1-chip ones
FIT_ORDER = ("v5e-8", "v6e-8", "v4-8", "v5p-8", "v5e-1", "v6e-1")
PRETRAIN_MULTIPLE = 8  # pretraining has no mix group: its largest batch per chip is rounded to 8
REFIT_BELOW = 0.9  # a confirmed batch using less of the chip's memory than this refits the line through it
REFITS = 2  # at most this many lines after the first
UPTO_PER_CHIP = 2048  # the largest batch per chip searched


def load_config(task: str, dtype: str, smoke: bool = False):
    """configs/<task's file> (ViT-B, T = 1024 as shipped; --smoke: configs/test.py:stage2) at `dtype`."""
    name, variant = ("test.py", "stage2") if smoke else TASKS[task]
    spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}", os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    config.dtype = dtype
    return config


def per_chip_batches(config, devices: int) -> list[int]:
    """Batches per chip the step takes on `devices` chips (uamix_jax.train.plan_inputs.allowed_global_batches;
    pretraining, which takes any, in multiples of 8), ascending."""
    allowed = [b // devices for b in allowed_global_batches(config, devices, UPTO_PER_CHIP * devices)]
    return [b for b in allowed if b % PRETRAIN_MULTIPLE == 0] if batch_multiple(config) == 1 else allowed


class Results:
    """Compiles keyed 'task|dtype|slice|global batch' in a JSON file, written after each one (resumable)."""

    def __init__(self, path: str):
        self.path = path
        self.rows = json.load(open(path)) if os.path.isfile(path) else {}

    def get(self, config, task: str, dtype: str, slice_name: str, global_batch: int) -> dict:
        key = f"{task}|{dtype}|{slice_name}|{global_batch}"
        if key not in self.rows:
            plan = tpu_plan.plan_step(config, slice_name, global_batch)
            self.rows[key] = {k: v for k, v in plan.row().items() if k != "largest_collectives"}
            self.rows[key]["largest_collectives"] = [c["kind"] + " " + c["operands"][:80] + " " + c["op_name"][-80:]
                                                    for c in plan.row()["largest_collectives"]]
            self.save()
            r = self.rows[key]
            print(f"{key}: {'fits' if r['fits'] else 'does not fit'}, total {r['total'] / tpu_plan.GIB:.2f} GiB, "
                  f"temp {r['temp'] / tpu_plan.GIB:.2f} GiB, {r['flops']:.3e} FLOPs, {r['compile_s']:.0f} s",
                  flush=True)
        return self.rows[key]

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.rows, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def largest_per_chip(results: Results, config, task: str, dtype: str, slice_name: str, devices: int,
                     line: batch_search.Line | None = None) -> dict:
    """The largest batch per chip on `slice_name` by `batch_search.largest` (a line through two compiles, from the
    config's own batch; or `line`, fitted on another slice of the same chip: memory per chip against batch per chip),
    confirmed by a compile, the line refitted up to REFITS times: {'line' (the batch the last line allows), 'lines',
    'fixed', 'slope', 'confirmed'}."""

    def measure(b: int) -> batch_search.Fit:
        row = results.get(config, task, dtype, slice_name, b * devices)
        return batch_search.Fit(row["fits"], row["total"], row["temp"], row["hbm"])

    found = batch_search.largest(per_chip_batches(config, devices), measure,
                                 start=config.train.global_batch // devices, line=line, refits=REFITS,
                                 refit_below=REFIT_BELOW)
    last = found.lines[-1] if found.lines else batch_search.Line(0.0, 0.0)
    return {"line": found.allowed[-1] if found.lines else found.best, "lines": found.allowed, "fixed": last.fixed,
            "slope": last.slope, "confirmed": found.best}


def largest_batches(results: Results, config, task: str, dtype: str, slices) -> None:
    """'largest|task|dtype|slice' rows for `slices`: each chip's line is fitted on its first slice in FIT_ORDER (the
    8-chip one, whose line includes the gradient all-reduce's buffers) and starts the search on its other slices."""
    lines: dict[str, tuple[str, batch_search.Line]] = {}  # chip → (its first slice, the line fitted there)
    for s in sorted(slices, key=lambda n: FIT_ORDER.index(n) if n in FIT_ORDER else len(FIT_ORDER)):
        chip = tpu_plan.SLICES[s].chip
        key = f"largest|{task}|{dtype}|{s}"
        if key not in results.rows:
            devices = results.get(config, task, dtype, s, config.train.global_batch)["devices"]
            summary = largest_per_chip(results, config, task, dtype, s, devices,
                                       lines[chip][1] if chip in lines else None)
            results.rows[key] = {**summary, "config_batch": config.train.global_batch, "slice": s, "devices": devices,
                                 **({"from": lines[chip][0]} if chip in lines else {})}
            results.save()
        row = results.rows[key]
        if row.get("slope", 0) > 0:
            lines.setdefault(chip, (s, batch_search.Line(row["fixed"], row["slope"])))


def flops_per_sample(rows: dict) -> dict[tuple[str, str], float]:
    """{(task, dtype): FLOPs per clip} from the compiles in `rows` that report FLOPs (the step's FLOPs are the
    model's: XLA:GPU, which reports none without a device, takes them from the same step's TPU compiles)."""
    out = {}
    for key, v in rows.items():
        if not key.startswith("largest|") and v.get("flops"):
            out.setdefault(tuple(key.split("|")[:2]), v["flops"] / v["per_device_batch"])
    return out


def markdown(results: Results, tasks, dtypes, slices, batches: dict[str, int],
             per_sample: dict[tuple[str, str], float] | None = None) -> str:
    """The table: one row per task and slice; per dtype, GiB per chip at the config's batch (fits?), the largest
    batch per chip, and the step-time floor at 100 % bf16 peak."""
    head = "| task (global batch) | slice | " + " | ".join(
        f"{d}: GiB/chip | {d}: largest/chip | {d}: floor" for d in dtypes) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(dtypes))]
    rows = results.rows
    for task in tasks:
        for s in slices:
            cells = []
            for d in dtypes:
                summary = rows.get(f"largest|{task}|{d}|{s}", {})
                own = rows.get(f"{task}|{d}|{s}|{batches[task]}")
                if own is None:
                    cells += ["…", "…", "…"]
                    continue
                gib = (f"{own['total'] / tpu_plan.GIB:.1f} ✓" if own["fits"] else
                       (f"{own['total'] / tpu_plan.GIB:.1f} ✗" if own["total"] else
                        f"> {own['temp'] / tpu_plan.GIB:.0f} ✗"))
                largest = summary.get("confirmed")
                if largest is not None and summary.get("line"):
                    largest = f"{largest} ({summary['line']:.0f})"
                peak = tpu_plan.CHIPS[tpu_plan.SLICES[s].chip].bf16_flops
                if own["flops"]:
                    floor = f"{own['floor_s'] * 1e3:.0f} ms"
                elif (task, d) in (per_sample or {}):  # rejected (or no FLOPs from this compiler): per clip × clips
                    floor = f"≈ {per_sample[(task, d)] * own['per_device_batch'] / peak * 1e3:.0f} ms"
                else:
                    floor = "–"
                cells += [gib, "…" if largest is None else str(largest), floor]
            lines.append(f"| {task} ({batches[task]}) | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "tpu_plan.json"))
    parser.add_argument("--tasks", default="stage2,finetune,stage1,pretrain")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--slices", default=",".join(SLICES))
    parser.add_argument("--smoke", action="store_true", help="test-suite stage-2 config on v5e-1, temporary file")
    parser.add_argument("--table-only", action="store_true", help="print the table from --out, compile nothing")
    parser.add_argument("--flops-from", default="", help="a results file whose compiles report FLOPs (GPU tables)")
    args = parser.parse_args(argv)
    tasks, dtypes, slices = args.tasks.split(","), args.dtypes.split(","), args.slices.split(",")
    if args.smoke:
        tasks, dtypes, slices = ["stage2"], ["bfloat16"], ["v5e-1"]
        args.out = os.path.join(tempfile.mkdtemp(), "tpu_plan_smoke.json")
    tpu_plan.require_compiler()
    results = Results(args.out)
    start = time.perf_counter()
    # task by task (stage 2 first): the config's own batch on every slice, then the largest batches; dtype by dtype
    for dtype in ([] if args.table_only else dtypes):
        configs = {task: load_config(task, dtype, args.smoke) for task in tasks}
        for task in tasks:
            config = configs[task]
            for s in slices:
                results.get(config, task, dtype, s, config.train.global_batch)
            largest_batches(results, config, task, dtype, slices)
    batches = {task: load_config(task, dtypes[0], args.smoke).train.global_batch for task in tasks}
    per_sample = flops_per_sample(results.rows)
    if args.flops_from:
        per_sample = {**flops_per_sample(json.load(open(args.flops_from))), **per_sample}
    print(markdown(results, tasks, dtypes, slices, batches, per_sample))
    print(f"tpu plan table: {len(results.rows)} entries in {args.out}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

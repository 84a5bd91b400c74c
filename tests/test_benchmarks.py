"""Every benchmark script under benchmarks/ except replicate.py and offline_audio.py (tests/test_replicate.py,
tests/test_offline_audio.py) runs its main(["--smoke"]) in this process and prints its figure line, whose figures
are positive numbers (tpu_plan_table.py prints its table from the committed results: its compiles are
tests/test_tpu_plan.py's, and its largest-batch search runs here on a memory model); the --replicate preset is
replicate.py's own configs.

In-process on purpose: a subprocess per script would add ~10 s of start-up each. What remains is compilation: the
tuning, pretraining and fine-tuning steps (and their state initialisers) at the 'test' size, ~15 CPU-seconds each;
train_step.py and profile_train_step.py compile the same stage-2 step, which the persistent compilation cache
(tests/conftest.py) serves the second time.
"""
import importlib.util
import json
import os
import re
import sys

import pytest

from tests.train_util import ROOT

BENCHMARKS = os.path.join(ROOT, "benchmarks")
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
# script → (argv, the last line it prints; every group is a figure that must be a positive number)
SMOKE_RUNS = {
    # stage 2 only: stage 1 is the same script path, and each step costs a compile of 10-30 s on 2 cores
    "train_step": (["--smoke", "--stages", "2"],
                   rf"train step \(ViT-test, T=128, B=4\): stage 2 {NUMBER} samples/s \(\d+% of jnp\.dot\)"),
    "profile_train_step": (["--smoke"], rf"profile \(stage 2, ViT-test, T=128, B=4\): matmul fusions \d+% of the step "
                                        rf"at {NUMBER} GFLOP/s \(\d+% of jnp\.dot\), everything else \d+%"),
    "pretrain_step": (["--smoke"], rf"MAE pretrain step \(ViT-test, T=128, 80% masked, B=4\): {NUMBER} samples/s "
                                   rf"\(\d+% of jnp\.dot\)"),
    "finetune_step": (["--smoke"], rf"finetune step \(ViT-test, T=128, B=4\): {NUMBER} samples/s \(\d+% of jnp\.dot\)"),
    "encoder": (["--smoke"], rf"ViT-test forward: {NUMBER} clips/s, utilisation \d+%"),
    "objective": (["--smoke"], rf"objective step: {NUMBER} ms"),
    "fewshot": (["--smoke"], rf"fewshot: 50 episodes {NUMBER} s; ViT-test embedding {NUMBER} clips/s"),
    "fbank": (["--smoke"], rf"kaldi_fbank vs kaldi-native-fbank: {NUMBER}x \(target >= 2x\)"),
    "input_pipeline": (["--smoke"], rf"input pipeline: 44\.1k {NUMBER} clips/s, 16k {NUMBER} clips/s"),
    # the table from its committed results (every ViT-B compile takes minutes; tests/test_tpu_plan.py compiles)
    "tpu_plan_table": (["--table-only", "--out", os.path.join(BENCHMARKS, "tpu_plan.json")],
                       rf"tpu plan table: {NUMBER} entries in .*tpu_plan\.json, \d+ s"),
    "memory": (["--smoke"], rf"stage-2 step memory \(ViT-test, T=128, cpu compiler estimate\): B=4/device float32 "
                            rf"{NUMBER} GiB; largest batch under 16/32/80 GiB: float32 {NUMBER}/{NUMBER}/{NUMBER}"),
}


def _script(name: str):
    """benchmarks/<name>.py as the module `name` (importing it does no work), as the scripts import each other."""
    path = os.path.join(BENCHMARKS, f"{name}.py")
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    loaded = sys.modules.get(name)
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_script_has_a_smoke_run():
    scripts = {f[:-3] for f in os.listdir(BENCHMARKS) if f.endswith(".py")}
    helpers = {"cpu_malloc", "step_bench", "replicate_report"}  # imported by the scripts, no main
    elsewhere = {"replicate", "offline_audio"}
    assert scripts - helpers - elsewhere == set(SMOKE_RUNS)


@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_smoke_run_prints_its_figure(name, capsys):
    argv, pattern = SMOKE_RUNS[name]
    _script(name).main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(pattern, last)
    assert match, f"{name}: last line {last!r} does not match {pattern!r}"
    figures = [float(g) for g in match.groups()]
    assert all(f > 0 for f in figures), (name, last)


def test_replicate_preset_is_replicates_mini_run():
    """--replicate measures the steps benchmarks/replicate.py trains: configs/pretrain_mae.py:cpu's 'mini' ViT at
    T = 256 on 3 s clips, MAE batch 64, tuning batch 32 with its head and queue; one device fits the mix group to
    16."""
    step_bench, train_step = _script("step_bench"), _script("train_step")
    mae, tune = step_bench.replicate_configs("default")
    assert (mae.model.size, mae.model.target_length, mae.data.clip_seconds, mae.train.global_batch) == \
        ("mini", 256, 3.0, 64)
    assert (mae.decoder.width, mae.decoder.depth) == (128, 2)
    for stage, config in tune.items():
        assert config.stage == stage
        assert (config.model.size, config.model.target_length, config.data.clip_seconds) == ("mini", 256, 3.0)
        assert (config.train.global_batch, config.nnclr.queue_size, config.mix.method) == (32, 1024, "t_cutmix")
        assert (config.head.proj_hidden_dim, config.head.proj_dim, config.head.pred_hidden_dim) == (512, 128, 512)
        assert train_step.fit_mix_group(config).mix.group == 16
    assert (tune[1].nnclr.top_k, tune[2].nnclr.top_k, tune[2].nnclr.ema_momentum) == (1, 5, 0.99)
    assert step_bench.input_samples(mae, from_config=True) == 48000


@pytest.mark.parametrize("batch,group", [(4, 4), (2, 2), (32, 16), (24, 12), (48, 16), (6, 6), (1, 1)])
def test_mix_group_is_the_largest_divisor_up_to_the_configs(batch, group):
    train_step = _script("train_step")
    config = train_step.tuning_config(2, "test", 128, batch)
    assert config.mix.group == 16
    assert train_step.fit_mix_group(config).mix.group == group


@pytest.mark.parametrize("line", [False, True], ids=["own line", "line from another slice"])
def test_tpu_table_largest_batch_fits_and_the_next_does_not(line):
    """tpu_plan_table.py's search (uamix_jax.train.batch_search, tested on more memory models in
    tests/test_batch_search.py) through the table's results on fine-tuning's batches per chip of a v4-8, on the model
    its compiles gave (GiB per chip; batches 8 and 12 understate a clip; a rejected compile reports its temporaries,
    total less 1.1 GiB): the batch it confirms fits, the next one the step takes does not, within 6 compiles, and the
    row it writes gives the last line."""
    from uamix_jax.train.batch_search import Line

    table = _script("tpu_plan_table")
    config = table.load_config("finetune", "bfloat16")
    memory = lambda b: {8: 2.84, 12: 3.28}.get(b, 1.62 + 0.138 * b)  # noqa: E731
    compiled = []

    class Model(table.Results):
        def __init__(self):
            self.rows = {}

        def get(self, config, task, dtype, slice_name, global_batch):
            b = global_batch // 4
            compiled.append(b)
            total = memory(b) * 2**30
            fits = total <= 30.75 * 2**30
            return {"fits": fits, "total": total if fits else 0.0, "temp": total - 1.1 * 2**30, "hbm": 30.75 * 2**30}

    given = Line(1.62 * 2**30, 0.138 * 2**30) if line else None
    row = table.largest_per_chip(Model(), config, "finetune", "bfloat16", "v4-8", 4, given)
    found, allowed = row["confirmed"], table.per_chip_batches(config, 4)
    assert memory(found) <= 30.75 < memory(allowed[allowed.index(found) + 1]), (found, compiled)
    assert len(set(compiled)) <= (2 if line else 6), compiled
    assert row["line"] == pytest.approx((30.75 - row["fixed"] / 2**30) / (row["slope"] / 2**30))


@pytest.mark.parametrize("name", ["tpu_plan.json", "gpu_plan.json"])
def test_tpu_tables_largest_batches_follow_from_their_compiles(name):
    """Every largest batch per chip in benchmarks/tpu_plan.json and gpu_plan.json is what tpu_plan_table.py's search
    gives from the compiles stored beside it, replayed without compiling (a compile it would need fails the test)."""
    table = _script("tpu_plan_table")
    stored = json.load(open(os.path.join(BENCHMARKS, name)))

    class Stored(table.Results):
        def __init__(self):
            self.rows = {k: v for k, v in stored.items() if not k.startswith("largest|")}

        def get(self, config, task, dtype, slice_name, global_batch):
            return self.rows[f"{task}|{dtype}|{slice_name}|{global_batch}"]

        def save(self):
            pass

    found = {tuple(k.split("|")[1:3]) for k in stored if k.startswith("largest|")}
    assert len(found) >= 3, sorted(found)
    results = Stored()
    for task, dtype in sorted(found):
        slices = [k.split("|")[3] for k in stored if k.startswith(f"largest|{task}|{dtype}|")]
        table.largest_batches(results, table.load_config(task, dtype), task, dtype, slices)
    replayed = {k: v["confirmed"] for k, v in results.rows.items() if k.startswith("largest|")}
    assert replayed == {k: v["confirmed"] for k, v in stored.items() if k.startswith("largest|")}


@pytest.mark.parametrize("task", ["pretrain", "stage1", "stage2", "finetune"])
def test_config_docstrings_quote_the_tpu_tables_largest_batches(task):
    """Each config's docstring gives the largest batch per chip type in bfloat16 and in float32 as
    benchmarks/tpu_plan.json has it (confirmed by a compile on the 8-chip slice of that chip)."""
    table = _script("tpu_plan_table")
    name = table.TASKS[task][0]
    spec = importlib.util.spec_from_file_location(f"doc_{task}", os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = " ".join(module.__doc__.split())
    rows = json.load(open(os.path.join(BENCHMARKS, "tpu_plan.json")))
    largest = text[text.index("largest batch per chip"):]
    for dtype in ("bfloat16", "float32"):
        quoted = re.search(rf"{dtype}[^:]*: (.*?)(?:\.\s|;|$)", largest).group(1)
        chips = dict(re.findall(r"\b(v5e|v6e|v4|v5p) (\d+)", quoted))
        assert set(chips) == {"v5e", "v6e", "v4", "v5p"}, (name, dtype, quoted)
        for chip, batch in chips.items():
            assert rows[f"largest|{task}|{dtype}|{chip}-8"]["confirmed"] == int(batch), (name, dtype, chip)


def test_readme_quotes_the_plan_tables():
    """README's 'Will it fit?' figures are those of benchmarks/tpu_plan.json and gpu_plan.json."""
    text = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    tpu = json.load(open(os.path.join(BENCHMARKS, "tpu_plan.json")))
    gpu = json.load(open(os.path.join(BENCHMARKS, "gpu_plan.json")))
    gib = tpu["stage2|bfloat16|v5e-8|128"]["total"] / 2**30
    assert f"takes {gib:.1f} GiB per chip on a v5e-8" in text
    assert f"one v5e chip holds at most {tpu['largest|stage2|bfloat16|v5e-1']['confirmed']} clips" in text
    f32, bf16 = (gpu[f"largest|pretrain|{d}|a100-80gb"]["confirmed"] for d in ("float32", "bfloat16"))
    assert [gpu[f"largest|pretrain|{d}|h100-80gb"]["confirmed"] for d in ("float32", "bfloat16")] == [f32, bf16]
    assert f"one 80 GB GPU takes {f32} clips in float32, {bf16} in bfloat16" in text

"""The public surface: lazy exports, the configs and their launch commands, --help, the notebook's library cell."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import uamix_jax
from tests.train_util import ROOT, load_config


def test_every_public_name_resolves_without_torch_or_tensorflow():
    code = ("import sys, uamix_jax\n"
            "[getattr(uamix_jax, n) for n in uamix_jax.__all__]\n"
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uamix_jax.nope  # noqa: B018


@pytest.mark.parametrize("name,arg", [("stage1", None), ("stage1", "demo"), ("stage2", None), ("stage2", "demo"),
                                      ("test", "stage1"), ("test", "stage2"), ("fewshot", None)])
def test_configs_load_and_document_their_launch_command(name, arg):
    config = load_config(name, arg)
    with open(os.path.join(ROOT, "configs", f"{name}.py"), encoding="utf-8") as f:
        source = f.read()
    assert "python -m uamix_jax.main --config=configs/" in source.split('"""')[1]
    if name in ("stage1", "stage2"):
        assert config.stage == int(name[-1])


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")))
def test_every_config_names_a_task_that_main_dispatches(name):
    from uamix_jax.main import TASKS, task_function

    config = load_config(name, None)
    assert config.task in TASKS, (name, config.task)
    assert callable(task_function(config.task))


def test_paper_recipe_defaults():
    s1, s2 = load_config("stage1"), load_config("stage2")
    assert (s1.train.epochs, s1.train.global_batch, s1.nnclr.top_k, s1.nnclr.ema_momentum) == (40, 512, 1, 0.0)
    assert (s2.train.epochs, s2.train.global_batch, s2.nnclr.top_k, s2.nnclr.ema_momentum) == (160, 128, 20, 0.99)
    for c in (s1, s2):
        assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.layer_decay) == (1e-4, 0.9, 0.95, 0.65)
        assert (c.nnclr.temperature, c.nnclr.queue_size, c.mix.method, c.mix.alpha) == (0.15, 65536, "t_cutmix", 1.0)
        assert (c.model.size, c.model.target_length, c.data.name) == ("base", 1024, "audioset")
        assert (c.mix.group, c.precision, c.task) == (16, "default", "tune")


def test_main_help_and_locked_config():
    help_run = subprocess.run([sys.executable, "-m", "uamix_jax.main", "--helpfull"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert "--workdir" in help_run.stdout and "--config" in help_run.stdout
    typo = subprocess.run([sys.executable, "-m", "uamix_jax.main", "--config=configs/test.py:stage1",
                           "--workdir=/tmp/unused", "--config.train.epochz=3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert typo.returncode != 0 and "epochz" in typo.stderr


def test_no_copied_block_inside_the_package():
    """One way to do each thing: the `duplicates` tool (where installed) finds no pair of copied blocks in uamix_jax/."""
    import shutil

    tool = shutil.which("duplicates")
    if tool is None:
        pytest.skip("the duplicates tool is not installed here")
    out = subprocess.run([tool, "--repo", "uamix_jax", "--seconds", "120"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.startswith("no duplicates"), out.stdout

"""The public surface: lazy exports, the configs and their launch commands, --help, the notebook's library cell."""
from __future__ import annotations

import json
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


def test_paper_recipe_defaults():
    s1, s2 = load_config("stage1"), load_config("stage2")
    assert (s1.train.epochs, s1.train.global_batch, s1.nnclr.top_k, s1.nnclr.ema_momentum) == (40, 512, 1, 0.0)
    assert (s2.train.epochs, s2.train.global_batch, s2.nnclr.top_k, s2.nnclr.ema_momentum) == (160, 128, 20, 0.99)
    for c in (s1, s2):
        assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.layer_decay) == (1e-4, 0.9, 0.95, 0.65)
        assert (c.nnclr.temperature, c.nnclr.queue_size, c.mix.method, c.mix.alpha) == (0.15, 65536, "t_cutmix", 1.0)
        assert (c.model.size, c.model.target_length, c.data.name) == ("base", 1024, "audioset")


def test_main_help_and_locked_config():
    help_run = subprocess.run([sys.executable, "-m", "uamix_jax.main", "--helpfull"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert "--workdir" in help_run.stdout and "--config" in help_run.stdout
    typo = subprocess.run([sys.executable, "-m", "uamix_jax.main", "--config=configs/test.py:stage1",
                           "--workdir=/tmp/unused", "--config.train.epochz=3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert typo.returncode != 0 and "epochz" in typo.stderr


def test_notebook_library_cell_runs():
    with open(os.path.join(ROOT, "colab", "uamix_jax_tpu.ipynb"), encoding="utf-8") as f:
        notebook = json.load(f)
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    library = [c for c in cells if "soft_nnclr_loss" in c]
    assert len(library) == 1
    scope: dict = {}
    exec(compile(library[0], "notebook-cell", "exec"), scope)  # noqa: S102
    assert float(scope["soft_nnclr_loss"](*[scope[k] for k in ("p_a", "p_b", "nn_a", "nn_b")],
                                          scope["soft_targets"](scope["lam"], scope["perm"]), 0.15)) > 0

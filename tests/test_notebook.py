"""colab/uamix_jax_tpu.ipynb: stored clean, and run top to bottom with SMOKE=True on the CPU by papermill.

The kernel is this interpreter (jupyter_client starts the 'python3' kernel with sys.executable) and inherits the
test environment: 8 fake CPU devices and the shared persistent compilation cache (tests/conftest.py).
"""
from __future__ import annotations

import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "uamix_jax_tpu.ipynb")
BEFORE, AFTER = "before tuning (AudioMAE)", "after stage 2 (uaMix-MAE)"
SMOKE_STEPS, SMOKE_EPISODES = 3, 100  # the notebook's SMOKE settings


def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_notebook_is_stored_without_outputs_with_a_papermill_parameters_cell():
    cells = _read(NOTEBOOK)["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [0], "the first code cell, and only it, must carry papermill's 'parameters' tag"
    papermill = pytest.importorskip("papermill")
    parameters = papermill.inspect_notebook(NOTEBOOK)  # what `papermill -p NAME VALUE` can set
    assert {"SMOKE", "WORKDIR", "REPO", "AUDIOMAE_CHECKPOINT", "DATA_ROOT", "STAGE1_STEPS"} <= set(parameters)
    assert parameters["SMOKE"]["default"] == "False" and parameters["SMOKE"]["inferred_type_name"] == "bool"
    # every section's code (one cell, or two as the parameters and the SMOKE settings) has a markdown text above it
    kinds = [c["cell_type"] for c in cells]
    assert all(kinds[i - 1] == "markdown" or (kinds[i - 1] == "code" and kinds[i - 2] == "markdown")
               for i, kind in enumerate(kinds) if kind == "code")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_with_smoke(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    cache = os.environ.get("UAMIX_TEST_JAX_CACHE")
    if cache:  # the kernel process reads jax's config from the environment
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    workdir = tmp_path / "wd"
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(NOTEBOOK, str(out), parameters=dict(SMOKE=True, WORKDIR=str(workdir)),
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False, log_output=False)

    code = [c for c in _read(str(out))["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))  # every cell ran, in order
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) == 3  # training curves, few-shot bars, spectrograms

    printed = "".join(t for c in code for o in c["outputs"] for t in o.get("text", []))
    assert "CPU: no TPU to plan for; keeping stage 1's global batch 16 and stage 2's 16" in printed  # the plan cell

    for stage in ("stage1", "stage2"):
        with open(workdir / stage / "metrics.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert [r["step"] for r in rows] == list(range(1, SMOKE_STEPS + 1))
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
        accuracy = [float(r["nn_accuracy"]) for r in rows]  # written as "nan" while the queue holds no labels yet
        defined = accuracy[1:] if stage == "stage1" else accuracy  # stage 2 starts with stage 1's queue
        assert all(0.0 <= a <= 1.0 for a in defined), accuracy

    results = _read(str(workdir / "fewshot_before_after.json"))
    assert set(results) == {BEFORE, AFTER}
    for r in results.values():
        assert (r["ways"], r["shots"], r["episodes"]) == (5, 1, SMOKE_EPISODES)
    assert results[BEFORE]["episodes_sha256"] == results[AFTER]["episodes_sha256"]  # paired: the same episodes
    # the "after" figure is the saved stage-2 encoder's: recomputed here from its workdir on those episodes
    from uamix_jax.data.layouts import read_dataset
    from uamix_jax.evaluation.embed import InputPolicy
    from uamix_jax.evaluation.encoders import encoder_from
    from uamix_jax.evaluation.fewshot_driver import encoder_embedder, score_fewshot

    policy = InputPolicy(target_length=128, stats="audioset", clip_seconds=1.5)  # the SMOKE settings
    tuned = encoder_from(str(workdir / "stage2"), dict(size="test", target_length=128, posemb="prefix"))
    embedder = encoder_embedder(AFTER, tuned, policy, batch_size=32)
    (again,) = score_fewshot([embedder], read_dataset("folder", str(workdir / "demo_heldout")), [(5, 1)],
                             queries=3, episodes=SMOKE_EPISODES, seed=0)
    assert again.record["episodes_sha256"] == results[AFTER]["episodes_sha256"]
    assert again.record["accuracy_mean"] == pytest.approx(results[AFTER]["accuracy_mean"], abs=1e-9)
    assert results[BEFORE]["encoder"] == str(workdir / "audiomae")
    assert results[AFTER]["encoder"] == str(workdir / "stage2")
    # stage 2 tuned the encoder: the two evaluations saw different weights
    assert results[BEFORE]["params_sha256"] != results[AFTER]["params_sha256"]
    assert (workdir / "uamix_encoder" / "audiomae.json").is_file()
    saved = "".join(t for c in code for o in c["outputs"] for t in o.get("text", []) if "saved to" in "".join(
        o.get("text", [])))
    assert "max |Δ| from the stage-2 workdir: 0\n" in saved  # the saved encoder reloads bit for bit

"""Periodic few-shot evaluation: the numbers the few-shot library gives, for the parameters of each call."""
import os

import jax
import ml_collections
import pytest

from uamix_jax.config_base import add_periodic_fewshot, add_training
from uamix_jax.data.synthetic import make_demo_dataset
from uamix_jax.data.layouts import read_dataset
from uamix_jax.evaluation.embed import InputPolicy, embed_manifest
from uamix_jax.evaluation.encoders import random_encoder
from uamix_jax.evaluation.fewshot import evaluate_fewshot
from uamix_jax.evaluation.periodic import PeriodicFewShot

T = 128


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(make_demo_dataset(tmp_path_factory.mktemp("periodic") / "birds", num_classes=6, clips_per_class=6,
                                 seconds=1.0))


def _block(root, **data):
    """A training config's `fewshot` and `eval` blocks (uamix_jax.config_base.add_periodic_fewshot)."""
    c = ml_collections.ConfigDict()
    add_training(c)
    add_periodic_fewshot(c)
    c.fewshot.update(every=10, ways=5, shots=1, queries=4, episodes=40, seed=3)
    c.fewshot.data.update(root=root, **data)
    c.eval.batch_size = 8
    return c


def _library(root, encoder, variables):
    """The same evaluation written with the library directly."""
    manifest = read_dataset("folder", root)
    emb, valid = embed_manifest(manifest, encoder, variables, policy=InputPolicy(target_length=T), batch_size=8,
                                progress=False)
    assert valid.all()
    return evaluate_fewshot(emb, manifest.labels, ways=5, shots=1, queries=4, episodes=40, seed=3)


def test_each_call_equals_the_library_on_that_calls_parameters(data_root):
    encoder, v0 = random_encoder("test", target_length=T, seed=0)
    _, v1 = random_encoder("test", target_length=T, seed=1)
    evaluate = PeriodicFewShot.from_config(_block(data_root), encoder)
    assert evaluate.key("birds") == "fewshot/birds/5way1shot"  # named after the folder, not the layout
    with jax.default_matmul_precision("highest"):
        first = evaluate(v0["params"], 10)
        second = evaluate(jax.device_get(v1["params"]), 20)  # new parameters: embeddings recomputed, not reused
        again = evaluate(v0["params"], 30)
        ref0, ref1 = _library(data_root, encoder, v0), _library(data_root, encoder, v1)
    assert set(first) == {"fewshot/birds/5way1shot", "fewshot/birds/5way1shot_ci95"}
    assert first["fewshot/birds/5way1shot"] == pytest.approx(ref0["accuracy_mean"], abs=1e-9)
    assert first["fewshot/birds/5way1shot_ci95"] == pytest.approx(ref0["ci95"], abs=1e-9)
    assert second["fewshot/birds/5way1shot"] == pytest.approx(ref1["accuracy_mean"], abs=1e-9)
    assert second["fewshot/birds/5way1shot_ci95"] == pytest.approx(ref1["ci95"], abs=1e-9)
    assert ref0["accuracy_mean"] != ref1["accuracy_mean"]  # so the check above could tell stale embeddings apart
    assert again == first  # the same episodes every call: values of different steps are comparable
    assert 0.0 < first["fewshot/birds/5way1shot"] < 100.0


def test_label_bad_audio_log_and_config_errors(data_root, tmp_path):
    encoder, _ = random_encoder("test", target_length=T, seed=0)
    labelled = PeriodicFewShot.from_config(_block(data_root, label="esc 50"), encoder,
                                           bad_audio_log=str(tmp_path / "bad_audio.txt"))
    assert list(labelled.manifests) == ["esc_50"] and labelled.bad_audio_log.path == str(tmp_path / "bad_audio.txt")
    with pytest.raises(ValueError, match=r"config.fewshot.data.root is empty"):
        PeriodicFewShot.from_config(_block(""), encoder)
    too_many = _block(data_root)
    too_many.fewshot.ways = 7  # 6 classes: found when the evaluator is built, not at the first evaluation
    with pytest.raises(ValueError, match="7-way 1-shot episodes need 7 classes"):
        PeriodicFewShot.from_config(too_many, encoder)
    assert os.path.basename(data_root) == "birds"


def test_several_named_sets_and_their_dev_classes(data_root, tmp_path):
    """root = NAME=FOLDER,NAME=FOLDER: one accuracy per set, each on the dev half of its classes only."""
    from uamix_jax.data.layouts import class_halves

    other = make_demo_dataset(tmp_path / "other", num_classes=8, clips_per_class=6, seconds=1.0, seed=5)
    block = _block(f"first={data_root},second={other}", classes="dev")
    block.fewshot.ways = 3
    encoder, variables = random_encoder("test", target_length=T, seed=0)
    evaluate = PeriodicFewShot.from_config(block, encoder)
    assert list(evaluate.manifests) == ["first", "second"]
    for name, root in (("first", data_root), ("second", other)):
        manifest = evaluate.manifests[name]
        dev, _ = class_halves(read_dataset("folder", str(root)).class_names)
        assert sorted({manifest.class_names[c] for c in manifest.labels}) == dev
    with jax.default_matmul_precision("highest"):
        out = evaluate(variables["params"], 5)
    assert set(out) == {f"fewshot/{n}/3way1shot{s}" for n in ("first", "second") for s in ("", "_ci95")}
    with pytest.raises(ValueError, match="is not NAME=FOLDER"):
        PeriodicFewShot.from_config(_block(f"first={data_root},={other}"), encoder)

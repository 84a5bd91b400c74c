"""The grain pipeline: fixed shapes, crops against the decoded files, determinism, sharding, resume, workers."""
import itertools
import json
import os

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.audio.io import load_audio
from uamix_jax.data.manifest import read_folder
from uamix_jax.data.pipeline import make_pipeline, steps_per_epoch

CLIP = 4000
N_CLIPS = 14


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """14 float WAV ramps of 1,200-8,000 samples in 3 classes: every sample value is unique within its clip."""
    root = tmp_path_factory.mktemp("pipeline_data")
    rng = np.random.default_rng(0)
    for i in range(N_CLIPS):
        n = int(rng.integers(1200, 8001))
        os.makedirs(root / f"class{i % 3}", exist_ok=True)
        sf.write(str(root / f"class{i % 3}" / f"clip{i:02d}.wav"),
                 (0.01 * i + 1e-5 * np.arange(n)).astype(np.float32) - 0.2, 16000, subtype="FLOAT")
    return read_folder(str(root))


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def check_rows_against_files(manifest, batch, centre):
    """Every row is a crop of its clip's decoded samples: inside the clip, centred for eval, zero padded."""
    starts = []
    for row in np.flatnonzero(batch["mask"]):
        full = load_audio(manifest.paths[int(batch["index"][row])])
        wave, length = batch["waveform"][row], int(batch["length"][row])
        assert batch["label"][row] == manifest.labels[batch["index"][row]]
        if full.shape[0] <= CLIP:
            assert length == full.shape[0]
            np.testing.assert_array_equal(wave[:length], full)
            assert not wave[length:].any()
            continue
        assert length == CLIP
        start = int(np.flatnonzero(full == wave[0])[0])
        assert 0 <= start <= full.shape[0] - CLIP
        np.testing.assert_array_equal(wave, full[start:start + CLIP])
        if centre:
            assert start == (full.shape[0] - CLIP) // 2
        starts.append(start)
    return starts


@pytest.mark.parametrize("train", [True, False])
def test_batches_are_fixed_shape_crops_of_the_decoded_clips(manifest, train):
    it = make_pipeline(manifest, batch_size=4, clip_samples=CLIP, seed=3, train=train, num_epochs=1)
    batches = list(it)
    assert len(batches) == steps_per_epoch(N_CLIPS, 4) == 3
    for b in batches:
        assert set(b) == {"waveform", "length", "index", "label", "mask"}
        assert b["waveform"].shape == (4, CLIP) and b["waveform"].dtype == np.float32
        for k in ("length", "index", "label"):
            assert b[k].shape == (4,) and b[k].dtype == np.int32
        assert b["mask"].dtype == bool and b["mask"].all()
        check_rows_against_files(manifest, b, centre=not train)
    order = np.concatenate([b["index"] for b in batches])
    assert len(set(order.tolist())) == 12
    if not train:
        assert order.tolist() == list(range(12))  # manifest order, the remainder of 2 dropped


def test_same_seed_same_batches_new_shuffle_and_crops_each_epoch(manifest):
    kw = dict(batch_size=4, clip_samples=CLIP, train=True, num_epochs=2)
    a = list(make_pipeline(manifest, seed=7, **kw))
    assert_batches_equal(a, list(make_pipeline(manifest, seed=7, **kw)))
    other = list(make_pipeline(manifest, seed=8, **kw))
    assert not np.array_equal(np.concatenate([b["index"] for b in a]), np.concatenate([b["index"] for b in other]))
    epoch0, epoch1 = np.concatenate([b["index"] for b in a[:3]]), np.concatenate([b["index"] for b in a[3:]])
    assert not np.array_equal(epoch0, epoch1) and len(set(epoch0.tolist())) == len(set(epoch1.tolist())) == 12
    # crops are keyed by epoch too: a long clip seen in both epochs is cut at different places (over all of them)
    start = {}
    for e, batches in enumerate([a[:3], a[3:]]):
        for b in batches:
            for row, i in enumerate(b["index"]):
                full = load_audio(manifest.paths[int(i)])
                if full.shape[0] > CLIP + 100:
                    start[(e, int(i))] = int(np.flatnonzero(full == b["waveform"][row, 0])[0])
    both = [i for (e, i) in start if e == 0 and (1, i) in start]
    assert both and any(start[(0, i)] != start[(1, i)] for i in both)


def test_two_processes_see_every_clip_once_per_epoch_and_form_the_single_process_batch(manifest):
    kw = dict(clip_samples=CLIP, seed=11, train=True, num_epochs=2)
    p0 = list(make_pipeline(manifest, batch_size=3, process_index=0, process_count=2, **kw))
    p1 = list(make_pipeline(manifest, batch_size=3, process_index=1, process_count=2, **kw))
    single = list(make_pipeline(manifest, batch_size=6, **kw))
    assert len(p0) == len(p1) == len(single) == 2 * steps_per_epoch(N_CLIPS, 6)
    for a, b, s in zip(p0, p1, single):  # process p holds rows [3p, 3p + 3) of the global batch
        for k in s:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), s[k], err_msg=k)
    for epoch in range(2):
        seen = np.concatenate([x["index"] for x in p0[2 * epoch:2 * epoch + 2] + p1[2 * epoch:2 * epoch + 2]])
        assert len(seen) == 12 and len(set(seen.tolist())) == 12  # drop_remainder drops 14 mod 6 = 2 clips


def test_eval_without_drop_remainder_pads_and_masks_the_last_global_batch(manifest):
    kw = dict(batch_size=4, clip_samples=CLIP, seed=0, train=False, num_epochs=1, drop_remainder=False,
              process_count=2)
    p0, p1 = (list(make_pipeline(manifest, process_index=p, **kw)) for p in (0, 1))
    assert len(p0) == len(p1) == steps_per_epoch(N_CLIPS, 8, drop_remainder=False) == 2
    rows = [(b["index"][r], b["mask"][r]) for b in p0 + p1 for r in range(4)]
    real = sorted(int(i) for i, m in rows if m)
    assert real == list(range(N_CLIPS))  # every clip exactly once over both processes
    padded = [(b, r) for b in p0 + p1 for r in range(4) if not b["mask"][r]]
    assert len(padded) == 2
    for b, r in padded:
        assert b["index"][r] == -1 and b["label"][r] == -1 and b["length"][r] == 0 and not b["waveform"][r].any()
    # the last global batch covers positions 8..15: process 0 holds 8..11, process 1 holds 12, 13 and two pads
    assert p0[-1]["mask"].all() and p1[-1]["mask"].tolist() == [True, True, False, False]
    for b in p0 + p1:
        check_rows_against_files(manifest, b, centre=True)


def test_resume_from_a_json_state_continues_at_the_next_batch(manifest):
    kw = dict(batch_size=4, clip_samples=CLIP, seed=5, train=True)
    it = make_pipeline(manifest, **kw)  # num_epochs=None: forever
    take(it, 4)  # past the first epoch boundary (3 batches per epoch)
    state = json.dumps(it.get_state())
    expected = take(it, 4)
    resumed = make_pipeline(manifest, **kw)
    resumed.set_state(json.loads(state))
    assert_batches_equal(take(resumed, 4), expected)


def test_worker_processes_decode_resample_and_resume_like_the_main_process(manifest, tmp_path):
    # two extra clips the workers must resample (44.1 kHz) and down-mix (stereo)
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (5000, 2)).astype(np.float32)
    sf.write(str(tmp_path / "hi_rate.wav"), rng.uniform(-0.5, 0.5, 9000).astype(np.float32), 44100, subtype="FLOAT")
    sf.write(str(tmp_path / "stereo.wav"), stereo, 16000, subtype="FLOAT")
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{l}\n" for p, l in zip(manifest.paths,
                                    manifest.labels)) + "hi_rate.wav,0\nstereo.wav,1\n")
    from uamix_jax.data.manifest import read_manifest_csv
    m = read_manifest_csv(str(tmp_path / "m.csv"))
    kw = dict(batch_size=4, clip_samples=CLIP, seed=2, train=False)
    reference = take(make_pipeline(m, **kw), 6)
    it = make_pipeline(m, worker_count=2, **kw)
    try:
        first = take(it, 3)
        state = json.dumps(it.get_state())
        rest = take(it, 3)
    finally:
        it.close()
    assert_batches_equal(first + rest, reference)
    resumed = make_pipeline(m, worker_count=2, **kw)
    try:
        resumed.set_state(json.loads(state))
        assert_batches_equal(take(resumed, 3), rest)
    finally:
        resumed.close()
    flat = {int(i): (b, r) for b in reference for r, i in enumerate(b["index"])}
    b, r = flat[N_CLIPS]  # hi_rate.wav: 9000 samples at 44.1 kHz -> 3265 at 16 kHz (< CLIP, so not cropped)
    assert b["length"][r] == round(9000 * 16000 / 44100)
    np.testing.assert_array_equal(b["waveform"][r, :b["length"][r]], load_audio(m.paths[N_CLIPS]))
    b, r = flat[N_CLIPS + 1]
    np.testing.assert_allclose(b["waveform"][r, :4000], stereo.mean(1)[500:4500], atol=1e-7)  # centre crop


def test_steps_per_epoch_and_argument_errors(manifest):
    assert steps_per_epoch(20550, 512) == 40 and steps_per_epoch(20550, 512, drop_remainder=False) == 41
    with pytest.raises(ValueError, match="14 clips make no global batch of 16"):
        make_pipeline(manifest, batch_size=8, process_count=2, clip_samples=CLIP, seed=0, train=True)
    with pytest.raises(ValueError, match="on_bad_audio"):
        make_pipeline(manifest, batch_size=2, clip_samples=CLIP, seed=0, train=True, on_bad_audio="ignore")
    with pytest.raises(ValueError, match="process_index 2"):
        make_pipeline(manifest, batch_size=2, clip_samples=CLIP, seed=0, train=True, process_index=2, process_count=2)
    assert list(itertools.islice(make_pipeline(manifest, batch_size=2, clip_samples=CLIP, seed=0, train=True), 1))


_LEAK_SCRIPT = """
import sys
import jax
import numpy as np
from uamix_jax.data.manifest import read_folder
from uamix_jax.data.pipeline import make_pipeline

if __name__ == "__main__":
    kw = dict(batch_size=4, clip_samples=%d, seed=0, train=True, worker_count=2)
    with make_pipeline(read_folder(sys.argv[1]), **kw) as it:
        # batches still referenced at exit, as the last step's are in a run ("raw": as grain hands them over)
        held = [jax.device_put(next(it._parent if sys.argv[2] == "raw" else it)["waveform"]) for _ in range(6)]
    try:
        next(it)
    except ValueError as e:
        assert "closed" in str(e), e
    else:
        raise AssertionError("a closed pipeline gave a batch")
    print("ok", float(sum(np.asarray(h).sum() for h in held)), flush=True)
""" % CLIP


@pytest.mark.parametrize("mode", ["pipeline", "raw"])
def test_a_closed_pipeline_leaves_no_shared_memory_behind(manifest, mode):
    """worker_count=2 in a fresh process: batches arrive from grain's workers in shared memory. A pipeline used as a
    context manager (closed on exit) releases every block; batches taken from grain's own iterator ("raw", the
    pipeline's parent) and held until exit leak theirs, which shows that the check sees a leak when there is one."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(manifest.paths[0]))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _LEAK_SCRIPT, root, mode], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    if mode == "pipeline":
        assert "resource_tracker" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    else:
        assert "leaked shared_memory objects" in proc.stderr, proc.stderr[-3000:]

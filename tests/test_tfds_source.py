"""The TFDS path: a tiny ArrayRecord dataset built here with a GeneratorBasedBuilder, read back through the pipeline."""
import numpy as np
import pytest

from uamix_jax.audio.io import AudioLoadError
from uamix_jax.data.bad_audio import BadAudioLog
from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.pipeline import make_pipeline
from uamix_jax.data.summary import dataset_summary

tfds = pytest.importorskip("tensorflow_datasets")
from uamix_jax.data.tfds_source import waveform_from_array  # noqa: E402

LABELS = ["left", "right", "stop"]
N_TRAIN = 7
EMPTY = 4  # record 4 holds no samples: a bad clip on the TFDS path


def samples(i: int) -> np.ndarray:
    n = 0 if i == EMPTY else 1500 + 250 * i
    return ((np.arange(n) * (i + 3)) % 20000 - 10000).astype(np.int16)


class UamixTinyAudio(tfds.core.GeneratorBasedBuilder):
    """Seven int16 clips at 16 kHz with a top-level and a nested class label."""

    # tensorflow-datasets 4.9.10 locates a builder defined in a dotted module (pytest names this one
    # 'tests.test_tfds_source') through the `importlib_resources` backport, which current etils no longer installs;
    # a one-part module name takes its plain-file fallback.
    __module__ = "uamix_tiny_audio_builder"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(sample_rate=16000, dtype=np.int16),
            "label": tfds.features.ClassLabel(names=LABELS),
            "speaker": {"label": tfds.features.ClassLabel(names=["s0", "s1"])},
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(N_TRAIN)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"audio": samples(i), "label": i % 3, "speaker": {"label": i % 2}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    UamixTinyAudio(data_dir=str(d), file_format="array_record").download_and_prepare()
    return str(d)


def test_read_back_labels_and_nested_keys(data_dir):
    m = read_dataset("tfds", data_dir, tfds_name="uamix_tiny_audio", split="train")
    assert len(m) == N_TRAIN and m.class_names == tuple(LABELS)
    assert m.paths[0] == "tfds:uamix_tiny_audio/train/0" and m.splits.tolist() == ["train"] * N_TRAIN
    speaker = read_dataset("tfds", data_dir, tfds_name="uamix_tiny_audio", split="train", label_key="speaker/label")
    assert speaker.class_names == ("s0", "s1")
    # TFDS shuffles records on disk: recover each record's generator index i from its audio length (1500 + 250 i)
    ds = tfds.data_source("uamix_tiny_audio", split="train", data_dir=data_dir)
    for record in range(N_TRAIN):
        n = np.asarray(ds[record]["audio"]).shape[0]
        i = EMPTY if n == 0 else (n - 1500) // 250
        assert m.labels[record] == i % 3 and speaker.labels[record] == i % 2


def test_pipeline_over_tfds_gives_the_stored_samples_and_skips_the_empty_record(data_dir):
    m = read_dataset("tfds", data_dir, tfds_name="uamix_tiny_audio", split="train")
    ds = tfds.data_source("uamix_tiny_audio", split="train", data_dir=data_dir)
    stored = [np.asarray(ds[i]["audio"]) for i in range(N_TRAIN)]
    empty_record = next(i for i in range(N_TRAIN) if stored[i].size == 0)
    log = BadAudioLog()
    batches = list(make_pipeline(m, batch_size=3, clip_samples=2500, seed=0, train=False, num_epochs=1,
                                 drop_remainder=False, bad_audio_log=log))
    assert len(batches) == 3
    assert log.entries == {f"tfds:uamix_tiny_audio/train/{empty_record}": "no audio samples (zero length)"}
    for b in batches:
        for row in np.flatnonzero(b["mask"]):
            i = int(b["index"][row])
            assert i != empty_record and b["label"][row] == m.labels[i]
            ref = stored[i].astype(np.float32) / 32768.0
            start = max(0, (ref.shape[0] - 2500) // 2)  # eval: centre crop
            expect = ref[start:start + 2500]
            assert b["length"][row] == expect.shape[0]
            np.testing.assert_array_equal(b["waveform"][row, :expect.shape[0]], expect)
    assert "7 clips, 3 classes" in dataset_summary(m)


def test_waveform_from_array_scales_downmixes_resamples_and_rejects():
    pcm = np.array([[16384, -16384], [8192, 8192]], np.int64)  # int64 holding 16-bit values, as TFDS stores WAV
    np.testing.assert_array_equal(waveform_from_array(pcm, 16000, 16000, "x"), [0.0, 0.25])
    tone = np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100).astype(np.float32)
    out = waveform_from_array(tone, 44100, 16000, "x")
    assert out.dtype == np.float32 and out.shape == (16000,)
    np.testing.assert_allclose(out[100:-100], np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)[100:-100],
                               atol=2e-3)
    with pytest.raises(AudioLoadError, match="zero length"):
        waveform_from_array(np.zeros(0, np.int16), 16000, 16000, "tfds:x/train/3")
    with pytest.raises(AudioLoadError, match="NaN"):
        waveform_from_array(np.array([0.0, np.nan], np.float32), 16000, 16000, "tfds:x/train/3")


def test_unprepared_dataset_error_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build no_such_dataset --file_format=array_record"):
        read_dataset("tfds", str(tmp_path), tfds_name="no_such_dataset", split="train")

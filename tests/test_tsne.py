"""tools/plot_tsne.py: the figure is a valid PNG with one panel per encoder; t-SNE keeps separated classes apart."""
from __future__ import annotations

import importlib.util
import os
import struct

import numpy as np
import pytest
import soundfile as sf

from tests.train_util import ROOT
from uamix_jax.data.synthetic import synthesize_clip


def _tool():
    spec = importlib.util.spec_from_file_location("plot_tsne", os.path.join(ROOT, "tools", "plot_tsne.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_tsne_keeps_separated_classes_apart():
    """Three well-separated clusters in 32-D: in the 2-D map every point's nearest neighbour has its class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = 4.0 * rng.standard_normal((3, 32))[labels] + rng.standard_normal((60, 32))
    points = _tool().tsne_2d(x, perplexity=10.0, seed=0)
    d = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(60) * 1e9
    assert points.shape == (60, 2) and np.all(labels[d.argmin(1)] == labels)


@pytest.mark.slow
def test_figure_is_a_png_with_a_panel_per_encoder(tmp_path):
    from uamix_jax.interop import torch_audiomae as ta

    model = ta.randomize_(ta.MaskedAutoencoderViT(width=32, depth=2, num_heads=2, mlp_dim=64, target_length=1024,
                                                  decoder_depth=1), seed=1).eval()
    ta.save_audiomae_checkpoint(model, tmp_path / "a.pth")
    audio = tmp_path / "audio"
    for c, name in enumerate(("low_tone", "high_tone", "click_train", "up_chirp")):
        os.makedirs(audio / name)
        for k in range(6):
            sf.write(audio / name / f"{k}.wav", synthesize_clip(name, np.random.default_rng([c, k]), 1.0, 16000), 16000)
    tool = _tool()
    common = ["--audio", str(audio), "--target-length", "96", "--clip-seconds", "1", "--no-progress"]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert tool.main(["--encoder", f"AudioMAE={tmp_path / 'a.pth'}", "--classes", "low_tone,click_train,up_chirp",
                      "--out", str(one), *common]) == 0
    assert tool.main(["--encoder", f"a={tmp_path / 'a.pth'}", "--encoder", f"b={tmp_path / 'a.pth'}",
                      "--out", str(two), *common]) == 0
    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert h1 == h2 and w2 > w1 * 1.5  # a second panel widens the figure
    assert tool.main(["--encoder", str(tmp_path / "a.pth"), "--classes", "no_such_class", "--out",
                      str(tmp_path / "x.png"), *common]) == 2
    assert not os.path.exists(tmp_path / "x.png")

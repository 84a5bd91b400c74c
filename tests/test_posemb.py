"""AudioMAE's positional tables: the (8, T/16) swapped-grid construction and the 'prefix' / 'audiomae' policies."""
import math

import numpy as np
import pytest

from uamix_jax.models.posemb import audiomae_grid_table, positional_table, sincos_1d


def reference_table(width: int, n_time: int, n_freq: int = 8) -> np.ndarray:
    """Row by row from AudioMAE's construction (docs/method.md): row 1 + n codes (n mod n_time) in its first half and
    (n div n_time) in its second; each half is [sin(p ω_k)]_k ++ [cos(p ω_k)]_k, ω_k = 10000^(-k/(width/4))."""
    quarter = width // 4
    rows = [np.zeros(width)]
    for n in range(n_freq * n_time):
        row = []
        for p in (n % n_time, n // n_time):
            row += [math.sin(p / 10000 ** (k / quarter)) for k in range(quarter)]
            row += [math.cos(p / 10000 ** (k / quarter)) for k in range(quarter)]
        rows.append(np.array(row))
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("policy", ["prefix", "audiomae"])
def test_t1024_equals_independent_construction(policy):
    table = positional_table(768, 1024, policy=policy)
    assert table.shape == (513, 768) and table.dtype == np.float32
    # float64 → float32 in both: only a float64 last-bit difference could move a float32 rounding, never more.
    np.testing.assert_allclose(table, reference_table(768, 64), rtol=0, atol=1.2e-7)
    assert not table[0].any(), "cls row must be zero"


def test_t1024_equals_torch_reference_table():
    torch = pytest.importorskip("torch")
    from uamix_jax.interop import torch_audiomae as ta

    np.testing.assert_allclose(positional_table(768, 1024), ta.audiomae_pos_embed(768, (8, 64))[0].numpy(),
                               rtol=0, atol=1.2e-7)
    # ... and the table a torch model registers as its pos_embed parameter (AudioMAE's patch_hw = (F/16, T/16))
    model = ta.VisionTransformer(width=32, depth=1, num_heads=2, mlp_dim=64, target_length=1024, num_classes=3)
    assert isinstance(model.pos_embed, torch.nn.Parameter) and not model.pos_embed.requires_grad
    np.testing.assert_allclose(positional_table(32, 1024), model.pos_embed[0].detach().numpy(), rtol=0, atol=1.2e-7)


def test_swapped_grid_codes_n_mod_64_and_n_div_64():
    table = positional_table(768, 1024)
    # token n = 8 t + f sits at (t, f), but its code is (n mod 64, n div 64): check both halves for a few tokens
    for n in (0, 7, 8, 63, 64, 65, 300, 511):
        np.testing.assert_allclose(table[1 + n, :384], sincos_1d(384, np.array([n % 64]))[0], atol=1e-7)
        np.testing.assert_allclose(table[1 + n, 384:], sincos_1d(384, np.array([n // 64]))[0], atol=1e-7)
    assert len({row.tobytes() for row in table[1:]}) == 512, "the code must be bijective"


def test_prefix_and_audiomae_at_t512():
    prefix = positional_table(768, 512, policy="prefix")
    native = positional_table(768, 512, policy="audiomae")
    full = positional_table(768, 1024)
    assert prefix.shape == native.shape == (1 + 8 * 32, 768)
    # prefix: every token keeps its T = 1024 code
    np.testing.assert_array_equal(prefix, full[:257])
    # audiomae: the (8, 32) grid, which is what AudioMAE's interpolate_pos_embed_audio crop of (8, 64) gives
    np.testing.assert_allclose(native, reference_table(768, 32), rtol=0, atol=1.2e-7)
    cropped = full[1:].reshape(8, 64, 768)[:, :32].reshape(256, 768)
    np.testing.assert_array_equal(native[1:], cropped)
    # they agree exactly on the tokens n < 32 (code (n, 0) in both) and nowhere else
    same = np.all(prefix == native, axis=1)
    assert same[:33].all() and not same[33:].any()
    # e.g. token 32: prefix codes (32, 0), audiomae codes (0, 1)
    np.testing.assert_array_equal(native[33], full[1 + 64])


def test_other_grids_and_widths():
    t = positional_table(32, 128, num_mel_bins=64, policy="audiomae")
    assert t.shape == (1 + 4 * 8, 32)
    np.testing.assert_allclose(t, reference_table(32, 8, n_freq=4), rtol=0, atol=1.2e-7)
    assert audiomae_grid_table(32, (4, 8)).dtype == np.float64


def test_table_is_read_only():
    table = positional_table(64, 256)
    with pytest.raises(ValueError):
        table[0, 0] = 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=768, target_length=1000), "multiple of the patch size"),
    (dict(width=768, target_length=2048, policy="prefix"), "posemb='audiomae'"),
    (dict(width=768, target_length=512, policy="natural"), "must be one of"),
    (dict(width=30, target_length=512), "divisible by 4"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        positional_table(**kwargs)


def test_longer_than_pretraining_with_audiomae_policy():
    t = positional_table(64, 2048, policy="audiomae")
    np.testing.assert_allclose(t, reference_table(64, 128), rtol=0, atol=1.2e-7)

"""Plain and soft NNCLR losses and soft targets against an independent numpy implementation of the equations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.objectives.losses import nnclr_loss, soft_nnclr_loss, soft_targets


# ---- numpy oracle, written from the equations (docs/method.md "The NNCLR losses"; Eq. 3-4) ---------------------------
def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_ce(logits, targets):
    """CE(L, Y) = mean over rows r of −Σ_c Y_rc log softmax(L_r)_c."""
    return float(np.mean(-(targets * np_log_softmax(logits)).sum(axis=-1)))


def np_soft_targets(lam, perm):
    batch = len(perm)
    lam = np.broadcast_to(np.asarray(lam, np.float64), (batch,))
    y = np.zeros((batch, batch))
    for i in range(batch):
        y[i, i] += lam[i]
        y[i, perm[i]] += 1.0 - lam[i]
    return y


def np_soft_nnclr(p_a, p_b, nn_a, nn_b, y, tau, eps=0.0):
    batch = len(p_a)
    y = (1.0 - eps) * y + eps / batch
    pa, pb = np_normalize(p_a), np_normalize(p_b)
    return 0.5 * (np_ce(nn_b @ pa.T / tau, y.T) + np_ce(nn_a @ pb.T / tau, y))


def np_grad_fd(fn, x, h=1e-6):
    """Central finite differences of a scalar numpy function, float64."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (fn(xp) - fn(xm)) / (2 * h)
    return grad


def random_inputs(seed, batch=6, dim=5):
    rng = np.random.default_rng(seed)
    p_a, p_b = rng.normal(size=(2, batch, dim))
    nn_a, nn_b = np_normalize(rng.normal(size=(2, batch, dim)))  # queue rows are unit vectors
    lam = rng.uniform(0.2, 0.95, size=batch)
    cyclic = np.roll(np.arange(batch), -1)  # i → i + 1: not its own inverse, so Y is not symmetric
    return p_a, p_b, nn_a, nn_b, lam, cyclic


# ---- soft targets ---------------------------------------------------------------------------------------------------
def test_soft_targets_match_definition_and_rows_sum_to_one():
    _, _, _, _, lam, cyclic = random_inputs(0)
    y = np.asarray(soft_targets(jnp.asarray(lam, jnp.float32), jnp.asarray(cyclic, jnp.int32)))
    np.testing.assert_allclose(y, np_soft_targets(lam, cyclic), atol=1e-7)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    # Orientation: row i (the mixed sample) holds 1 − λ_i at column perm(i), not the other way round.
    for i, j in enumerate(cyclic):
        assert y[i, j] == pytest.approx(1.0 - lam[i], abs=1e-7)
        assert y[j, i] == 0.0


def test_soft_targets_scalar_lambda_and_reversal():
    perm = jnp.arange(5, dtype=jnp.int32)[::-1]
    y = np.asarray(soft_targets(0.75, perm))
    np.testing.assert_allclose(y, np_soft_targets(0.75, np.arange(5)[::-1]), atol=1e-7)
    assert y[2, 2] == 1.0  # the middle of an odd group is its own partner: λ + (1 − λ)
    np.testing.assert_allclose(y, y.T)  # the group reversal is an involution, so Y is symmetric


# ---- losses against numpy -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.15, 0.5])
def test_soft_nnclr_loss_matches_numpy_with_cyclic_perm_and_per_sample_lambda(tau):
    p_a, p_b, nn_a, nn_b, lam, cyclic = random_inputs(1)
    y = np_soft_targets(lam, cyclic)
    got = soft_nnclr_loss(*(jnp.asarray(a, jnp.float32) for a in (p_a, p_b, nn_a, nn_b, y)), tau)
    want = np_soft_nnclr(p_a, p_b, nn_a, nn_b, y, tau)
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-5)
    # The check can fail: with Y and Yᵀ swapped between the two terms the value is different.
    assert abs(np_soft_nnclr(p_a, p_b, nn_a, nn_b, y.T, tau) - want) > 1e-3


def test_nnclr_loss_matches_numpy():
    p_a, p_b, nn_a, nn_b, _, _ = random_inputs(2, batch=8, dim=4)
    got = nnclr_loss(*(jnp.asarray(a, jnp.float32) for a in (p_a, p_b, nn_a, nn_b)))
    assert float(got) == pytest.approx(np_soft_nnclr(p_a, p_b, nn_a, nn_b, np.eye(8), 0.15), rel=1e-5, abs=1e-5)


def test_label_smoothing_matches_numpy():
    p_a, p_b, nn_a, nn_b, lam, cyclic = random_inputs(3)
    y = np_soft_targets(lam, cyclic)
    args = [jnp.asarray(a, jnp.float32) for a in (p_a, p_b, nn_a, nn_b, y)]
    got = soft_nnclr_loss(*args, 0.2, label_smoothing=0.1)
    assert float(got) == pytest.approx(np_soft_nnclr(p_a, p_b, nn_a, nn_b, y, 0.2, eps=0.1), rel=1e-5, abs=1e-5)
    assert abs(float(got) - float(soft_nnclr_loss(*args, 0.2))) > 1e-3


def test_lambda_one_gives_plain_loss_exactly():
    p_a, p_b, nn_a, nn_b, _, cyclic = random_inputs(4)
    args = [jnp.asarray(a, jnp.float32) for a in (p_a, p_b, nn_a, nn_b)]
    plain = nnclr_loss(*args)
    for lam in (1.0, jnp.ones(6, jnp.float32)):
        soft = soft_nnclr_loss(*args, soft_targets(lam, jnp.asarray(cyclic, jnp.int32)))
        np.testing.assert_array_equal(np.asarray(soft), np.asarray(plain))


def test_jit_equals_eager_and_output_is_float32_scalar():
    p_a, p_b, nn_a, nn_b, lam, cyclic = random_inputs(5)
    args = [jnp.asarray(a, jnp.bfloat16) for a in (p_a, p_b, nn_a, nn_b)]
    y = soft_targets(jnp.asarray(lam, jnp.float32), jnp.asarray(cyclic, jnp.int32))
    eager = soft_nnclr_loss(*args, y)
    jitted = jax.jit(soft_nnclr_loss)(*args, y)
    assert eager.shape == () and eager.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)


# ---- gradients ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("soft", [True, False])
def test_gradients_match_finite_differences_and_neighbours_get_none(soft):
    p_a, p_b, nn_a, nn_b, lam, cyclic = random_inputs(6)
    y = np_soft_targets(lam, cyclic) if soft else np.eye(6)
    tau = 0.15
    with jax.enable_x64(True):
        def loss(pa, pb, na, nb):
            if soft:
                return soft_nnclr_loss(pa, pb, na, nb, jnp.asarray(y), tau, label_smoothing=0.05)
            return nnclr_loss(pa, pb, na, nb, tau)

        eps = 0.05 if soft else 0.0
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(a, jnp.float64) for a in (p_a, p_b, nn_a, nn_b)))
        assert grads[0].dtype == jnp.float64
    want_a = np_grad_fd(lambda v: np_soft_nnclr(v, p_b, nn_a, nn_b, y, tau, eps), p_a)
    want_b = np_grad_fd(lambda v: np_soft_nnclr(p_a, v, nn_a, nn_b, y, tau, eps), p_b)
    np.testing.assert_allclose(np.asarray(grads[0]), want_a, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads[1]), want_b, atol=1e-5)
    assert np.abs(want_a).max() > 1e-2  # the gradient being checked is not trivially zero
    np.testing.assert_array_equal(np.asarray(grads[2]), 0.0)
    np.testing.assert_array_equal(np.asarray(grads[3]), 0.0)


# ---- errors ---------------------------------------------------------------------------------------------------------
def test_wrong_targets_shape_is_a_clear_error():
    p = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"targets must be \[4, 4\].*got \(3, 3\)"):
        soft_nnclr_loss(p, p, p, p, jnp.eye(3))


def test_mismatched_inputs_are_rejected():
    with pytest.raises(AssertionError):
        nnclr_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones((5, 3)), jnp.ones((4, 3)))

"""The NNCLR head against PyTorch modules built from MAE-CT's description (docs/method.md, "The NNCLR head")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from uamix_jax.models.head import NNCLRHead, Predictor, Projector, torch_linear_init

SMALL = dict(proj_hidden_dim=12, proj_dim=6, pred_hidden_dim=10)


@pytest.fixture(autouse=True)
def _highest_precision():
    """Float32 against a float64 PyTorch oracle: full-precision matmuls on any backend."""
    with jax.default_matmul_precision("highest"):
        yield


def torch_head(d_in, hidden, out, pred_hidden):
    """MAE-CT's `create_projector` / `create_predictor` (docs/method.md, "The NNCLR head"), in PyTorch."""
    nn = torch.nn
    projector = nn.Sequential(
        nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, out, bias=False), nn.BatchNorm1d(out),
    )
    predictor = nn.Sequential(
        nn.Linear(out, pred_hidden, bias=False), nn.BatchNorm1d(pred_hidden), nn.ReLU(),
        nn.Linear(pred_hidden, out, bias=False),
    )
    return projector.double(), predictor.double()


def load_into_torch(variables, projector, predictor):
    """Copies Flax variables into the torch modules (kernel [in, out] → weight [out, in])."""
    p, s = variables["params"], variables["batch_stats"]
    t = lambda a: torch.from_numpy(np.array(a, np.float64))  # noqa: E731 - a writable float64 copy
    pairs = [(projector, "projector", [0, 3, 6], [1, 4, 7]), (predictor, "predictor", [0, 3], [1])]
    with torch.no_grad():
        for module, name, linears, bns in pairs:
            for i, layer in enumerate(linears):
                module[layer].weight.copy_(t(p[name][f"linear{i}"]["kernel"]).T)
            for i, layer in enumerate(bns):
                module[layer].weight.copy_(t(p[name][f"bn{i}"]["scale"]))
                module[layer].bias.copy_(t(p[name][f"bn{i}"]["bias"]))
                module[layer].running_mean.copy_(t(s[name][f"bn{i}"]["mean"]))
                module[layer].running_var.copy_(t(s[name][f"bn{i}"]["var"]))


def init_head(head, batch=16, dim=8, seed=0):
    h = jax.random.normal(jax.random.key(seed + 1), (batch, dim)) * 2.0 + 0.5
    variables = head.init(jax.random.key(seed), h)
    # Non-trivial BN affine parameters so that the comparison exercises them.
    variables = {
        "params": jax.tree.map(
            lambda v: v + 0.1 * jax.random.normal(jax.random.key(seed + 2), v.shape) if v.ndim == 1 else v,
            variables["params"],
        ),
        "batch_stats": variables["batch_stats"],
    }
    return h, variables


def test_parameter_count_equals_mae_ct_head_for_vit_base():
    shapes = jax.eval_shape(NNCLRHead().init, jax.random.key(0), jnp.zeros((2, 768)))
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]))
    projector, predictor = torch_head(768, 2048, 256, 4096)
    torch_count = sum(p.numel() for p in projector.parameters()) + sum(p.numel() for p in predictor.parameters())
    by_hand = (768 * 2048 + 2048 * 2048 + 2048 * 256 + 2 * (2048 + 2048 + 256)) + (256 * 4096 + 4096 * 256 + 2 * 4096)
    assert count == torch_count == by_hand == 8_405_504
    stats_count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["batch_stats"]))
    assert stats_count == 2 * (2048 + 2048 + 256 + 4096)


def test_train_mode_matches_pytorch_outputs_and_running_stats():
    head = NNCLRHead(**SMALL)
    h, variables = init_head(head)
    (z, p), updates = head.apply(variables, h, train=True, mutable=["batch_stats"])
    projector, predictor = torch_head(8, 12, 6, 10)
    load_into_torch(variables, projector, predictor)
    projector.train(), predictor.train()
    with torch.no_grad():
        tz = projector(torch.from_numpy(np.asarray(h, np.float64)))
        tp = predictor(tz)
    assert z.dtype == p.dtype == jnp.float32 and z.shape == p.shape == (16, 6)
    np.testing.assert_allclose(np.asarray(z), tz.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(p), tp.numpy(), atol=2e-5)
    # Running statistics. PyTorch's running_var is m · 1 + (1 − m) · σ² · n/(n − 1) (unbiased), Flax's keeps the
    # biased σ²: recover σ² from PyTorch's buffer and check Flax's m · 1 + (1 − m) · σ², and the export conversion.
    m, n = 0.9, h.shape[0]
    for name, module, bns in (("projector", projector, [1, 4, 7]), ("predictor", predictor, [1])):
        for i, layer in enumerate(bns):
            got = updates["batch_stats"][name][f"bn{i}"]
            np.testing.assert_allclose(np.asarray(got["mean"]), module[layer].running_mean.numpy(), atol=1e-6)
            biased = (module[layer].running_var.numpy() - m) / (1 - m) * (n - 1) / n
            np.testing.assert_allclose(np.asarray(got["var"]), m + (1 - m) * biased, rtol=1e-5)
            assert np.all(np.asarray(got["var"]) < module[layer].running_var.numpy())  # biased < unbiased


def test_eval_mode_uses_running_stats_like_pytorch():
    head = NNCLRHead(**SMALL)
    h, variables = init_head(head, seed=3)
    _, updates = head.apply(variables, h, mutable=["batch_stats"])  # one training step moves the stats
    variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    z, p = head.apply(variables, h[:5], train=False)
    projector, predictor = torch_head(8, 12, 6, 10)
    load_into_torch(variables, projector, predictor)
    projector.eval(), predictor.eval()
    with torch.no_grad():
        tz = projector(torch.from_numpy(np.asarray(h[:5], np.float64)))
        tp = predictor(tz)
    np.testing.assert_allclose(np.asarray(z), tz.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(p), tp.numpy(), atol=2e-5)


def test_linear_init_is_pytorch_uniform():
    kernel = np.asarray(torch_linear_init(jax.random.key(0), (300, 400)), np.float64)
    bound = 1 / np.sqrt(300)
    assert np.abs(kernel).max() <= bound
    assert stats.kstest(kernel.ravel()[:5000], "uniform", args=(-bound, 2 * bound)).pvalue > 0.01
    variables = NNCLRHead(**SMALL).init(jax.random.key(1), jnp.ones((4, 8)))
    for name, fan_in in (("linear0", 8), ("linear1", 12), ("linear2", 12)):
        assert np.abs(np.asarray(variables["params"]["projector"][name]["kernel"])).max() <= 1 / np.sqrt(fan_in)
    bn = variables["params"]["projector"]["bn2"]
    np.testing.assert_array_equal(np.asarray(bn["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(bn["bias"]), 0.0)


def test_project_method_runs_the_ema_projector_alone():
    head = NNCLRHead(**SMALL)
    h, variables = init_head(head, seed=5)
    (z, _), updates = head.apply(variables, h, mutable=["batch_stats"])
    ema_params = jax.tree.map(lambda v: 0.9 * v, variables["params"]["projector"])  # a different, EMA-like copy
    ema_stats = variables["batch_stats"]["projector"]
    z_ema, ema_updates = head.apply(
        {"params": {"projector": ema_params}, "batch_stats": {"projector": ema_stats}},
        h, method=NNCLRHead.project, mutable=["batch_stats"],
    )
    assert set(ema_updates["batch_stats"]) == {"projector"}  # the predictor is never touched
    # The same as a standalone Projector with those variables, and different from the online projection.
    z_ref, ref_updates = Projector(**{k: SMALL[k] for k in ("proj_hidden_dim", "proj_dim")}).apply(
        {"params": ema_params, "batch_stats": ema_stats}, h, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(np.asarray(z_ema), np.asarray(z_ref), atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        ema_updates["batch_stats"]["projector"], ref_updates["batch_stats"],
    )
    assert np.abs(np.asarray(z_ema) - np.asarray(z)).max() > 1e-3
    # With the online variables, project() is the head's own projection.
    z_online = head.apply(variables, h, method=NNCLRHead.project, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(np.asarray(z_online), np.asarray(z), atol=1e-6)


def test_bfloat16_mode_keeps_float32_params_stats_and_outputs():
    head32, head16 = NNCLRHead(**SMALL), NNCLRHead(**SMALL, dtype=jnp.bfloat16)
    h, variables = init_head(head32, seed=7)
    init16 = head16.init(jax.random.key(0), h)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(init16))
    (z16, p16), upd16 = head16.apply(variables, h, mutable=["batch_stats"])
    (z32, p32), _ = head32.apply(variables, h, mutable=["batch_stats"])
    assert z16.dtype == p16.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(upd16))
    np.testing.assert_allclose(np.asarray(z16), np.asarray(z32), atol=0.1)  # bf16 has an 8-bit mantissa
    np.testing.assert_allclose(np.asarray(p16), np.asarray(p32), atol=0.1)


def test_running_variance_export_conversion_approaches_pytorch():
    """After many steps on one batch, var · n/(n − 1) (the export's conversion) gives PyTorch's running_var: the only
    inexact term is the initial 1's share 0.9^steps, scaled by n/(n − 1)."""
    head, steps = Predictor(proj_dim=6, pred_hidden_dim=10), 150
    z = jax.random.normal(jax.random.key(4), (16, 6))
    variables = head.init(jax.random.key(0), z)
    apply = jax.jit(lambda v: head.apply(v, z, mutable=["batch_stats"])[1])
    for _ in range(steps):
        variables = {"params": variables["params"], **apply(variables)}
    _, predictor = torch_head(8, 12, 6, 10)
    with torch.no_grad():
        predictor[0].weight.copy_(torch.from_numpy(np.array(variables["params"]["linear0"]["kernel"], np.float64)).T)
        predictor.train()
        for _ in range(steps):
            predictor(torch.from_numpy(np.asarray(z, np.float64)))
    n = z.shape[0]
    exported = np.asarray(variables["batch_stats"]["bn0"]["var"], np.float64) * n / (n - 1)
    np.testing.assert_allclose(exported, predictor[1].running_var.numpy(), rtol=1e-5)
    assert np.abs(np.asarray(variables["batch_stats"]["bn0"]["var"]) - predictor[1].running_var.numpy()).min() > 1e-3


def test_head_rejects_non_matrix_input():
    with pytest.raises(AssertionError):
        Projector(proj_hidden_dim=12, proj_dim=6).init(jax.random.key(0), jnp.ones((2, 3, 4)))
    with pytest.raises(AssertionError):
        Predictor(proj_dim=6, pred_hidden_dim=10).init(jax.random.key(0), jnp.ones((2, 3, 6)))

"""The compute-dtype and matmul-precision names (uamix_jax/models/precision.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.models.precision import DTYPES, PRECISIONS, check_precision, compute_dtype


def test_compute_dtype_names():
    assert compute_dtype("float32") == jnp.float32
    assert compute_dtype("bfloat16") == jnp.bfloat16
    assert sorted(DTYPES) == ["bfloat16", "float32"]
    for bad in ("float16", "fp32", "bf16", ""):
        with pytest.raises(ValueError, match=r"config\.dtype must be one of \['bfloat16', 'float32'\], got '"):
            compute_dtype(bad)


def test_precision_names_are_jax_matmul_precisions():
    assert PRECISIONS == ("default", "high", "highest")
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    for name in PRECISIONS:
        assert check_precision(name) == name
        with jax.default_matmul_precision(check_precision(name)):  # every name is one JAX accepts
            got = np.asarray(jnp.asarray(x) @ jnp.asarray(x))
        np.testing.assert_allclose(got, x.astype(np.float64) @ x, rtol=1e-2, atol=1e-2)
    for bad in ("float32", "HIGHEST", "fastest"):
        with pytest.raises(ValueError, match=r"config\.precision must be one of \('default', 'high', 'highest'\)"):
            check_precision(bad)


def test_fewshot_command_uses_these_names():
    """The few-shot command resolves config.dtype here (evaluation/sources.py: one list of names in the project)."""
    from uamix_jax.evaluation import fewshot_main, sources

    assert sources.compute_dtype is compute_dtype
    assert not hasattr(sources, "DTYPES") and not hasattr(fewshot_main, "DTYPES")

"""Every test sees 8 fake CPU devices and shares a persistent compilation cache in a temp folder."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_CACHE = os.environ.setdefault(
    "UAMIX_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), f"uamix_jax_test_cache_{os.getuid()}")
)

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def n_devices() -> int:
    assert jax.device_count() == 8, "tests/conftest.py must run before jax is imported"
    return jax.device_count()

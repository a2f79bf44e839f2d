"""Test-wide settings: float64 is on so that f64 parity can be checked; f32 tests pass f32."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
# Parity at 1e-5 in float32 needs float32 matmuls; on GPU JAX's default precision is TF32
# (errors near 3e-4), as the README says.
if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Fuzzed parity: a bounded profile by default (CI), a long one with HYPOTHESIS_PROFILE=long.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""Test-wide settings: float64 is on so that f64 parity can be checked; f32 tests pass f32."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

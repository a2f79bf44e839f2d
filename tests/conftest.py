"""Test-wide settings: float64 is on so that f64 parity can be checked; f32 tests pass f32.

Compiling small XLA programs dominates the suite's time, so they are compiled at XLA's backend
optimisation level 0: LLVM's code generation unoptimised, XLA's own graph passes and the matmul
libraries as ever. On 2 cores that took the suite from 8:11 to 5:57, and every test passes at
either level. An `--xla_backend_optimization_level` already in `XLA_FLAGS` is kept:
`XLA_FLAGS=--xla_backend_optimization_level=3 python -m pytest` runs the suite on the code
that users' calls compile to.
"""

import os

if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
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
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

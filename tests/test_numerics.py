"""Numerics: long sequences against a float64 reference, low-precision compute, NaN and inf.

References: torch in float64 (the truth) and torch in float32 (the bar for float32 error).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_reference import numpy_state_dict, run_torch, torch_module

from jaxrnn import functional as F
from jaxrnn.functional import RecurrentSpec

FUNCTIONS = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}
# Max abs error of the output against float64 at T=10,000, H=8 (measured: bf16 6e-3 to 1.1e-2,
# f16 8e-4 to 1.4e-3); the README states these bounds.
LOW_PRECISION_BOUNDS = {jnp.bfloat16: 2e-2, jnp.float16: 3e-3}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_long_sequence_error_is_torchs_and_low_precision_is_bounded(kind, rng):
    spec = RecurrentSpec(kind, 4, 8, bidirectional=True)
    module = torch_module(spec, dtype=np.float64)
    params64 = numpy_state_dict(module)
    x = rng.standard_normal((10_000, 2, 4))
    (reference, *_), _ = run_torch(module, x)
    (torch32, *_), _ = run_torch(module.float(), x.astype(np.float32))
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    run = jax.jit(FUNCTIONS[kind], static_argnames="dtype")
    ours = np.asarray(run(params32, x.astype(np.float32))[0], np.float64)
    torch_error, our_error = np.abs(torch32 - reference), np.abs(ours - reference)
    # Both stay at a few float32 ulps over 10,000 steps (no drift), ours within 2x of torch's.
    assert our_error.max() < 1e-6 and torch_error.max() < 1e-6
    assert our_error.max() < 2 * torch_error.max() and our_error.mean() < 2 * torch_error.mean()
    for dtype, bound in LOW_PRECISION_BOUNDS.items():
        low = run(params32, x.astype(np.float32), dtype=dtype)[0]
        assert low.dtype == dtype
        assert np.abs(np.asarray(low, np.float64) - reference).max() < bound, dtype


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_nan_and_inf_propagate_as_in_torch(kind, value, rng):
    spec = RecurrentSpec(kind, 3, 4, bidirectional=True)
    module = torch_module(spec, dtype=np.float64)
    x = rng.standard_normal((6, 3, 3))
    x[2, 1, 0] = value  # one element of sequence 1
    expected, _ = run_torch(module, x)
    actual = FUNCTIONS[kind](numpy_state_dict(module), x)
    for a, e in zip((actual[0], *jax.tree.leaves(actual[1])), expected):
        a = np.asarray(a)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_allclose(a[~np.isnan(e)], e[~np.isnan(e)], atol=1e-10)


def test_nan_in_padding_is_never_read(rng):
    """As torch's packed sequences: values past a sequence's length touch nothing, gradients too."""
    spec = RecurrentSpec("lstm", 3, 4, bidirectional=True)
    module = torch_module(spec, dtype=np.float64)
    params = numpy_state_dict(module)
    x = rng.standard_normal((6, 2, 3))
    lengths = np.array([6, 3])
    clean = x.copy()
    x[3:, 1] = np.nan
    weights = [rng.standard_normal(s) for s in ((6, 2, 8), (2, 2, 4), (2, 2, 4))]
    expected, expected_grads = run_torch(module, clean, seq_lengths=lengths, loss_weights=weights)

    def loss(params, x):
        output, state = F.lstm(params, x, seq_lengths=lengths)
        return sum((o * w).sum() for o, w in zip((output, *state), weights))

    grads = jax.grad(loss, argnums=(0, 1))(params, x)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads[0]))
    for name, grad in grads[0].items():
        np.testing.assert_allclose(grad, expected_grads[name], atol=1e-10)
    np.testing.assert_allclose(grads[1][:, 0], expected_grads["x"][:, 0], atol=1e-10)
    np.testing.assert_allclose(grads[1][:3, 1], expected_grads["x"][:3, 1], atol=1e-10)

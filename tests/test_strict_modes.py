"""The layers run, with the same numbers, under JAX's strict modes, which careful users turn on:
no implicit dtype promotion (`jax_numpy_dtype_promotion="strict"`) and no implicit rank
broadcasting (`jax_numpy_rank_promotion="raise"`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matrix import onednn_platform

import jaxrnn
from jaxrnn import functional as F

X = jax.random.normal(jax.random.key(1), (6, 3, 4), jnp.float32)
LENGTHS = jnp.array([6, 4, 2])


def _assert_same_under_strict_modes(results):
    """`results()`, every leaf, is the same bit for bit under both strict modes as without. The
    modes act at trace time and are part of `jit`'s cache key, so one compilation in each mode
    checks the whole computation (op by op these tests took 2.4 times as long)."""
    results = jax.jit(results)
    expected = results()
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        got = results()
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(e, np.float32))


def _layer_results(kind: str, implementation: str):
    """Gradients of a bidirectional layer with `seq_lengths`, and bfloat16 outputs, batched with
    lengths and unbatched without: 2 layers on the scan, 1 on the kernels (the stacking between
    layers is the same code for all)."""
    num_layers = 2 if implementation == "xla" else 1
    params = F.RecurrentSpec(kind, 4, 8, num_layers=num_layers, bidirectional=True).init(jax.random.key(0))
    layer = getattr(F, kind)

    def loss(params, x):
        return layer(params, x, seq_lengths=LENGTHS, implementation=implementation)[0].sum()

    grads = jax.grad(loss, argnums=(0, 1))(params, X)
    bf16 = [
        layer(params, X, seq_lengths=LENGTHS, implementation=implementation, dtype=jnp.bfloat16)[0],
        layer(params, X[:, 0], implementation=implementation, dtype=jnp.bfloat16)[0],
    ]
    return grads, bf16


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("implementation", ["xla", pytest.param("onednn", marks=onednn_platform), "pallas"])
def test_layers_under_strict_modes_give_the_same_numbers(kind, implementation):
    _assert_same_under_strict_modes(lambda: _layer_results(kind, implementation))


def _cell_results(cell):
    """A cell's new state, batched and unbatched, in float32 and bfloat16."""
    results = []
    for dtype in (None, jnp.bfloat16):
        model = cell(4, 8, dtype=dtype)
        variables = model.init(jax.random.key(0), X[0])
        results += [model.apply(variables, X[0]), model.apply(variables, X[0, 0])]
    return results


@pytest.mark.parametrize("cell", [jaxrnn.LSTMCell, jaxrnn.GRUCell, jaxrnn.RNNCell])
def test_cells_under_strict_modes_give_the_same_numbers(cell):
    _assert_same_under_strict_modes(lambda: _cell_results(cell))

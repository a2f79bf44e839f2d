"""The fused backward's temporary memory, from XLA's own buffer assignment.

Memory is time on CPU (each call faults its temporaries in afresh) and the limit on sequence
length, so the budget is pinned: the temporaries of a one-way layer's forward+backward, in units
of its `(T, B, G * H)` input projections. The forward writes its pre-activations over the
projections and the backward their gradients over those; a copy of that buffer into either
loop (as a unit direction axis once caused) shows up here as one unit more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from matrix import BACKEND

import jaxrnn

T, B, HIDDEN = 50, 32, 32
# Measured with jax 0.10.2; each is within 0.1 of the budget.
BUDGET = {"LSTM": (4, 1.4), "GRU": (3, 2.5), "RNN": (1, 1.2)}


@pytest.mark.skipif(BACKEND != "cpu", reason="the budget is XLA:CPU's buffer assignment")
@pytest.mark.parametrize("kind", sorted(BUDGET))
@pytest.mark.parametrize("unroll", [1, 8])  # 8: as on GPU; unrolled, lax.scan copied the buffer every iteration
def test_fwd_bwd_temporaries_within_budget(kind, unroll):
    gates, budget = BUDGET[kind]
    model = getattr(jaxrnn, kind)(HIDDEN, HIDDEN, unroll=unroll)
    x = jnp.ones((T, B, HIDDEN), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda v, x: model.apply(v, x)[0].sum(), argnums=(0, 1)))
    temp_bytes = grad.lower(variables, x).compile().memory_analysis().temp_size_in_bytes
    projections = T * B * gates * HIDDEN * 4
    budget += 2 * unroll / T  # an iteration's slots, carried in and out; a copy of the buffer is 1.0
    assert temp_bytes / projections < budget, f"{kind}: temporaries {temp_bytes / projections:.2f}x the projections"

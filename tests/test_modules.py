"""Module behaviour beyond parity: parameters and init, dropout, jit/grad/vmap, recompilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from frontends import FRONTENDS, layer_fn
from torch_reference import torch_module

import jaxrnn
from jaxrnn import functional as F
from jaxrnn.convert import module_for
from jaxrnn.functional import RecurrentSpec

SPECS = [
    RecurrentSpec("lstm", 3, 8, num_layers=2, bidirectional=True, proj_size=4),
    RecurrentSpec("gru", 3, 8, bias=False),
    RecurrentSpec("rnn", 3, 8, nonlinearity="relu"),
    RecurrentSpec("lstm", 3, 8, cell=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=RecurrentSpec.describe)
def test_params_are_torchs_state_dict_with_torchs_init(spec):
    x = jnp.ones((3, 3) if spec.cell else (4, 3), jnp.float32)
    params = module_for(spec).init(jax.random.key(0), x)["params"]
    expected = {k: tuple(v.shape) for k, v in torch_module(spec).state_dict().items()}
    assert {k: v.shape for k, v in params.items()} == expected
    values = np.concatenate([np.ravel(v) for v in params.values()])
    bound = 1 / np.sqrt(spec.hidden_size)
    assert values.dtype == np.float32
    assert np.all(np.abs(values) <= bound) and values.max() > 0.9 * bound and values.min() < -0.9 * bound
    assert abs(values.mean()) < 0.1 * bound  # U(-b, b): mean 0, std b / sqrt(3)
    assert abs(values.std() - bound / np.sqrt(3)) < 0.1 * bound


def _identity_second_layer(p: float):
    """A 2-layer relu RNN whose second layer passes its input through: output = dropout(layer 0)."""
    model = jaxrnn.RNN(4, 4, num_layers=2, nonlinearity="relu", dropout=p)
    x = jnp.ones((50, 40, 4), jnp.float32)
    params = dict(model.init(jax.random.key(0), x)["params"])
    params |= {
        "weight_ih_l0": jnp.abs(params["weight_ih_l0"]) + 0.1,
        "weight_ih_l1": jnp.eye(4),
        "weight_hh_l1": jnp.zeros((4, 4)),
        "bias_ih_l1": jnp.zeros(4),
        "bias_hh_l1": jnp.zeros(4),
    }
    return model, {"params": params}, x


def test_dropout_only_between_layers_at_the_rate_and_reproducible():
    p = 0.3
    model, variables, x = _identity_second_layer(p)
    clean, _ = model.apply(variables, x)  # deterministic=True by default
    no_dropout, _ = model.clone(dropout=0.0).apply(variables, x)
    np.testing.assert_array_equal(clean, no_dropout)
    assert np.all(clean > 0)

    dropped, _ = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    ratio = np.asarray(dropped / clean)
    kept = ratio != 0
    # Between layers only: one mask of rate p (dropping the last layer too would give 1-(1-p)^2).
    assert abs((1 - kept.mean()) - p) < 0.02, 1 - kept.mean()
    np.testing.assert_allclose(ratio[kept], 1 / (1 - p), rtol=1e-6)
    again, _ = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    other, _ = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(dropped, again)
    assert not np.array_equal(dropped, other)


def test_single_layer_dropout_is_a_no_op_as_in_torch():
    model = jaxrnn.GRU(3, 4, dropout=0.5)
    x = jnp.ones((5, 2, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    train, _ = model.apply(variables, x, deterministic=False)  # no rng needed: nothing to drop
    np.testing.assert_array_equal(train, model.apply(variables, x)[0])


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_vmap_over_sequences_equals_the_batched_call(frontend):
    spec = RecurrentSpec("lstm", 3, 5, bidirectional=True)
    params = {k: jnp.asarray(v) for k, v in spec.init(jax.random.key(0)).items()}
    fn = layer_fn(frontend, spec)
    x = jax.random.normal(jax.random.key(1), (4, 6, 3))  # (B, T, I): vmap over B
    lengths = jnp.array([6, 2, 5, 1])
    per_sequence = jax.vmap(lambda x, n: fn(params, x, None, n))(x, lengths)
    batched = fn(params, jnp.swapaxes(x, 0, 1), None, lengths)
    np.testing.assert_allclose(per_sequence[0], jnp.swapaxes(batched[0], 0, 1), atol=1e-12)
    np.testing.assert_allclose(per_sequence[1].h, jnp.swapaxes(batched[1].h, 0, 1), atol=1e-12)


def test_autodiff_backward_supports_forward_mode():
    spec = RecurrentSpec("gru", 3, 4)
    params = spec.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 2, 3), jnp.float64)

    def f(x, fused):
        return F.gru(params, x, fused_backward=fused)[0].sum()

    tangent = jnp.ones_like(x)
    _, forward = jax.jvp(lambda x: f(x, False), (x,), (tangent,))
    np.testing.assert_allclose(forward, jnp.vdot(jax.grad(f)(x, True), tangent), rtol=1e-10)


def test_new_values_do_not_recompile():
    spec = RecurrentSpec("lstm", 3, 4)
    run = jax.jit(lambda p, x, hx, n: F.lstm(p, x, hx, seq_lengths=n))
    x = jnp.ones((5, 2, 3), jnp.float32)
    hx = (jnp.zeros((1, 2, 4), jnp.float32),) * 2
    run(spec.init(jax.random.key(0)), x, hx, jnp.array([5, 3]))
    before = run._cache_size()
    run(spec.init(jax.random.key(1)), x + 1, (hx[0] + 1, hx[1]), jnp.array([2, 4]))
    assert run._cache_size() == before


def test_dtype_and_param_dtype_knobs():
    model = jaxrnn.LSTM(3, 4, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    x = jnp.ones((5, 2, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    assert variables["params"]["weight_ih_l0"].dtype == jnp.float32
    output, (h_n, c_n) = model.apply(variables, x)
    assert output.dtype == h_n.dtype == c_n.dtype == jnp.bfloat16
    reference, _ = model.clone(dtype=None).apply(variables, x)
    assert np.abs(np.asarray(output, np.float32) - reference).max() < 1e-2
    cell = RecurrentSpec("lstm", 3, 4, cell=True).init(jax.random.key(0))
    low, high = F.lstm_cell(cell, x[0], dtype=jnp.bfloat16), F.lstm_cell(cell, x[0])
    assert all(a.dtype == jnp.bfloat16 for a in low)
    assert max(np.abs(np.asarray(a, np.float32) - b).max() for a, b in zip(low, high)) < 1e-2


def test_torch_layout_checkpoint_runs_in_linen_like_torch():
    """The README's promise: load a torch LSTM, run it in Flax, get torch's numbers."""
    torch_lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    model, variables = jaxrnn.convert.module_from_torch(torch_lstm)
    x = torch.randn(2, 7, 3)
    expected, _ = torch_lstm(x)
    output, _ = jax.jit(model.apply)(variables, x.numpy())
    np.testing.assert_allclose(output, expected.detach().numpy(), atol=1e-5)

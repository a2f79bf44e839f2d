"""NNX specifics: from_torch / to_torch, train and eval modes, nnx.jit / nnx.grad with optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxrnn.nnx
from jaxrnn.convert import to_torch


@pytest.mark.parametrize(
    "cls, torch_module",
    [
        (jaxrnn.nnx.LSTM, lambda: torch.nn.LSTM(3, 5, num_layers=2, proj_size=2, batch_first=True)),
        (jaxrnn.nnx.GRU, lambda: torch.nn.GRU(3, 5, num_layers=2, bidirectional=True, dropout=0.5)),
        (jaxrnn.nnx.RNN, lambda: torch.nn.RNN(3, 5, nonlinearity="relu", bias=False)),
        (jaxrnn.nnx.LSTMCell, lambda: torch.nn.LSTMCell(3, 5)),
        (jaxrnn.nnx.GRUCell, lambda: torch.nn.GRUCell(3, 5)),
        (jaxrnn.nnx.RNNCell, lambda: torch.nn.RNNCell(3, 5, nonlinearity="relu")),
    ],
)
def test_from_torch_then_to_torch_is_bit_exact_and_runs_like_torch(cls, torch_module):
    source = torch_module().eval()
    model = cls.from_torch(source)
    model.eval()
    state_dict = to_torch(nnx.state(model, nnx.Param))
    for name, tensor in source.state_dict().items():
        assert torch.equal(state_dict[name], tensor), name
    x = torch.randn(2, 4, 3) if not isinstance(source, torch.nn.RNNCellBase) else torch.randn(2, 3)
    expected = source(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    actual = model(x.numpy())
    actual = actual[0] if isinstance(actual, tuple) else actual
    np.testing.assert_allclose(actual, expected.detach().numpy(), atol=1e-5)


def test_from_torch_refuses_another_kind():
    with pytest.raises(ValueError, match=r"'weight_ih_l0' has 15 rows, not 4 \* hidden_size \(lstm\)"):
        jaxrnn.nnx.LSTM.from_torch(torch.nn.GRU(3, 5).state_dict())
    with pytest.raises(TypeError, match=r"LSTM.from_torch got the weights of a LSTMCell\(3, 5\)"):
        jaxrnn.nnx.LSTM.from_torch(torch.nn.LSTMCell(3, 5))


def test_train_and_eval_modes_drive_dropout():
    model = jaxrnn.nnx.GRU(3, 8, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = jnp.ones((6, 4, 3), jnp.float32)
    train_a, _ = model(x)  # NNX and torch both start in training mode
    train_b, _ = model(x)  # the dropout stream advances
    model.eval()
    eval_a, _ = model(x)
    eval_b, _ = model(x)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.array_equal(train_a, train_b) and not np.array_equal(train_a, eval_a)


def test_optax_training_step_under_nnx_jit():
    model = jaxrnn.nnx.LSTM(3, 8, batch_first=True, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (4, 5, 3))
    target = jnp.ones((4, 5, 8)) * 0.5

    @nnx.jit
    def step(model, optimizer, x):
        def loss_fn(model):
            output, _ = model(x, seq_lengths=jnp.array([5, 4, 3, 2]))
            return jnp.mean((output - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]

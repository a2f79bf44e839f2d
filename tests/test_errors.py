"""Bad input gets a ValueError/TypeError naming the argument, what was expected and what came."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from matrix import onednn_platform

import jaxrnn
import jaxrnn.nnx
from jaxrnn import functional as F
from jaxrnn.functional import RecurrentSpec

LSTM = RecurrentSpec("lstm", 3, 5, num_layers=2).init(jax.random.key(0))
GRU = RecurrentSpec("gru", 3, 5).init(jax.random.key(0))
CELL = RecurrentSpec("lstm", 3, 5, cell=True).init(jax.random.key(0))
X = jnp.ones((4, 2, 3), jnp.float32)

CALL_CASES = [
    (lambda: F.lstm(LSTM, jnp.ones((4, 2, 2, 3))), ValueError, r"x must have shape \(T, B, 3\) or, unbatched, \(T, 3\).*got shape \(4, 2, 2, 3\)"),
    (lambda: F.lstm(LSTM, jnp.ones((4, 2, 7))), ValueError, r"x must have shape \(T, B, 3\).*got shape \(4, 2, 7\)"),
    (lambda: F.lstm(LSTM, jnp.ones((2, 4, 7)), batch_first=True), ValueError, r"\(B, T, 3\)"),
    (lambda: F.lstm(LSTM, jnp.ones((4, 2, 3), jnp.int32)), TypeError, "x must be a floating-point array, got dtype int32"),
    (lambda: F.lstm(LSTM, X, jnp.zeros((2, 2, 5))), TypeError, r"hx for an LSTM must be a pair \(h_0, c_0\) of shapes \(2, 2, 5\) and \(2, 2, 5\), got ArrayImpl"),
    (lambda: F.lstm(LSTM, X, (jnp.zeros((2, 2, 5)), jnp.zeros((1, 2, 5)))), ValueError, r"c_0 must have shape \(2, 2, 5\), got \(1, 2, 5\)"),
    (lambda: F.gru(GRU, X, jnp.zeros((1, 3, 5))), ValueError, r"hx must have shape \(1, 2, 5\), got \(1, 3, 5\)"),
    (lambda: F.gru(GRU, X, (jnp.zeros((1, 2, 5)),)), TypeError, r"hx for GRU\(3, 5\) must be one array of shape \(1, 2, 5\), got a tuple of 1"),
    (lambda: F.gru(GRU, X[:, 0], jnp.zeros((1, 2, 5))), ValueError, r"hx must have shape \(1, 5\), got \(1, 2, 5\)"),
    (lambda: F.gru(GRU, X, seq_lengths=jnp.array([4, 2, 1])), ValueError, r"seq_lengths must have shape \(2,\) \(one length per sequence\), got \(3,\)"),
    (lambda: F.gru(GRU, X, seq_lengths=jnp.array([4.0, 2.0])), TypeError, "seq_lengths must be an integer array, got dtype float"),
    (lambda: F.gru(GRU, X, seq_lengths=np.array([5, 2])), ValueError, r"seq_lengths must lie in \[1, T=4\], got values in \[2, 5\]"),
    (lambda: F.gru(GRU, X, seq_lengths=np.array([0, 2])), ValueError, r"seq_lengths must lie in \[1, T=4\], got values in \[0, 2\]"),
    (lambda: F.lstm(LSTM, jnp.ones((2, 0, 3)), batch_first=True), ValueError, r"x must hold at least one time step \(T >= 1\), got shape \(2, 0, 3\)"),
    (lambda: F.gru(GRU, jnp.ones((0, 3))), ValueError, r"at least one time step \(T >= 1\), got shape \(0, 3\)"),
    (lambda: F.gru(GRU, X, remat=0), ValueError, r"remat must be a bool or a positive chunk length, got 0"),
    (lambda: F.gru(GRU, X, unroll=0), ValueError, r"unroll must be a positive int or None, got 0"),
    (lambda: F.gru(GRU, X, unroll=2.0), ValueError, r"unroll must be a positive int or None, got 2.0"),
    (lambda: F.gru(GRU, X, dropout=1.5), ValueError, r"dropout must be a probability in \[0, 1\], got 1.5"),
    (lambda: F.gru(LSTM, X), ValueError, r"'weight_ih_l0' has 20 rows, not 3 \* hidden_size \(gru\)"),
    (lambda: F.lstm({**LSTM, "bias_ih_l9": LSTM["bias_ih_l0"]}, X), ValueError, r"unexpected keys \['bias_ih_l9'\]"),
    (lambda: F.lstm({k: v for k, v in LSTM.items() if k != "weight_hh_l1"}, X), ValueError, r"missing keys \['weight_hh_l1'\]"),
    (lambda: F.lstm(CELL, X), ValueError, r"params hold a LSTMCell\(3, 5\); use lstm_cell for a single cell"),
    (lambda: F.lstm_cell(LSTM, X[0]), ValueError, r"params hold a LSTM\(3, 5, num_layers=2\); use lstm\(\) for a layer"),
    (lambda: F.lstm_cell(CELL, jnp.ones((2, 4))), ValueError, r"x must have shape \(B, 3\) or, unbatched, \(3,\).*got shape \(2, 4\)"),
    (lambda: F.lstm_cell(CELL, jnp.ones((2, 3)), (jnp.zeros((5,)), jnp.zeros((5,)))), ValueError, r"h_0 must have shape \(2, 5\), got \(5,\)"),
    (lambda: F.lstm(LSTM, X, unknown=1), TypeError, "unexpected keyword argument 'unknown'"),
    (lambda: F.lstm({"weight": X}, X), ValueError, r"params are not a recurrent layer or cell.*\['weight'\]"),
]


@pytest.mark.parametrize("call, error, message", CALL_CASES)
def test_bad_call_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


CONSTRUCTOR_CASES = [
    (lambda: jaxrnn.LSTM(3, 0), r"hidden_size must be a positive integer, got 0"),
    (lambda: jaxrnn.GRU(3, 4, num_layers=0), r"num_layers must be a positive integer, got 0"),
    (lambda: jaxrnn.LSTM(0, 4), r"input_size must be a positive integer, got 0"),
    (lambda: jaxrnn.RNN(3, 4, nonlinearity="sigmoid"), r"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"),
    (lambda: jaxrnn.LSTM(3, 4, proj_size=4), r"proj_size has to be smaller than hidden_size, got proj_size=4 and hidden_size=4"),
    (lambda: jaxrnn.LSTM(3, 4, proj_size=-1), r"proj_size must be a non-negative integer, got -1"),
    (lambda: jaxrnn.GRU(3, 4, dropout=-0.1), r"dropout must be a probability in \[0, 1\], got -0.1"),
    (lambda: jaxrnn.LSTM(3, 4, implementation="cuda"), r"implementation must be one of \(None, 'xla', .*got 'cuda'"),
    (lambda: jaxrnn.GRU(3, 4, unroll=0), r"unroll must be a positive int or None, got 0"),
    (lambda: jaxrnn.nnx.RNN(3, 4, remat=-1, rngs=nnx.Rngs(0)), r"remat must be a bool or a positive chunk length, got -1"),
    (lambda: jaxrnn.nnx.LSTM(3, 4, implementation="onednn", fused_backward=False, rngs=nnx.Rngs(0)), r"fused_backward=False needs 'xla'"),
    (lambda: jaxrnn.RNNCell(3, 4, nonlinearity="gelu"), r"nonlinearity must be 'tanh' or 'relu', got 'gelu'"),
    (lambda: RecurrentSpec("gru", 3, 4, proj_size=2), r"proj_size argument is only supported for LSTM"),
    (lambda: RecurrentSpec("transformer", 3, 4), r"kind must be one of \('rnn', 'lstm', 'gru'\), got 'transformer'"),
]


@pytest.mark.parametrize("construct, message", CONSTRUCTOR_CASES)
def test_bad_constructor_argument_is_named(construct, message):
    with pytest.raises(ValueError, match=message):
        construct()


def test_linen_params_of_another_configuration_are_refused():
    variables = jaxrnn.LSTM(3, 5).init(jax.random.key(0), X)
    with pytest.raises(Exception, match=r"weight_ih_l0.*\(20, 3\).*\(20, 4\)|\(20, 4\).*\(20, 3\)"):
        jaxrnn.LSTM(4, 5).apply(variables, jnp.ones((4, 2, 4)))


@pytest.mark.parametrize("implementation", [
    "xla", pytest.param("onednn", marks=onednn_platform)])
def test_traced_seq_lengths_are_clipped_not_checked(implementation):
    """Under jit lengths cannot be checked: out-of-range values are clipped to [0, T], and a
    sequence of length 0 has zero outputs and keeps its initial state."""
    hx = jnp.full((1, 2, 5), 0.5, jnp.float32)
    run = jax.jit(lambda lengths: F.gru(GRU, X, hx, seq_lengths=lengths, implementation=implementation))
    output, h_n = run(jnp.array([9, 0]))
    full, h_full = F.gru(GRU, X, hx)
    np.testing.assert_allclose(output[:, 0], full[:, 0], atol=1e-6)
    np.testing.assert_allclose(h_n[:, 0], h_full[:, 0], atol=1e-6)
    assert np.all(output[:, 1] == 0) and np.all(h_n[:, 1] == hx[:, 1])

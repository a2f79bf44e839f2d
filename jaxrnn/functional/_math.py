"""The per-step math of each cell kind, in torch's gate order, and torch's single-step cells.

Every kind is split the same way so that the time loop and its custom VJP serve all of them:

    xp = x @ W_ih^T + b_ih          (hoisted out of the time loop)
    hh = h @ W_hh^T + b_hh          (the one recurrent matmul per step)
    pre = combine(xp, hh)           (what the elementwise update needs)
    h_raw, rest = update(pre, state)

`state` is `(h,)` for RNN and GRU and `(h, c)` for LSTM; `h_raw` is the new `h` before an
LSTM projection (`h = h_raw @ W_hr^T`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LSTMState(NamedTuple):
    r"""LSTM state in torch's order: `h_n, c_n = state` unpacks like torch's tuple."""

    h: jax.Array
    c: jax.Array


class CellMath(NamedTuple):
    combine: Callable  # (xp, hh) -> pre: an array of xp's shape, or a tuple led by one
    split_grad: Callable  # d pre -> (d xp, d hh), the transpose of `combine`
    update: Callable  # (pre, state) -> (h_raw, rest of the new state)


def _sigmoid(x):
    # The same function as jax.nn.sigmoid; XLA:CPU evaluates tanh faster than the logistic
    # function (the LSTM loop ran up to 1.4x faster this way on the benchmark machine).
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _add(xp, hh):
    return xp + hh


def _same(d):
    return d, d


def _rnn_update(activation):
    def update(pre, state):
        return activation(pre), ()

    return update


def _lstm_update(pre, state):
    i, f, g, o = jnp.split(pre, 4, axis=-1)
    c = _sigmoid(f) * state[1] + _sigmoid(i) * jnp.tanh(g)
    return _sigmoid(o) * jnp.tanh(c), (c,)


def _gru_combine(xp, hh):
    # torch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so W_hn h stays apart. The
    # first part keeps xp's shape (r and z summed, W_in x as it is), so it can take xp's place.
    rz = 2 * xp.shape[-1] // 3
    return jnp.concatenate([xp[..., :rz] + hh[..., :rz], xp[..., rz:]], -1), hh[..., rz:]


def _gru_split_grad(d):
    d_first, d_hn = d
    return d_first, jnp.concatenate([d_first[..., : 2 * d_first.shape[-1] // 3], d_hn], -1)


def _gru_update(pre, state):
    first, hn = pre
    rz = 2 * first.shape[-1] // 3
    r, z = jnp.split(_sigmoid(first[..., :rz]), 2, axis=-1)
    n = jnp.tanh(first[..., rz:] + r * hn)
    return n + z * (state[0] - n), ()


CELL_MATH = {
    ("rnn", "tanh"): CellMath(_add, _same, _rnn_update(jnp.tanh)),
    ("rnn", "relu"): CellMath(_add, _same, _rnn_update(jax.nn.relu)),
    ("lstm", "tanh"): CellMath(_add, _same, _lstm_update),
    ("gru", "tanh"): CellMath(_gru_combine, _gru_split_grad, _gru_update),
}


def cell_math(kind: str, nonlinearity: str = "tanh") -> CellMath:
    return CELL_MATH[(kind, nonlinearity if kind == "rnn" else "tanh")]

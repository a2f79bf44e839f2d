"""The per-step math of each cell kind, in torch's gate order, and torch's single-step cells.

Every kind is split the same way so that the time loop and its custom VJP serve all of them:

    xp = x @ W_ih^T + b_ih          (hoisted out of the time loop)
    hh = h @ W_hh^T + b_hh          (the one recurrent matmul per step)
    pre = combine(xp, hh)           (what the elementwise update needs)
    h_raw, rest = update(pre, state) = update_gates(gates(pre), state)

`state` is `(h,)` for RNN and GRU and `(h, c)` for LSTM; `h_raw` is the new `h` before an
LSTM projection (`h = h_raw @ W_hr^T`). The backward works gate by gate (`update_gates`,
`gate_grads`): a kernel compiler without concatenation (Triton) can then run it, each gate's
gradient meeting its own block of `W_hh`.
"""

from __future__ import annotations

import functools
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
    gates: Callable  # pre -> the tuple of its gates (B, k * H), split apart (no slice)
    update_gates: Callable  # (gates, state) -> (h_raw, rest of the new state)
    gate_grads: Callable  # d gates -> (d xp, d hh), each a tuple of gates: combine's transpose

    def update(self, pre, state):
        """`(h_raw, rest of the new state)` from the pre-activations `pre`."""
        return self.update_gates(self.gates(pre), state)


# tanh(x) = x + x^3 P(x^2) for |x| < 0.75 (P fitted for relative error on Chebyshev nodes),
# 1 - 2 / (exp(2|x|) + 1) beyond. In float32 it is within 1.05 ulp everywhere (0.26 ulp on
# average), where XLA:CPU's own tanh is off by up to 4.6 ulp. Over 10,000 LSTM steps that
# moves jaxrnn's float32 error from 1.2x torch float32's to 0.85x of it, for 10-20% more time
# forward and 25-35% more forward+backward (measured here), so it is what precision=HIGHEST
# asks for rather than the default.
_TANH_POLY_LIMIT = 0.75
_TANH_P = (
    -0.33333316424277554, 0.1333272161798853, -0.05389472037516821,
    0.02145854539321412, -0.00766708947651503, 0.001742537659980913,
)


@jax.custom_jvp
def _tanh_float32(x):
    x2 = x * x
    p = _TANH_P[-1]
    for c in _TANH_P[-2::-1]:
        p = p * x2 + c
    a = jnp.abs(x)
    return jnp.where(a < _TANH_POLY_LIMIT, x + x * x2 * p, jnp.copysign(1 - 2 / (jnp.exp(2 * a) + 1), x))


_tanh_float32.defjvps(lambda dx, y, x: dx * (1 - y * y))


def accurate_tanh(x):
    """tanh, in float32 to within about an ulp; other dtypes take XLA's (float64's is exact)."""
    return _tanh_float32(x) if x.dtype == jnp.float32 else jnp.tanh(x)


def _sigmoid_from(tanh):
    # The same function as jax.nn.sigmoid, through tanh: XLA:CPU evaluates tanh faster than the
    # logistic function (the LSTM loop ran up to 1.4x faster this way on the benchmark machine).
    return lambda x: 0.5 * tanh(0.5 * x) + 0.5


def _add(xp, hh):
    return xp + hh


def _split_into(count: int):
    return lambda pre: tuple(jnp.split(pre, count, axis=-1)) if count > 1 else (pre,)


def _same(d):
    return d, d


def _rnn_update(activation):
    def update(gates, state):
        return activation(gates[0]), ()

    return update


def _lstm_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(gates, state):
        i, f, g, o = gates
        c = sigmoid(f) * state[1] + sigmoid(i) * tanh(g)
        return sigmoid(o) * tanh(c), (c,)

    return update


# torch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so W_hn h stays apart. `pre` is
# `(first, hn)`: `first` keeps xp's shape (r and z summed, W_in x as it is), so it can take xp's
# place in the loop's buffer.
def _gru_combine(xp, hh):
    rz = 2 * xp.shape[-1] // 3
    return jnp.concatenate([xp[..., :rz] + hh[..., :rz], xp[..., rz:]], -1), hh[..., rz:]


def _gru_padded_combine(xp, hh):
    # The GRU with its gates padded to four, `[r, z, n, 0]`, for kernels whose blocks must be
    # powers of two (Triton): `_gru_combine` in splits and selects, which Triton lowers, where
    # it lowers neither slices nor concatenations.
    in_rz = jax.lax.broadcasted_iota(jnp.int32, xp.shape, xp.ndim - 1) < xp.shape[-1] // 2
    _, _, hn, _ = jnp.split(hh, 4, axis=-1)
    return jnp.where(in_rz, xp + hh, xp), hn


def _gru_gates(pre):
    # `(rz, xn, hn)`: r and z as one gate measured faster on CPU than apart (GRU B=8, T=500,
    # H=256 fwd+bwd: 74-78 ms against 84-90).
    first, hn = pre
    return (*jnp.split(first, [2 * hn.shape[-1]], axis=-1), hn)


def _gru_padded_gates(pre):
    # `(r, z, xn, 0, hn)`: apart, for Triton, which splits into equal parts only and
    # concatenates nothing (the gradient of a split is a concatenation).
    first, hn = pre
    return (*jnp.split(first, 4, axis=-1), hn)


def _gru_output(tanh, r, z, xn, hn, h):
    n = tanh(xn + r * hn)
    return n + z * (h - n), ()


def _gru_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(gates, state):
        rz, xn, hn = gates
        r, z = jnp.split(sigmoid(rz), 2, axis=-1)
        return _gru_output(tanh, r, z, xn, hn, state[0])

    return update


def _gru_padded_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(gates, state):
        r, z, xn, _, hn = gates
        return _gru_output(tanh, sigmoid(r), sigmoid(z), xn, hn, state[0])

    return update


def _gru_gate_grads(d):
    d_rz, d_xn, d_hn = d
    return (d_rz, d_xn), (d_rz, d_hn)


def _gru_padded_gate_grads(d):
    d_r, d_z, d_xn, d_pad, d_hn = d
    return (d_r, d_z, d_xn, d_pad), (d_r, d_z, d_hn, d_pad)


def is_highest(precision) -> bool:
    """Whether `precision` (or, when None, JAX's default matmul precision) is HIGHEST."""
    if precision is None:
        precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]  # a flag, set at run time
    parts = precision if isinstance(precision, tuple) else (precision,)
    return all(p == jax.lax.Precision.HIGHEST or str(p).lower() in ("highest", "float32") for p in parts)


@functools.cache
def cell_math(kind: str, nonlinearity: str = "tanh", accurate: bool = False) -> CellMath:
    """The math of `kind` ("gru_padded": a GRU's, on gates padded to `[r, z, n, 0]`); `accurate`
    takes `accurate_tanh` for tanh and sigmoid."""
    tanh = accurate_tanh if accurate else jnp.tanh
    if kind == "lstm":
        return CellMath(_add, _split_into(4), _lstm_update(tanh), _same)
    if kind == "gru":
        return CellMath(_gru_combine, _gru_gates, _gru_update(tanh), _gru_gate_grads)
    if kind == "gru_padded":
        return CellMath(_gru_padded_combine, _gru_padded_gates, _gru_padded_update(tanh), _gru_padded_gate_grads)
    return CellMath(_add, _split_into(1), _rnn_update(tanh if nonlinearity == "tanh" else jax.nn.relu), _same)

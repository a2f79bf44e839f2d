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
    split_grad: Callable  # d pre -> (d xp, d hh), the transpose of `combine`
    update: Callable  # (pre, state) -> (h_raw, rest of the new state)


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


def _same(d):
    return d, d


def _rnn_update(activation):
    def update(pre, state):
        return activation(pre), ()

    return update


def _lstm_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(pre, state):
        i, f, g, o = jnp.split(pre, 4, axis=-1)
        c = sigmoid(f) * state[1] + sigmoid(i) * tanh(g)
        return sigmoid(o) * tanh(c), (c,)

    return update


def _gru_combine(xp, hh):
    # torch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so W_hn h stays apart. The
    # first part keeps xp's shape (r and z summed, W_in x as it is), so it can take xp's place.
    rz = 2 * xp.shape[-1] // 3
    return jnp.concatenate([xp[..., :rz] + hh[..., :rz], xp[..., rz:]], -1), hh[..., rz:]


def _gru_split_grad(d):
    d_first, d_hn = d
    return d_first, jnp.concatenate([d_first[..., : 2 * d_first.shape[-1] // 3], d_hn], -1)


def _gru_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(pre, state):
        first, hn = pre
        rz = 2 * first.shape[-1] // 3
        r, z = jnp.split(sigmoid(first[..., :rz]), 2, axis=-1)
        n = tanh(first[..., rz:] + r * hn)
        return n + z * (state[0] - n), ()

    return update


def _gru_padded_combine(xp, hh):
    # The GRU with its gates padded to four, `[r, z, n, 0]`, for kernels whose blocks must be
    # powers of two (Triton): `_gru_combine` in splits and selects, which Triton lowers, where
    # it lowers neither slices nor concatenations.
    in_rz = jax.lax.broadcasted_iota(jnp.int32, xp.shape, xp.ndim - 1) < xp.shape[-1] // 2
    _, _, hn, _ = jnp.split(hh, 4, axis=-1)
    return jnp.where(in_rz, xp + hh, xp), hn


def _gru_padded_split_grad(d):
    d_first, d_hn = d
    return d_first, jnp.concatenate([d_first[..., : d_first.shape[-1] // 2], d_hn, jnp.zeros_like(d_hn)], -1)


def _gru_padded_update(tanh):
    sigmoid = _sigmoid_from(tanh)

    def update(pre, state):
        first, hn = pre
        r, z, xn, _ = jnp.split(first, 4, axis=-1)
        r, z = sigmoid(r), sigmoid(z)
        n = tanh(xn + r * hn)
        return n + z * (state[0] - n), ()

    return update


def is_highest(precision) -> bool:
    """Whether `precision` (or, when None, JAX's default matmul precision) is HIGHEST."""
    if precision is None:
        precision = jax.config.jax_default_matmul_precision
    parts = precision if isinstance(precision, tuple) else (precision,)
    return all(p == jax.lax.Precision.HIGHEST or str(p).lower() in ("highest", "float32") for p in parts)


@functools.cache
def cell_math(kind: str, nonlinearity: str = "tanh", accurate: bool = False) -> CellMath:
    """The math of `kind` ("gru_padded": a GRU's, on gates padded to `[r, z, n, 0]`); `accurate`
    takes `accurate_tanh` for tanh and sigmoid."""
    tanh = accurate_tanh if accurate else jnp.tanh
    if kind == "lstm":
        return CellMath(_add, _same, _lstm_update(tanh))
    if kind == "gru":
        return CellMath(_gru_combine, _gru_split_grad, _gru_update(tanh))
    if kind == "gru_padded":
        return CellMath(_gru_padded_combine, _gru_padded_split_grad, _gru_padded_update(tanh))
    return CellMath(_add, _same, _rnn_update(tanh if nonlinearity == "tanh" else jax.nn.relu))

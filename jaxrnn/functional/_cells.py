"""torch's single-step cells (`nn.RNNCell`, `nn.LSTMCell`, `nn.GRUCell`) as functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import check_hx, check_x
from ._layers import Params
from ._math import LSTMState, cell_math, is_highest
from ._recurrence import compute_dtype, mixed_matmul
from ._spec import RecurrentSpec


def _cell(kind: str, params: Params, x, hx, nonlinearity="tanh", **options):
    spec = RecurrentSpec.from_params(params, kind, nonlinearity)
    if not spec.cell:
        raise ValueError(f"params hold a {spec.describe()}; use {kind}() for a layer")
    return run_cell(spec, params, x, hx, **options)


def run_cell(spec: RecurrentSpec, params: Params, x, hx, *, dtype=None, precision=None):
    """One step of the cell that `spec` describes; `params` must fit it."""
    x = check_x(spec, x, ("B",))
    dtype = dtype or jnp.result_type(x, *params.values())
    state = tuple(s.astype(compute_dtype(dtype)) for s in check_hx(spec, hx, x.shape[:-1], dtype))
    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    xp = mixed_matmul(jnp.matmul, x, p["weight_ih"].T, precision)
    hh = mixed_matmul(jnp.matmul, state[0], p["weight_hh"].T, precision)
    if spec.bias:
        # (G*H,) against (B, G*H) or (G*H,), in the matmul's dtype
        xp, hh = (a + b.astype(a.dtype).reshape((1,) * (a.ndim - 1) + b.shape)
                  for a, b in ((xp, p["bias_ih"]), (hh, p["bias_hh"])))
    math = cell_math(spec.kind, spec.nonlinearity, is_highest(precision))
    h, rest = math.update(math.combine(xp, hh), state)
    h, rest = h.astype(dtype), tuple(r.astype(dtype) for r in rest)
    return LSTMState(h, *rest) if spec.kind == "lstm" else h


_CELL_DOC = """
    Args:
      params: torch's cell `state_dict()`: `weight_ih` `(G * hidden_size, input_size)`,
        `weight_hh` `(G * hidden_size, hidden_size)`, and `bias_ih`, `bias_hh` unless bias=False.
      x: `(B, input_size)` or unbatched `(input_size,)`.
      hx: {hx}, with the batch axis of `x`; zeros when None.
      dtype: the dtype of the matmuls' operands and of the results; default: the promoted
        dtype of `x` and `params`. A 16-bit float's matmuls accumulate in float32, and the
        gate math and the state run in float32, as in torch's fused kernels.
      precision: matmul precision (`jax.lax.Precision`); None uses JAX's default.

    Returns:
      {ret}
"""


def lstm_cell(params: Params, x: jax.Array, hx=None, **options) -> LSTMState:
    """One step of torch's `nn.LSTMCell`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn.functional import RecurrentSpec, lstm_cell
    >>> params = RecurrentSpec("lstm", 3, 5, cell=True).init(jax.random.key(0))
    >>> h, c = lstm_cell(params, jnp.ones((2, 3)))
    >>> h, c = lstm_cell(params, jnp.ones((2, 3)), (h, c))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """
    return _cell("lstm", params, x, hx, **options)


def gru_cell(params: Params, x: jax.Array, hx=None, **options) -> jax.Array:
    """One step of torch's `nn.GRUCell`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn.functional import RecurrentSpec, gru_cell
    >>> params = RecurrentSpec("gru", 3, 5, cell=True).init(jax.random.key(0))
    >>> gru_cell(params, jnp.ones(3)).shape
    (5,)
    """
    return _cell("gru", params, x, hx, **options)


def rnn_cell(
    params: Params, x: jax.Array, hx=None, *, nonlinearity: str = "tanh", **options
) -> jax.Array:
    """One step of torch's `nn.RNNCell` (`nonlinearity` "tanh" or "relu").

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn.functional import RecurrentSpec, rnn_cell
    >>> params = RecurrentSpec("rnn", 3, 5, cell=True).init(jax.random.key(0))
    >>> rnn_cell(params, jnp.ones((2, 3)), nonlinearity="relu").shape
    (2, 5)
    """
    return _cell("rnn", params, x, hx, nonlinearity, **options)


lstm_cell.__doc__ = (lstm_cell.__doc__ or "") + _CELL_DOC.format(
    hx="the pair `(h, c)`, each `(B, hidden_size)`", ret="`LSTMState(h', c')`, each like `hx`"
)
gru_cell.__doc__ = (gru_cell.__doc__ or "") + _CELL_DOC.format(hx="`(B, hidden_size)`", ret="`h'` `(B, hidden_size)`")
rnn_cell.__doc__ = (rnn_cell.__doc__ or "") + _CELL_DOC.format(hx="`(B, hidden_size)`", ret="`h'` `(B, hidden_size)`")

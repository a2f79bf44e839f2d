"""Flax Linen modules with torch's constructor signatures, thin wrappers over `jaxrnn.functional`.

`variables["params"]` holds exactly torch's `state_dict()` keys and shapes; the keyword-only
fields (`dtype`, `param_dtype`, `precision`, `unroll`, `fused_backward`, `remat`, `implementation`)
are the JAX-side knobs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from .functional._cells import run_cell
from .functional._checks import check_layer_options
from .functional._layers import LAYER_OPTIONS, run_layer
from .functional._spec import RecurrentSpec


def _torch_uniform(hidden_size: int):
    bound = 1.0 / math.sqrt(hidden_size)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _Recurrent(nn.Module):
    """Shared by layers and cells: the JAX-side knobs, parameter declaration, validation."""

    _: dataclasses.KW_ONLY
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    kind: ClassVar[str]

    @property
    def spec(self) -> RecurrentSpec:
        raise NotImplementedError

    def __post_init__(self):
        self.spec  # noqa: B018 -- validates the constructor arguments now, as torch does
        super().__post_init__()

    def _params(self) -> dict[str, jax.Array]:
        init = _torch_uniform(self.hidden_size)
        return {
            name: self.param(name, init, shape, self.param_dtype)
            for name, shape in self.spec.param_shapes().items()
        }


class _Layer(_Recurrent):
    _: dataclasses.KW_ONLY
    unroll: int | None = None
    fused_backward: bool = True
    remat: bool | int = False
    implementation: str | None = None

    @property
    def spec(self) -> RecurrentSpec:
        return RecurrentSpec(
            self.kind,
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            getattr(self, "proj_size", 0),
            getattr(self, "nonlinearity", "tanh"),
        )

    def __post_init__(self):
        check_layer_options(self.dropout, self.unroll, self.remat, self.implementation, self.fused_backward)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, hx=None, *, seq_lengths=None, deterministic: bool = True):
        """Run the layer over `x`; see the class docstring for shapes.

        Dropout between layers is active when `deterministic=False` and `dropout > 0`, and
        draws from the `"dropout"` RNG stream (`apply(..., rngs={"dropout": key})`).
        """
        params = self._params()
        active = not deterministic and self.dropout > 0 and self.num_layers > 1
        return run_layer(
            self.spec,
            params,
            x,
            hx,
            seq_lengths=seq_lengths,
            dropout_key=self.make_rng("dropout") if active else None,
            **{name: getattr(self, name) for name in LAYER_OPTIONS},
        )


class _Cell(_Recurrent):
    @property
    def spec(self) -> RecurrentSpec:
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        return RecurrentSpec(
            self.kind, self.input_size, self.hidden_size, bias=self.bias,
            nonlinearity=nonlinearity, cell=True,
        )

    @nn.compact
    def __call__(self, x: jax.Array, hx=None):
        """One step: `x` `(B, input_size)` or `(input_size,)`; returns the new state."""
        params = self._params()
        return run_cell(self.spec, params, x, hx, dtype=self.dtype, precision=self.precision)


_LAYER_ARGS = """
    Args (torch's, in torch's order):
      input_size: features of `x`.
      hidden_size: features of the hidden state `h`.
      num_layers: stacked layers; layer k > 0 reads the output of layer k - 1.
      {extra}bias: False removes `bias_ih_l*` and `bias_hh_l*`.
      batch_first: `x` and `output` are `(B, T, feature)` instead of `(T, B, feature)`.
      dropout: probability of zeroing the outputs of every layer but the last in training.
      bidirectional: add a reverse direction; outputs concatenate `[forward, reverse]`.
      {proj}dtype: dtype of the matmul operands and results (keyword-only); None: promoted from
        inputs and params. A 16-bit float runs the gate math and the state in float32.
      param_dtype: parameter storage dtype (keyword-only), default float32.
      precision: matmul precision (keyword-only); `jax.lax.Precision.HIGHEST` also evaluates
        tanh and sigmoid in float32 to within about an ulp, for 10-35% more time on CPU.
      unroll: time steps per loop iteration (keyword-only); None: 1 on CPU, 8 on GPU/TPU.
      fused_backward: custom VJP with large weight-gradient matmuls (keyword-only); False
        differentiates through `scan` and supports forward-mode autodiff.
      remat: gradient checkpointing over time chunks for long sequences (keyword-only): True
        for chunks of ~sqrt(T) steps, an int for that chunk length.
      implementation: how the time loop runs (keyword-only): None/"xla" (`lax.scan`, every
        device), "pallas" (a fused kernel per layer for GPU/TPU), "cudnn" (LSTM on CUDA GPUs),
        "onednn" (oneDNN's fused CPU kernels), "auto" ("onednn" where it measured faster, else
        "xla"); see `jaxrnn.functional.lstm`.

    Call: `module.apply(variables, x, hx=None, *, seq_lengths=None, deterministic=True)` with
    `x` `(T, B, input_size)` (batch_first: `(B, T, input_size)`, unbatched: `(T, input_size)`)
    returns `(output, {ret})`: `output` `(T, B, D * H_out)`, {ret_shapes}; `D` = 2 if
    bidirectional else 1, `H_out` = {h_out}. `seq_lengths` `(B,)` gives torch's packed-sequence
    semantics (see `jaxrnn.functional.lstm`).
"""


class RNN(_Layer):
    r"""torch's `nn.RNN`: an Elman RNN with tanh or relu.

    .. math:: h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.RNN(3, 5, num_layers=2, nonlinearity="relu")
    >>> variables = model.init(jax.random.key(0), jnp.ones((7, 2, 3)))
    >>> output, h_n = model.apply(variables, jnp.ones((7, 2, 3)))
    >>> output.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    kind: ClassVar[str] = "rnn"


class LSTM(_Layer):
    r"""torch's `nn.LSTM`, with projections (`proj_size`).

    .. math::
        i, f, g, o = \sigma(\cdot), \sigma(\cdot), \tanh(\cdot), \sigma(\cdot)
        \text{ of } x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh} \\
        c_t = f \odot c_{t-1} + i \odot g, \quad h_t = o \odot \tanh(c_t)
        \quad (h_t = (o \odot \tanh(c_t)) W_{hr}^T \text{ with proj\_size})

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.LSTM(3, 5, bidirectional=True, batch_first=True)
    >>> x = jnp.ones((2, 7, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> output, (h_n, c_n) = model.apply(variables, x, seq_lengths=jnp.array([7, 4]))
    >>> output.shape, h_n.shape, c_n.shape
    ((2, 7, 10), (2, 2, 5), (2, 2, 5))
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    kind: ClassVar[str] = "lstm"


class GRU(_Layer):
    r"""torch's `nn.GRU`: the reset gate multiplies `W_hn h + b_hn`, as in torch.

    .. math::
        r, z = \sigma(x W_{ir,z}^T + b_{ir,z} + h W_{hr,z}^T + b_{hr,z}), \quad
        n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.GRU(3, 5)
    >>> variables = model.init(jax.random.key(0), jnp.ones((7, 3)))
    >>> output, h_n = model.apply(variables, jnp.ones((7, 3)))  # unbatched
    >>> output.shape, h_n.shape
    ((7, 5), (1, 5))
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    kind: ClassVar[str] = "gru"


_NO_EXTRA = ""
RNN.__doc__ = (RNN.__doc__ or "") + _LAYER_ARGS.format(
    extra="nonlinearity: 'tanh' or 'relu'.\n      ", proj=_NO_EXTRA, ret="h_n",
    ret_shapes="`h_n` `(D * num_layers, B, hidden_size)`", h_out="hidden_size",
)
LSTM.__doc__ = (LSTM.__doc__ or "") + _LAYER_ARGS.format(
    extra=_NO_EXTRA,
    proj="proj_size: if > 0, `h = W_hr (o * tanh(c))` has this size.\n      ",
    ret="LSTMState(h_n, c_n)",
    ret_shapes="`h_n` `(D * num_layers, B, H_out)`, `c_n` `(D * num_layers, B, hidden_size)`",
    h_out="`proj_size or hidden_size`",
)
GRU.__doc__ = (GRU.__doc__ or "") + _LAYER_ARGS.format(
    extra=_NO_EXTRA, proj=_NO_EXTRA, ret="h_n",
    ret_shapes="`h_n` `(D * num_layers, B, hidden_size)`", h_out="hidden_size",
)


class RNNCell(_Cell):
    """torch's `nn.RNNCell`: `h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)` (or relu).

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.RNNCell(3, 5)
    >>> variables = cell.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> cell.apply(variables, jnp.ones((2, 3))).shape
    (2, 5)
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    nonlinearity: str = "tanh"

    kind: ClassVar[str] = "rnn"


class LSTMCell(_Cell):
    """torch's `nn.LSTMCell`: `cell.apply(variables, x, (h, c))` returns `LSTMState(h', c')`.

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.LSTMCell(3, 5)
    >>> variables = cell.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> h, c = cell.apply(variables, jnp.ones((2, 3)))
    >>> h, c = cell.apply(variables, jnp.ones((2, 3)), (h, c))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """

    input_size: int
    hidden_size: int
    bias: bool = True

    kind: ClassVar[str] = "lstm"


class GRUCell(_Cell):
    """torch's `nn.GRUCell`: `cell.apply(variables, x, h)` returns `h'`.

    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.GRUCell(3, 5)
    >>> variables = cell.init(jax.random.key(0), jnp.ones(3))
    >>> cell.apply(variables, jnp.ones(3)).shape
    (5,)
    """

    input_size: int
    hidden_size: int
    bias: bool = True

    kind: ClassVar[str] = "gru"

"""Flax NNX modules with torch's constructor signatures, thin wrappers over `jaxrnn.functional`.

Parameters are `nnx.Param` attributes named like torch's `state_dict()` keys
(`model.weight_ih_l0`). Dropout follows NNX: active after `model.train()` (the default, as in
torch), off after `model.eval()`, drawn from the `"dropout"` stream of the `rngs` given at
construction.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from .convert import _torch as converter
from .functional._cells import run_cell
from .functional._checks import check_layer_options
from .functional._layers import LAYER_OPTIONS, run_layer
from .functional._spec import RecurrentSpec


class _Recurrent(nnx.Module):
    kind: str

    def __init__(self, spec: RecurrentSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.spec = spec
        self.dtype, self.precision = dtype, precision
        for name, value in spec.init(rngs.params(), param_dtype).items():
            setattr(self, name, nnx.Param(value))

    def _params(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in self.spec.param_shapes()}

    @classmethod
    def from_torch(cls, source, *, prefix: str = "", rngs: nnx.Rngs | None = None, **options):
        """A module holding a torch module's (or checkpoint's) weights and configuration.

        `source` and `prefix` are as in `jaxrnn.convert.from_torch`; `options` are constructor
        arguments the weights do not determine (`batch_first`, `dropout`, JAX-side knobs).

        >>> import torch, jaxrnn.nnx
        >>> model = jaxrnn.nnx.LSTM.from_torch(torch.nn.LSTM(3, 5, num_layers=2))
        >>> model.weight_hh_l1.shape
        (20, 5)
        """
        spec, params = converter.read_params(
            source, prefix=prefix, kind=cls.kind, nonlinearity=options.pop("nonlinearity", "tanh")
        )
        if spec.cell != issubclass(cls, _Cell):
            raise TypeError(f"{cls.__name__}.from_torch got the weights of a {spec.describe()}")
        args, kwargs = converter.constructor_args(spec)
        options = converter.torch_layer_options(source, prefix) | options
        model = cast(Any, cls)(*args, **kwargs, **options, rngs=rngs or nnx.Rngs(0))  # a subclass's signature
        for name, value in params.items():
            getattr(model, name).set_value(jnp.asarray(value, getattr(model, name).dtype))
        return model


class _Layer(_Recurrent):
    def __init__(
        self, spec, batch_first, dropout, *, dtype, param_dtype, precision, unroll,
        fused_backward, remat, implementation, rngs,
    ):
        check_layer_options(dropout, unroll, remat, implementation, fused_backward)
        super().__init__(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.batch_first, self.dropout = batch_first, dropout
        self.unroll, self.fused_backward, self.remat = unroll, fused_backward, remat
        self.implementation = implementation
        self.deterministic = False
        self.rngs: nnx.RngStream | None = rngs["dropout"].fork() if dropout > 0 and spec.num_layers > 1 else None

    def __call__(self, x: jax.Array, hx=None, *, seq_lengths=None):
        """`(output, h_n)` (LSTM: `(output, LSTMState(h_n, c_n))`), as torch's forward."""
        return run_layer(
            self.spec,
            self._params(),
            x,
            hx,
            seq_lengths=seq_lengths,
            dropout_key=self.rngs() if self.rngs is not None and not self.deterministic else None,
            **{name: getattr(self, name) for name in LAYER_OPTIONS},
        )


class _Cell(_Recurrent):
    def __call__(self, x: jax.Array, hx=None):
        """One step: `x` `(B, input_size)` or `(input_size,)`; returns the new state."""
        return run_cell(self.spec, self._params(), x, hx, dtype=self.dtype, precision=self.precision)


class RNN(_Layer):
    """torch's `nn.RNN` as an NNX module; arguments and shapes as `jaxrnn.RNN`.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> model = jaxrnn.nnx.RNN(3, 5, num_layers=2, nonlinearity="relu", rngs=nnx.Rngs(0))
    >>> output, h_n = model(jnp.ones((7, 2, 3)))
    >>> output.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    kind = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
        bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
        bidirectional: bool = False, *, dtype: Any = None, param_dtype: Any = jnp.float32,
        precision: Any = None, unroll: int | None = None, fused_backward: bool = True,
        remat: bool | int = False, implementation: str | None = None, rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec(
            "rnn", input_size, hidden_size, num_layers, bias, bidirectional, nonlinearity=nonlinearity
        )
        super().__init__(
            spec, batch_first, dropout, dtype=dtype, param_dtype=param_dtype, precision=precision,
            unroll=unroll, fused_backward=fused_backward, remat=remat, implementation=implementation,
            rngs=rngs,
        )


class LSTM(_Layer):
    """torch's `nn.LSTM` as an NNX module; arguments and shapes as `jaxrnn.LSTM`.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> model = jaxrnn.nnx.LSTM(3, 5, bidirectional=True, proj_size=2, rngs=nnx.Rngs(0))
    >>> output, (h_n, c_n) = model(jnp.ones((7, 2, 3)), seq_lengths=jnp.array([7, 3]))
    >>> output.shape, h_n.shape, c_n.shape
    ((7, 2, 4), (2, 2, 2), (2, 2, 5))
    """

    kind = "lstm"

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
        proj_size: int = 0, *, dtype: Any = None, param_dtype: Any = jnp.float32,
        precision: Any = None, unroll: int | None = None, fused_backward: bool = True,
        remat: bool | int = False, implementation: str | None = None, rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec(
            "lstm", input_size, hidden_size, num_layers, bias, bidirectional, proj_size
        )
        super().__init__(
            spec, batch_first, dropout, dtype=dtype, param_dtype=param_dtype, precision=precision,
            unroll=unroll, fused_backward=fused_backward, remat=remat, implementation=implementation,
            rngs=rngs,
        )


class GRU(_Layer):
    """torch's `nn.GRU` as an NNX module; arguments and shapes as `jaxrnn.GRU`.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> model = jaxrnn.nnx.GRU(3, 5, batch_first=True, rngs=nnx.Rngs(0))
    >>> output, h_n = model(jnp.ones((2, 7, 3)))
    >>> output.shape, h_n.shape
    ((2, 7, 5), (1, 2, 5))
    """

    kind = "gru"

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
        dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
        unroll: int | None = None, fused_backward: bool = True, remat: bool | int = False,
        implementation: str | None = None, rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec("gru", input_size, hidden_size, num_layers, bias, bidirectional)
        super().__init__(
            spec, batch_first, dropout, dtype=dtype, param_dtype=param_dtype, precision=precision,
            unroll=unroll, fused_backward=fused_backward, remat=remat, implementation=implementation,
            rngs=rngs,
        )


class RNNCell(_Cell):
    """torch's `nn.RNNCell` as an NNX module.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> jaxrnn.nnx.RNNCell(3, 5, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 5)
    """

    kind = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
        *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
        rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec(
            "rnn", input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, cell=True
        )
        super().__init__(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)


class LSTMCell(_Cell):
    """torch's `nn.LSTMCell` as an NNX module; returns `LSTMState(h', c')`.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> h, c = jaxrnn.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """

    kind = "lstm"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, dtype: Any = None,
        param_dtype: Any = jnp.float32, precision: Any = None, rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec("lstm", input_size, hidden_size, bias=bias, cell=True)
        super().__init__(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)


class GRUCell(_Cell):
    """torch's `nn.GRUCell` as an NNX module.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxrnn.nnx
    >>> jaxrnn.nnx.GRUCell(3, 5, rngs=nnx.Rngs(0))(jnp.ones(3)).shape
    (5,)
    """

    kind = "gru"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, dtype: Any = None,
        param_dtype: Any = jnp.float32, precision: Any = None, rngs: nnx.Rngs,
    ):
        spec = RecurrentSpec("gru", input_size, hidden_size, bias=bias, cell=True)
        super().__init__(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)

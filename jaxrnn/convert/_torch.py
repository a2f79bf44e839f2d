"""torch <-> jaxrnn parameters: the keys are the same; only containers and dtypes change."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from .. import linen
from ..functional._spec import RecurrentSpec
from ._files import flatten, read_checkpoint, to_numpy

_TORCH_CLASSES = {
    "RNN": "rnn", "LSTM": "lstm", "GRU": "gru", "RNNCell": "rnn", "LSTMCell": "lstm", "GRUCell": "gru",
}


def _is_torch_module(source) -> bool:
    return hasattr(source, "state_dict") and hasattr(source, "named_parameters")


def _torch_kind(module) -> tuple[str, str]:
    """(kind, nonlinearity) of a torch recurrent module, from its class and mode."""
    for cls in type(module).__mro__:
        if cls.__name__ in _TORCH_CLASSES and cls.__module__.startswith("torch.nn"):
            return _TORCH_CLASSES[cls.__name__], getattr(module, "nonlinearity", "tanh")
    raise TypeError(
        f"{type(module).__name__} is not a torch recurrent module (RNN, LSTM, GRU or a cell); "
        "pass its state_dict() with prefix= to pick a recurrent submodule out of a model"
    )


def _select(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if not prefix:
        return dict(state_dict)
    selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        candidates = sorted(
            {k[: -len(end)] for k in state_dict for end in ("weight_ih_l0", "weight_ih") if k.endswith(end)}
        )
        raise ValueError(
            f"prefix {prefix!r} matches no key of the state_dict; recurrent layers found under "
            f"{candidates or 'no prefix'}"
        )
    return selected


def _read(source, prefix: str) -> dict[str, Any]:
    if _is_torch_module(source):
        state_dict = source.state_dict()
    elif isinstance(source, (str, os.PathLike)):
        state_dict = read_checkpoint(source)
    elif isinstance(source, Mapping):
        state_dict = flatten(source)
    else:
        raise TypeError(
            "source must be a torch module, a state_dict mapping or a checkpoint path, "
            f"got {type(source).__name__}"
        )
    return _select(state_dict, prefix)


def _resolve(source, prefix: str):
    """A torch model with a prefix names one of its submodules: use that submodule itself."""
    if _is_torch_module(source) and prefix:
        try:
            return source.get_submodule(prefix.rstrip(".")), ""
        except AttributeError:
            pass  # not a submodule path: select keys by prefix from its state_dict
    return source, prefix


def read_params(
    source, *, prefix: str = "", kind: str | None = None, nonlinearity: str = "tanh"
) -> tuple[RecurrentSpec, dict[str, Any]]:
    """The configuration and the (numpy) parameters of the recurrent layer in `source`."""
    source, prefix = _resolve(source, prefix)
    if _is_torch_module(source):
        module_kind, nonlinearity = _torch_kind(source)
        if kind not in (None, module_kind):
            raise ValueError(f"expected the weights of a {kind}, got a torch {type(source).__name__}")
        kind = module_kind
    state_dict = {k: to_numpy(v) for k, v in _read(source, prefix).items()}
    spec = RecurrentSpec.from_params(state_dict, kind, nonlinearity)
    return spec, state_dict


def from_torch(
    source, *, prefix: str = "", dtype=None, kind: str | None = None, nonlinearity: str = "tanh"
) -> dict[str, dict[str, jnp.ndarray]]:
    """Flax variables `{"params": {...}}` holding a torch recurrent layer's or cell's weights.

    Args:
      source: a torch module (`nn.LSTM`, `nn.GRUCell`, ...), a state_dict
        (`Mapping[str, torch.Tensor | np.ndarray]`), or a path to a `.pt`/`.pth`/`.bin` file
        (read with `torch.load(weights_only=True)`) or a `.safetensors` file (needs no torch).
      prefix: picks one recurrent submodule out of a whole model's state_dict, e.g.
        `"encoder.lstm."`; keys outside it are ignored.
      dtype: cast every parameter to this dtype; default: keep the checkpoint's.
      kind: "rnn", "lstm" or "gru"; inferred from the gate count when None.
      nonlinearity: for RNNs, which the weights cannot tell.

    Strict: missing, unexpected or mis-shaped keys raise `ValueError` naming them.

    >>> import torch, jaxrnn
    >>> from jaxrnn.convert import from_torch
    >>> variables = from_torch(torch.nn.LSTM(3, 5, num_layers=2))
    >>> sorted(variables["params"])[:3], variables["params"]["weight_ih_l0"].shape
    (['bias_hh_l0', 'bias_hh_l1', 'bias_ih_l0'], (20, 3))
    """
    _, params = read_params(source, prefix=prefix, kind=kind, nonlinearity=nonlinearity)
    return {"params": {k: jnp.asarray(v, dtype) for k, v in params.items()}}


def _plain_params(variables) -> dict[str, Any]:
    if isinstance(variables, nnx.State):
        variables = nnx.to_pure_dict(variables)
    if isinstance(variables, Mapping) and "params" in variables:
        variables = variables["params"]
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a mapping of parameters, got {type(variables).__name__}")
    return {k: v.get_value() if hasattr(v, "get_value") else v for k, v in variables.items()}


def to_torch(variables, *, prefix: str = "") -> dict[str, Any]:
    """torch's `state_dict()` for jaxrnn parameters: the exact inverse of `from_torch`.

    `variables` is `{"params": {...}}`, the params dict itself, or an NNX state
    (`nnx.state(model, nnx.Param)`). The result, in torch's key order and with every key
    prefixed by `prefix`, is accepted by `load_state_dict(strict=True)`, and
    `to_torch(from_torch(m))` equals `m.state_dict()` bit for bit.

    >>> import torch
    >>> from jaxrnn.convert import from_torch, to_torch
    >>> gru = torch.nn.GRU(3, 5)
    >>> gru.load_state_dict(to_torch(from_torch(gru)), strict=True)
    <All keys matched successfully>
    """
    import torch

    params = _plain_params(variables)
    spec = RecurrentSpec.from_params(params)
    state_dict = {}
    for name in spec.param_shapes():
        array = to_numpy(params[name])
        if array.dtype.name == "bfloat16":
            tensor = torch.from_numpy(array.astype("float32")).to(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array.copy())
        state_dict[prefix + name] = tensor
    return state_dict


def constructor_args(spec: RecurrentSpec) -> tuple[tuple, dict[str, Any]]:
    """`(args, kwargs)` of the jaxrnn constructor (Linen or NNX) that builds `spec`."""
    kwargs: dict[str, Any]
    if spec.cell:
        kwargs = dict(bias=spec.bias)
    else:
        kwargs = dict(num_layers=spec.num_layers, bias=spec.bias, bidirectional=spec.bidirectional)
        if spec.kind == "lstm":
            kwargs["proj_size"] = spec.proj_size
    if spec.kind == "rnn":
        kwargs["nonlinearity"] = spec.nonlinearity
    return (spec.input_size, spec.hidden_size), kwargs


def torch_layer_options(source, prefix: str = "") -> dict[str, Any]:
    """`batch_first` and `dropout` of a torch layer (nothing for cells, state_dicts and files)."""
    module, _ = _resolve(source, prefix)
    if _is_torch_module(module) and hasattr(module, "batch_first"):
        return {"batch_first": module.batch_first, "dropout": float(module.dropout)}
    return {}


def module_for(spec: RecurrentSpec, **options) -> linen.nn.Module:
    """The Linen module for `spec`; `options` are the arguments the weights do not determine."""
    args, kwargs = constructor_args(spec)
    return getattr(linen, spec.class_name)(*args, **kwargs, **options)


def module_from_torch(source, *, prefix: str = "", nonlinearity: str = "tanh", **options):
    """`(jaxrnn Linen module, variables)` equivalent to a torch module or checkpoint.

    From a torch module, every constructor argument is read off it (`batch_first`, `dropout`,
    `nonlinearity` included). From a state_dict or a file, the weights determine the kind,
    sizes, `num_layers`, `bidirectional`, `proj_size` and `bias`; pass the rest
    (`nonlinearity`, `batch_first`, `dropout`) and any JAX-side knob (`dtype`, ...) here.

    >>> import torch, jax.numpy as jnp
    >>> from jaxrnn.convert import module_from_torch
    >>> model, variables = module_from_torch(torch.nn.GRU(3, 5, batch_first=True))
    >>> model.apply(variables, jnp.ones((2, 7, 3)))[0].shape
    (2, 7, 5)
    """
    options = torch_layer_options(source, prefix) | options
    spec, params = read_params(source, prefix=prefix, nonlinearity=nonlinearity)
    return module_for(spec, **options), {"params": {k: jnp.asarray(v) for k, v in params.items()}}

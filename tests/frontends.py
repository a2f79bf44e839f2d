"""One way to call each jaxrnn front end (functional, Linen, NNX) from a spec and a params dict,
so that every parity test runs unchanged against all of them."""

from __future__ import annotations

import jax
from flax import nnx

import jaxrnn.nnx
from jaxrnn import functional as F
from jaxrnn.convert import module_for
from jaxrnn.convert._torch import constructor_args
from jaxrnn.functional import RecurrentSpec

FRONTENDS = ["functional", "linen", "nnx"]


def layer_fn(frontend: str, spec: RecurrentSpec, *, batch_first=False, **knobs):
    """`f(params, x, hx, seq_lengths) -> (output, state)` for a layer of configuration `spec`."""
    if frontend == "functional":
        fn = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}[spec.kind]
        extra = {"nonlinearity": spec.nonlinearity} if spec.kind == "rnn" else {}

        def run(params, x, hx, seq_lengths):
            return fn(params, x, hx, seq_lengths=seq_lengths, batch_first=batch_first, **extra, **knobs)

        return run
    if frontend == "linen":
        module = module_for(spec, batch_first=batch_first, **knobs)

        def run(params, x, hx, seq_lengths):
            return module.apply({"params": params}, x, hx, seq_lengths=seq_lengths)

        return run
    if frontend == "nnx":
        run = _nnx_fn(spec, batch_first=batch_first, **knobs)
        return lambda params, x, hx, seq_lengths: run(params, x, hx, seq_lengths=seq_lengths)
    raise ValueError(frontend)


def _nnx_fn(spec: RecurrentSpec, **options):
    """The NNX model for `spec`, called with the given params put into a copy of it."""
    args, kwargs = constructor_args(spec)
    graphdef, state = nnx.split(getattr(jaxrnn.nnx, spec.class_name)(*args, **kwargs, **options, rngs=nnx.Rngs(0)))

    def run(params, *call_args, **call_kwargs):
        fresh = jax.tree.map(lambda v: v, state)  # Variables of this trace
        nnx.replace_by_pure_dict(fresh, params)
        return nnx.merge(graphdef, fresh)(*call_args, **call_kwargs)

    return run


def cell_fn(frontend: str, spec: RecurrentSpec):
    """`f(params, x, hx) -> new state` for a cell of configuration `spec`."""
    if frontend == "functional":
        fn = {"lstm": F.lstm_cell, "gru": F.gru_cell, "rnn": F.rnn_cell}[spec.kind]
        extra = {"nonlinearity": spec.nonlinearity} if spec.kind == "rnn" else {}
        return lambda params, x, hx: fn(params, x, hx, **extra)
    if frontend == "linen":
        module = module_for(spec)
        return lambda params, x, hx: module.apply({"params": params}, x, hx)
    if frontend == "nnx":
        return _nnx_fn(spec)
    raise ValueError(frontend)



"""Multi-layer, bidirectional, variable-length RNN/LSTM/GRU on torch-layout parameter dicts."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from . import _cudnn, _onednn
from ._checks import check_hx, check_layer_options, check_lengths, check_x
from ._math import LSTMState
from ._pallas import recurrence_pallas
from ._recurrence import LoopWeights, compute_dtype, recurrence, recurrence_autodiff, zeroed_padding
from ._spec import RecurrentSpec

Params = Mapping[str, jax.Array]


def default_unroll() -> int:
    """Time steps per loop iteration when `unroll=None`, for JAX's default backend: 1 on CPU,
    where unrolling measured up to 4x slower; 8 on accelerators, where every iteration costs
    kernel launches and 8 steps an iteration measured 1.3-2x faster on an H100
    (benchmarks/unroll.py, benchmarks/RESULTS_GPU.md)."""
    return 1 if jax.default_backend() == "cpu" else 8


def reverse_sequences(x: jax.Array, seq_lengths: jax.Array | None) -> jax.Array:
    """Reverse each sequence of `x` `(T, B, ...)` within its own length, padding left in place."""
    if seq_lengths is None:
        return x[::-1]
    t = jnp.arange(x.shape[0])[:, None]
    lengths = seq_lengths[None]  # (1, B)
    index = jnp.where(t < lengths, lengths - 1 - t, t)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=0)


def _dropout(x, rate: float, key: jax.Array):
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


# The options of `run_layer` that the Linen and NNX layers hold as attributes of the same names.
LAYER_OPTIONS = ("batch_first", "dropout", "dtype", "precision", "unroll", "fused_backward", "remat", "implementation")


def _layer_weights(spec: RecurrentSpec, params: Params, layer: int) -> LoopWeights:
    """One layer's weights, directions stacked and pre-transposed for the loop."""
    suffixes = ("", "_reverse")[: spec.num_directions]

    def stack(name, transpose=False):
        arrays = [params[f"{name}_l{layer}{s}"] for s in suffixes]
        return jnp.stack([a.T for a in arrays] if transpose else [a[None] for a in arrays])

    # Where the gates add the two projections (RNN, LSTM), b_hh joins b_ih outside the loop:
    # one add less per step. GRU's reset gate multiplies W_hn h + b_hn, so it stays inside.
    fold = spec.bias and spec.kind != "gru"
    return LoopWeights(
        whh=stack("weight_hh", transpose=True),
        bhh=stack("bias_hh") if spec.bias and not fold else None,
        whr=stack("weight_hr", transpose=True) if spec.proj_size else None,
        wih=stack("weight_ih", transpose=True),
        bih=(stack("bias_ih") + stack("bias_hh") if fold else stack("bias_ih")) if spec.bias else None,
    )


def _chunked(run, state0, inputs, chunk: int, T: int):
    """`run(state, inputs) -> (ys, state)` over time chunks, each rematerialised in backward.

    Only the states at chunk boundaries are kept for the backward pass; each chunk's forward
    (input projection included) is recomputed then. T is padded to a multiple of `chunk` with
    steps the mask marks invalid, so they leave the state unchanged.
    """
    n = -(-T // chunk)
    pad = n * chunk - T
    xs, xs_rev, mask = inputs
    if mask is None:
        mask = jnp.ones((T, 1, xs.shape[1], 1), bool)
    xs, xs_rev, mask = (jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (xs, xs_rev, mask))
    split = functools.partial(jax.tree.map, lambda a: a.reshape(n, chunk, *a.shape[1:]))

    @jax.checkpoint
    def body(state, chunk_inputs):
        ys, state = run(state, chunk_inputs)
        return state, ys

    state, ys = jax.lax.scan(body, state0, split((xs, xs_rev, mask)))
    return ys.reshape(n * chunk, *ys.shape[2:])[:T], state


def run_layer(
    spec: RecurrentSpec,
    params: Params,
    x,
    hx,
    *,
    seq_lengths,
    batch_first: bool,
    dropout: float,
    dropout_key,
    dtype,
    precision,
    unroll: int | None,
    fused_backward: bool,
    remat: bool | int,
    implementation: str | None,
):
    check_layer_options(dropout, unroll, remat, implementation, fused_backward)
    unroll = default_unroll() if unroll is None else unroll
    chunk = None if remat is None or isinstance(remat, bool) else remat
    x = check_x(spec, x, ("B", "T") if batch_first else ("T", "B"))
    dtype = dtype or jnp.result_type(x, *params.values())
    batched = x.ndim == 3
    x = x.astype(dtype)
    x = (jnp.swapaxes(x, 0, 1) if batch_first else x) if batched else x[:, None]
    T, B = x.shape[:2]
    if remat is True:
        chunk = max(1, round(T**0.5))
    lead = (spec.num_directions * spec.num_layers,) + ((B,) if batched else ())
    state0 = tuple((s if batched else s[:, None]).astype(compute_dtype(dtype)) for s in check_hx(spec, hx, lead, dtype))
    lengths = check_lengths(seq_lengths, T, (B,) if batched else ())
    # Padding is never read, as in torch's packed sequences: each loop zeroes it where it
    # needs to (`zeroed_padding`), so that not even a NaN there reaches a gradient.
    mask = None if lengths is None else (jnp.arange(T)[:, None] < lengths[None])[:, None, :, None]
    params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    if implementation == "cudnn":
        if chunk is not None:
            raise ValueError("implementation='cudnn' keeps its own residuals; remat needs 'xla', 'pallas' or 'onednn'")
        _cudnn.check_supported(spec, dtype, dropout_key is not None and dropout > 0 and spec.num_layers > 1)
        x = zeroed_padding(x, None if mask is None else mask[:, 0])  # (T, B, I) by (T, B, 1)
        x, state = _cudnn.run_stack(spec, params, x, state0, lengths, precision, _cudnn.lstm_kernel())
    else:
        if implementation == "onednn":
            _onednn.check_supported(spec, dtype)
        inference = training = implementation
        if implementation == "auto":  # its choice can differ with and without a gradient
            inference, training = (
                "onednn" if fused_backward and _onednn.preferred(spec, dtype, B, T, t) else "xla" for t in (False, True)
            )
        options = (unroll, precision, fused_backward, chunk)
        run_one_layer = _layer_runner(spec, inference, *options)
        if training != inference:
            run_one_layer = by_mode(run_one_layer, _layer_runner(spec, training, *options))
        x, state = _run_layers(spec, params, x, state0, lengths, mask, run_one_layer, dropout, dropout_key)
    x, state = x.astype(dtype), tuple(s.astype(dtype) for s in state)
    if not batched:
        x, state = x[:, 0], tuple(s[:, 0] for s in state)
    elif batch_first:
        x = jnp.swapaxes(x, 0, 1)
    return x, (LSTMState(*state) if spec.kind == "lstm" else state[0])


def _layer_runner(spec: RecurrentSpec, implementation: str | None, unroll: int, precision, fused_backward: bool, chunk):
    """`run_one_layer(weights, x, state0, lengths, mask) -> (outputs, final)`: one layer in both
    directions on time-major `x` by `implementation` ("xla", "pallas" or "onednn"), the reverse
    direction on its inputs reversed, or as one oneDNN call in time order where it takes both."""
    math_key = (spec.kind, spec.nonlinearity)
    whole_layer = None
    if implementation == "onednn":  # it takes the chunks itself: it cannot be rematerialised
        if spec.bidirectional and chunk is None:
            whole_layer = functools.partial(_onednn.bidirectional_layer_onednn, math_key)
        fused: Callable = functools.partial(_onednn.recurrence_onednn, chunk=chunk)
        chunk = None
    else:
        fused = recurrence_pallas if implementation == "pallas" else recurrence
    loop = functools.partial(fused if fused_backward else recurrence_autodiff, math_key, unroll, precision)
    D = spec.num_directions

    def run_one_layer(weights, x, state0, lengths, mask):
        if whole_layer is not None and lengths is None:
            return whole_layer(weights, x, state0)

        def run(state, inputs):
            x_fwd, x_rev, mask = inputs
            return loop(weights, jnp.stack([x_fwd, x_rev][:D], 1), state, mask)

        inputs = (x, reverse_sequences(x, lengths) if D == 2 else x, mask)
        ys, final = run(state0, inputs) if chunk is None else _chunked(run, state0, inputs, chunk, x.shape[0])
        outputs = [ys[:, 0]] + [reverse_sequences(ys[:, 1], lengths)] * (D == 2)
        return (jnp.concatenate(outputs, -1) if D == 2 else outputs[0]), final

    return run_one_layer


def by_mode(inference, training):
    """`inference(*args)` where no gradient is taken, and `training`'s forward and backward where
    one is: for `implementation="auto"`, whose choice can differ between the two."""

    @jax.custom_vjp
    def run(*args):
        return inference(*args)

    run.defvjp(lambda *args: jax.vjp(training, *args), lambda vjp, cotangents: vjp(cotangents))
    return run


def _run_layers(spec, params, x, state0, lengths, mask, run_one_layer, dropout, dropout_key):
    """The layers one after another on time-major `x`, each one `run_one_layer` (`_layer_runner`)."""
    D = spec.num_directions
    finals = []
    for layer in range(spec.num_layers):
        layer_state0 = tuple(s[layer * D : (layer + 1) * D] for s in state0)
        x, final = run_one_layer(_layer_weights(spec, params, layer), x, layer_state0, lengths, mask)
        if dropout_key is not None and dropout > 0 and layer < spec.num_layers - 1:
            x = _dropout(x, dropout, jax.random.fold_in(dropout_key, layer))
        finals.append(final)
    return x, tuple(jnp.concatenate(parts, 0) for parts in zip(*finals))


_LAYER_DOC = """

    Args:
      params: torch's `state_dict()` of the layer as a dict of arrays (`weight_ih_l0`, ...);
        `num_layers`, `bidirectional`, `proj_size` and `bias` are read off its keys and shapes.
      x: `(T, B, input_size)`, `(B, T, input_size)` when `batch_first`, or unbatched
        `(T, input_size)`.
      hx: initial state{hx}; zeros when None. Unbatched input takes it without the `B` axis.
      seq_lengths: int `(B,)` (a scalar when unbatched), values in `[1, T]`: as torch's
        `pack_padded_sequence(x, lengths, enforce_sorted=False)` then `pad_packed_sequence`:
        outputs past a length are 0, the final state is the one after the last valid step,
        the reverse direction starts at each sequence's last valid element. Concrete values out
        of range raise `ValueError`; traced ones (under `jit`) are clipped to `[0, T]`, and a
        length of 0 gives zero outputs and the initial state.
      batch_first: `x` and `output` are `(B, T, ...)`.
      dropout: probability of zeroing the outputs of every layer but the last.
      dropout_key: PRNG key; dropout is applied only when one is given.
      dtype: the dtype of the matmuls' operands and of the results; default: the promoted
        dtype of `x` and `params`. A 16-bit float's matmuls accumulate in float32, and the
        gate math and the state run in float32, as in torch's fused kernels.
      precision: matmul precision (`jax.lax.Precision`); None uses JAX's default. HIGHEST also
        evaluates tanh and sigmoid in float32 to within about an ulp (XLA:CPU's tanh is off by
        up to 4.6 ulp), which costs 10-35% more time on CPU.
      unroll: time steps per loop iteration; None: `default_unroll()`, 1 on CPU and 8 on GPU
        and TPU. Lowered to a divisor of T where one lies in `[unroll / 2, unroll]`.
      fused_backward: use the custom VJP that computes weight gradients as large matmuls
        after the reverse loop. Set False to differentiate through `scan` with JAX's autodiff,
        which also supports forward mode (`jax.jvp`, `jax.hessian`).
      remat: gradient checkpointing for long sequences: True keeps only the states every
        ~sqrt(T) steps for the backward pass and recomputes each chunk's forward there; an int
        sets the chunk length. Costs one more forward pass; default False.
      implementation: how the time loop runs; every choice computes the same function. None or
        "xla": `lax.scan`, on every device. "pallas": one fused kernel per layer for each of the
        forward and backward loops (Triton on GPU, Mosaic on TPU). "cudnn": the LSTM stack as
        one cuDNN call (CUDA GPUs). "onednn": oneDNN's fused CPU kernels, one host call per
        layer (float32 or bfloat16, no `proj_size`; needs `pip install "jaxrnn[onednn]"`).
        "auto": "onednn" where it is installed, supports the call and measured faster (on
        CPU, LSTM and GRU layers of 8 sequences or more, and RNN layers of 8 or more with
        `hidden_size` 256 or more, over 32 steps or more without a gradient and 4 or more
        under one: `_onednn.preferred`), else "xla".

    Returns:
      `(output, {ret})`: `output` `(T, B, D * H_out)` (batch_first: `(B, T, D * H_out)`),
      {ret_shapes}, with `D` = 2 if bidirectional else 1 and `H_out` = `proj_size or hidden_size`.
"""


def _layer(kind: str, params: Params, x, hx, nonlinearity: str = "tanh", **options):
    spec = RecurrentSpec.from_params(params, kind, nonlinearity)
    if spec.cell:
        raise ValueError(f"params hold a {spec.describe()}; use {kind}_cell for a single cell")
    return run_layer(spec, params, x, hx, **_DEFAULTS | options)


_DEFAULTS = dict(
    seq_lengths=None,
    batch_first=False,
    dropout=0.0,
    dropout_key=None,
    dtype=None,
    precision=None,
    unroll=None,
    fused_backward=True,
    remat=False,
    implementation=None,
)


def lstm(params: Params, x: jax.Array, hx=None, **options) -> tuple[jax.Array, LSTMState]:
    r"""torch's `nn.LSTM` forward as a function of its `state_dict()`.

    .. math::
        i, f, g, o = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}), \sigma(\ldots), \tanh(\ldots), \sigma(\ldots)
        c' = f * c + i * g, \quad h' = o * \tanh(c') \quad (h' = W_{hr} (o * \tanh(c')) \text{ with proj_size})

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import functional as F
    >>> from jaxrnn.functional import RecurrentSpec
    >>> params = RecurrentSpec("lstm", 3, 5, num_layers=2).init(jax.random.key(0))
    >>> output, (h_n, c_n) = F.lstm(params, jnp.ones((7, 2, 3)))
    >>> output.shape, h_n.shape, c_n.shape
    ((7, 2, 5), (2, 2, 5), (2, 2, 5))
    """
    return _layer("lstm", params, x, hx, **options)


lstm.__doc__ = (lstm.__doc__ or "") + _LAYER_DOC.format(
        hx=": the pair `(h_0, c_0)` of shapes `(D * num_layers, B, H_out)` and `(D * num_layers, B, hidden_size)`",
        ret="LSTMState(h_n, c_n)",
        ret_shapes="`h_n` `(D * num_layers, B, H_out)`, `c_n` `(D * num_layers, B, hidden_size)`",
)


def gru(params: Params, x: jax.Array, hx=None, **options) -> tuple[jax.Array, jax.Array]:
    r"""torch's `nn.GRU` forward as a function of its `state_dict()`.

    .. math::
        r, z = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz})
        n = \tanh(W_{in} x + b_{in} + r * (W_{hn} h + b_{hn})), \quad h' = (1 - z) * n + z * h

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import functional as F
    >>> from jaxrnn.functional import RecurrentSpec
    >>> params = RecurrentSpec("gru", 3, 5, bidirectional=True).init(jax.random.key(0))
    >>> output, h_n = F.gru(params, jnp.ones((7, 2, 3)), seq_lengths=jnp.array([7, 4]))
    >>> output.shape, h_n.shape
    ((7, 2, 10), (2, 2, 5))
    """
    return _layer("gru", params, x, hx, **options)


gru.__doc__ = (gru.__doc__ or "") + _LAYER_DOC.format(
        hx=": `(D * num_layers, B, hidden_size)`",
        ret="h_n",
        ret_shapes="`h_n` `(D * num_layers, B, hidden_size)`",
)


def rnn(
    params: Params, x: jax.Array, hx=None, *, nonlinearity: str = "tanh", **options
) -> tuple[jax.Array, jax.Array]:
    r"""torch's `nn.RNN` forward as a function of its `state_dict()`.

    .. math::
        h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \quad (\text{or relu with nonlinearity="relu"})

    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import functional as F
    >>> from jaxrnn.functional import RecurrentSpec
    >>> params = RecurrentSpec("rnn", 3, 5).init(jax.random.key(0))
    >>> output, h_n = F.rnn(params, jnp.ones((2, 7, 3)), nonlinearity="relu", batch_first=True)
    >>> output.shape, h_n.shape
    ((2, 7, 5), (1, 2, 5))
    """
    return _layer("rnn", params, x, hx, nonlinearity, **options)


rnn.__doc__ = (rnn.__doc__ or "") + _LAYER_DOC.format(
        hx=": `(D * num_layers, B, hidden_size)`",
        ret="h_n",
        ret_shapes="`h_n` `(D * num_layers, B, hidden_size)`",
)

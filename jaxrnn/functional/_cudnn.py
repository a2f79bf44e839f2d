"""A whole LSTM stack as one cuDNN call, through `jax.experimental.rnn`.

cuDNN takes every weight in one flat vector: `[W_ih, W_hh]` of each pseudo-layer (layer 0
forward, layer 0 reverse, layer 1 forward, ...) in torch's `(4H, in)` layout and gate order,
then `[b_ih, b_hh]` of each. It covers LSTMs without `proj_size` in float32; its dropout is
cuDNN's own, so the stack runs here only where dropout is off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint

from ._spec import RecurrentSpec


def lstm_kernel():
    """`jax.experimental.rnn.lstm`, the cuDNN LSTM; it exists on CUDA GPUs only."""
    if jax.default_backend() != "gpu":
        raise ValueError(f"implementation='cudnn' needs a CUDA GPU; the default backend is {jax.default_backend()!r}")
    from jax.experimental import rnn

    return rnn.lstm


def check_supported(spec: RecurrentSpec, dtype, dropout_active: bool) -> None:
    reasons = [
        f"kind {spec.kind!r} (LSTM only)" if spec.kind != "lstm" else None,
        f"proj_size={spec.proj_size}" if spec.proj_size else None,
        f"dtype {jnp.dtype(dtype).name} (float32 only)" if jnp.dtype(dtype) != jnp.float32 else None,
        "dropout between layers in training (cuDNN draws its own masks)" if dropout_active else None,
    ]
    unsupported = [r for r in reasons if r]
    if unsupported:
        raise ValueError(f"implementation='cudnn' does not support {', '.join(unsupported)}; use implementation='xla'")


def pack_weights(spec: RecurrentSpec, params) -> jax.Array:
    """torch's state_dict as cuDNN's flat weight vector; absent biases are zeros."""
    suffixes = [f"_l{layer}{s}" for layer in range(spec.num_layers) for s in ("", "_reverse")[: spec.num_directions]]
    gates = 4 * spec.hidden_size
    zeros = jnp.zeros((gates,), params[f"weight_hh{suffixes[0]}"].dtype)
    parts = [params[f"{name}{s}"].reshape(-1) for s in suffixes for name in ("weight_ih", "weight_hh")]
    parts += [params.get(f"{name}{s}", zeros) for s in suffixes for name in ("bias_ih", "bias_hh")]
    return jnp.concatenate(parts)


def _row_major(a: jax.Array) -> jax.Array:
    """`a` laid out row-major, as cuDNN reads and writes it. `jax.experimental.rnn`'s call does
    not ask for a layout, so under `jit` XLA laid a transposed operand or result out as a free
    transpose and cuDNN read it as row-major: outputs off by 0.4-0.8 on an H100 (jax 0.11.2).
    The constraint applies to the cotangents of the backward pass too."""
    return with_layout_constraint(a, Layout(tuple(range(a.ndim))))


def run_stack(spec: RecurrentSpec, params, x, state0, lengths, precision, kernel):
    """All layers of an LSTM on time-major `x` `(T, B, I)`: `(output, (h_n, c_n))`."""
    T, B = x.shape[:2]
    seq_lengths = jnp.full((B,), T, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    y, h_n, c_n = map(_row_major, kernel(
        _row_major(jnp.swapaxes(x, 0, 1)),
        *map(_row_major, state0),
        pack_weights(spec, params),
        seq_lengths,
        spec.input_size,
        spec.hidden_size,
        spec.num_layers,
        0.0,
        spec.bidirectional,
        precision,
    ))
    return jnp.swapaxes(y, 0, 1), (h_n, c_n)

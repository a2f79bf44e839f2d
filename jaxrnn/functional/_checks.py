"""Validation of the arguments of every public entry point, before anything is traced."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._spec import RecurrentSpec


def check_x(spec: RecurrentSpec, x, layout: tuple[str, ...]) -> jax.Array:
    """`x` must have the axes `layout` (e.g. `("T", "B")`) then `input_size`, or those without B."""
    x = jnp.asarray(x)
    batched = (*layout, str(spec.input_size))
    unbatched = tuple(a for a in batched if a != "B")
    if x.ndim not in (len(batched), len(unbatched)) or x.shape[-1] != spec.input_size:
        raise ValueError(
            f"x must have shape {_shape(batched)} or, unbatched, {_shape(unbatched)} "
            f"for {spec.describe()}; got shape {x.shape}"
        )
    axes = batched if x.ndim == len(batched) else unbatched
    if "T" in axes and x.shape[axes.index("T")] == 0:
        raise ValueError(f"x must hold at least one time step (T >= 1), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    return x


def _shape(axes: tuple[str, ...]) -> str:
    """A shape in words, as Python writes a tuple: `(T, B, 3)`, `(3,)`."""
    return f"({', '.join(axes)}{',' if len(axes) == 1 else ''})"


def check_hx(spec: RecurrentSpec, hx, lead: tuple[int, ...], dtype) -> tuple[jax.Array, ...]:
    """Validate `hx` against the shapes torch expects; return the state tuple, zeros by default."""
    shapes = [(*lead, spec.output_size)] + ([(*lead, spec.hidden_size)] if spec.kind == "lstm" else [])
    if hx is None:
        return tuple(jnp.zeros(s, dtype) for s in shapes)
    names: tuple[str, ...]
    if spec.kind == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"hx for an LSTM must be a pair (h_0, c_0) of shapes {shapes[0]} and {shapes[1]}, "
                f"got {type(hx).__name__}"
            )
        states, names = tuple(hx), ("h_0", "c_0")
    else:
        if isinstance(hx, (tuple, list)):
            raise TypeError(
                f"hx for {spec.describe()} must be one array of shape {shapes[0]}, got a "
                f"{type(hx).__name__} of {len(hx)}"
            )
        states, names = (hx,), ("hx",)
    out = []
    for state, shape, name in zip(states, shapes, names):
        state = jnp.asarray(state)
        if state.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {state.shape}")
        out.append(state.astype(dtype))
    return tuple(out)


def check_lengths(seq_lengths, T: int, batch_shape: tuple[int, ...]) -> jax.Array | None:
    if seq_lengths is None:
        return None
    if not isinstance(seq_lengths, jax.core.Tracer):
        seq_lengths = np.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must be an integer array, got dtype {seq_lengths.dtype}")
    if seq_lengths.shape != batch_shape:
        raise ValueError(
            f"seq_lengths must have shape {batch_shape} (one length per sequence), "
            f"got {seq_lengths.shape}"
        )
    if isinstance(seq_lengths, np.ndarray) and seq_lengths.size:
        low, high = seq_lengths.min(), seq_lengths.max()
        if low < 1 or high > T:
            raise ValueError(f"seq_lengths must lie in [1, T={T}], got values in [{low}, {high}]")
    # Under jit the values cannot be checked: clipping keeps every index in range.
    return jnp.clip(jnp.asarray(seq_lengths).reshape(-1), 0, T)


IMPLEMENTATIONS = (None, "xla", "auto", "pallas", "cudnn", "onednn")


def check_layer_options(dropout: float, unroll, remat, implementation, fused_backward: bool) -> None:
    """A layer's dropout and JAX-side knobs: when a module is made, as torch checks its
    constructor's arguments, and at every functional call."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1], got {dropout}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation not in (None, "xla", "auto") and not fused_backward:
        raise ValueError(
            f"implementation={implementation!r} has its own backward pass; fused_backward=False needs 'xla'"
        )
    if unroll is not None and (isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1):
        raise ValueError(f"unroll must be a positive int or None, got {unroll!r}")
    if not (remat is None or isinstance(remat, bool) or (isinstance(remat, int) and remat >= 1)):
        raise ValueError(f"remat must be a bool or a positive chunk length, got {remat!r}")

"""The time loop as fused Pallas kernels, one forward and one backward: a program per direction
and block of the batch runs every time step with the recurrent weights and the state held on
chip, so a step costs no kernel launch. The steps are the scan's own (`step`, `step_back`);
the weight gradients are the scan's large matmuls after the loop (`backward`).

On GPU and TPU the kernel is compiled by Pallas; elsewhere it runs in Pallas's interpreter
(correct, and how the tests check it against torch, but slow).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._math import cell_math, is_highest
from ._recurrence import LoopWeights, _per_direction, backward, project, step, step_back, zeroed_padding


def _backend() -> str:
    return jax.default_backend()


def _compile_options(backend: str) -> dict:
    """How `pallas_call` runs on `backend`: Triton on GPU, Mosaic on TPU, else interpreted."""
    if backend == "gpu":
        from jax.experimental.pallas import triton as pl_triton

        return dict(compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1))
    return dict(interpret=backend != "tpu")


def _check_triton_sizes(block: int, xp, state0) -> None:
    """Triton compiles only blocks whose sizes are powers of two."""
    sizes = {"batch block": block, "gates * hidden_size": xp.shape[3]}
    sizes |= {f"state[{i}] features": s.shape[-1] for i, s in enumerate(state0)}
    odd = {name: n for name, n in sizes.items() if n & (n - 1)}
    if odd:
        found = ", ".join(f"{name} {n}" for name, n in odd.items())
        raise ValueError(
            f"implementation='pallas' on GPU compiles with Triton, which needs power-of-two sizes; got {found}; "
            "use implementation='xla'"
        )


def _batch_block(batch: int) -> int:
    """Rows of the batch per program: blocks of 16 or 32 spread a large batch over the GPU's
    cores (a Triton dot needs 16 rows at least); a small or odd batch stays whole."""
    return next((n for n in (32, 16) if batch > n and batch % n == 0), batch)


def _block_spec(shape, block: int, layout: str):
    """The block of program `(d, b)`: direction `d`, batch rows `b * block ...`. `layout`:
    "weight" `(D, ...)`, "state" `(D, B, F)`, "stacked" `(T, D, B, F)`, "mask" `(T, 1, B, 1)`."""
    from jax.experimental import pallas as pl

    if layout == "weight":
        return pl.BlockSpec((1, *shape[1:]), lambda d, b: (d,) + (0,) * (len(shape) - 1))
    if layout == "state":
        return pl.BlockSpec((1, block, shape[2]), lambda d, b: (d, b, 0))
    if layout == "stacked":
        return pl.BlockSpec((shape[0], 1, block, shape[3]), lambda d, b: (0, d, b, 0))
    return pl.BlockSpec((shape[0], 1, block, 1), lambda d, b: (0, 0, b, 0))


def _loop_kernel(step_fn, weights, stacked, state0, mask, *, reverse: bool):
    """`step_fn(weights, state, stacked_t, mask_t) -> (state, outputs_t)` over the T time steps of
    `stacked` (a tree of `(T, D, B, ...)` arrays) as one Pallas kernel: a program per direction
    and block of the batch, the weights and the state on chip throughout. Returns `(outputs
    stacked over time, final state)`."""
    # Pallas is imported here, when a kernel is asked for: it adds a tenth of a second to
    # `import jaxrnn`, and nothing else needs it.
    from jax.experimental import pallas as pl

    T = jax.tree.leaves(stacked)[0].shape[0]
    block = _batch_block(state0[0].shape[1])
    # Pallas kernels take no booleans: the mask travels as 0/1 in the state's dtype.
    mask = None if mask is None else mask.astype(state0[0].dtype)

    def run_step(weights, state, stacked_t, mask_t):
        return step_fn(weights, state, stacked_t, None if mask_t is None else mask_t > 0)

    at_0 = functools.partial(jax.tree.map, lambda a: a[0])
    final, outputs = jax.eval_shape(run_step, weights, state0, at_0(stacked), None if mask is None else mask[0])
    outputs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((T, *a.shape), a.dtype), outputs)

    def specs(tree, layout):
        return jax.tree.map(lambda a: _block_spec(a.shape, block, layout), tree)

    def kernel(w_ref, stacked_ref, state0_ref, mask_ref, outputs_ref, final_ref):
        weights = jax.tree.map(lambda r: r[...], w_ref)

        def body(i, state):
            t = T - 1 - i if reverse else i
            mask_t = None if mask_ref is None else mask_ref[t]
            state, outputs_t = run_step(weights, state, jax.tree.map(lambda r: r[t], stacked_ref), mask_t)
            jax.tree.map(lambda r, v: r.__setitem__(t, v), outputs_ref, outputs_t)
            return state

        # int32 bounds: under x64 the index would be int64, and Mosaic's reversed count
        # (`T - 1 - i`) then mixed it with its own int32 loop index.
        first, last = jnp.int32(0), jnp.int32(T)
        final = jax.lax.fori_loop(first, last, body, jax.tree.map(lambda r: r[...], state0_ref))
        jax.tree.map(lambda r, v: r.__setitem__(..., v), final_ref, final)

    return pl.pallas_call(
        kernel,
        out_shape=(outputs, final),
        grid=(state0[0].shape[0], state0[0].shape[1] // block),
        in_specs=(specs(weights, "weight"), specs(stacked, "stacked"), specs(state0, "state"), specs(mask, "mask")),
        out_specs=(specs(outputs, "stacked"), specs(final, "state")),
        **_compile_options(_backend()),
    )(weights, stacked, state0, mask)


def _kernel_forward(math_key, precision, w: LoopWeights, xs, state0, mask, *, keep_residuals: bool):
    """`((ys, final_state), residuals)` of one layer, as `_forward` returns them."""
    xp = project(xs, w, precision)
    if _backend() == "gpu":
        _check_triton_sizes(_batch_block(xp.shape[2]), xp, state0)
    run_step = functools.partial(step, math_key, precision, hoisted=True, keep_residuals=keep_residuals)
    (ys, residuals), final = _loop_kernel(run_step, w, xp, state0, mask, reverse=False)
    return (ys, final), residuals


def _kernel_backward(math_key, unroll, precision, w: LoopWeights, mask, residuals, cotangents):
    """The reverse loop as one Pallas kernel, returning what `_reverse_scan` does. Each gate's
    gradient meets its own block of `W_hh`, transposed before the kernel: Triton lowers no
    concatenation, and the gates' gradients are never joined inside it."""
    states_prev, pres, _ = residuals
    d_ys, d_final = cotangents
    math = cell_math(*math_key, is_highest(precision))
    # W_hh's blocks, as wide as the gates that meet them: (D, k * H, H_out) each
    d_hh_gates = jax.eval_shape(lambda pre: math.gate_grads(math.gates(pre))[1], jax.tree.map(lambda a: a[0], pres))
    bounds = np.cumsum([g.shape[-1] for g in d_hh_gates])[:-1]
    whh_gates = tuple(g.swapaxes(1, 2) for g in jnp.split(w.whh, bounds, -1))
    whr_t = None if w.whr is None else w.whr.swapaxes(1, 2)  # (D, P, H)

    def matmul(spec, a, w):
        return _per_direction(spec, a, w, precision)

    def step_fn(weights, d_state, stacked_t, mask_t):
        whh_gates, whr_t = weights
        d_y, state_prev, pre = stacked_t

        def recurrent(d_hh):
            products = [matmul("dbg,dgh->dbh", d, wg) for d, wg in zip(d_hh, whh_gates)]
            return sum(products[1:], products[0])

        unproject = None if whr_t is None else (lambda d_h: matmul("dbp,dph->dbh", d_h, whr_t))
        return step_back(math, recurrent, unproject, d_state, d_y, state_prev, math.gates(pre), mask_t)

    grads, d_state0 = _loop_kernel(step_fn, (whh_gates, whr_t), (d_ys, states_prev, pres), d_final, mask, reverse=True)
    d_xp, d_hh, d_h = grads
    return d_state0, jnp.concatenate(d_xp, -1), None if d_hh is None else jnp.concatenate(d_hh, -1), d_h


def recurrence_pallas(math_key, unroll, precision, w: LoopWeights, xs, state0, mask):
    """`recurrence` with each loop, forward and backward, as one Pallas kernel (`unroll` has
    nothing to unroll). A GRU runs with its 3 gates padded to 4 (zero weights): Triton compiles
    blocks of power-of-two sizes only, which `3 * hidden_size` never is."""
    if math_key[0] == "gru":
        math_key, w = ("gru_padded", *math_key[1:]), _padded_to_four_gates(w)
    return _fused_loop(math_key, unroll, precision, w, xs, state0, mask)


def _padded_to_four_gates(w: LoopWeights) -> LoopWeights:
    def pad(a):
        return None if a is None else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, a.shape[-1] // 3)])

    return w._replace(whh=pad(w.whh), bhh=pad(w.bhh), wih=pad(w.wih), bih=pad(w.bih))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused_loop(math_key, unroll, precision, w: LoopWeights, xs, state0, mask):
    return _kernel_forward(math_key, precision, w, xs, state0, mask, keep_residuals=False)[0]


def _fused_loop_fwd(math_key, unroll, precision, w, xs, state0, mask):
    xs = zeroed_padding(xs, mask)
    out, residuals = _kernel_forward(math_key, precision, w, xs, state0, mask, keep_residuals=True)
    return out, (w, mask, residuals, xs)


_fused_loop.defvjp(_fused_loop_fwd, functools.partial(backward, _kernel_backward))

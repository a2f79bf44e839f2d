"""The time loop as one fused Pallas kernel: a program per direction and block of the batch
runs every time step with the recurrent weights and the state held on chip, so a step costs no
kernel launch. The step itself is the same `step` function that the `lax.scan` loop
runs, and the backward pass is the scan path's custom VJP, fed the residuals the kernel stores.

On GPU and TPU the kernel is compiled by Pallas; elsewhere it runs in Pallas's interpreter
(correct, and how the tests check it against torch, but slow).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._recurrence import LoopWeights, _recurrence_bwd, project, step


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


def _kernel_forward(math_key, precision, w: LoopWeights, xs, state0, mask, *, keep_residuals: bool):
    """`((ys, final_state), residuals)` of one layer, as `_forward` returns them."""
    # Pallas is imported here, when a kernel is asked for: it adds a tenth of a second to
    # `import jaxrnn`, and nothing else needs it.
    from jax.experimental import pallas as pl

    xp = project(xs, w, precision)
    T, D = xp.shape[:2]
    backend = _backend()
    block = _batch_block(xp.shape[2])
    if backend == "gpu":
        _check_triton_sizes(block, xp, state0)
    # Pallas kernels take no booleans: the mask travels as 0/1 in the projections' dtype.
    mask = None if mask is None else mask.astype(xp.dtype)
    run_step = functools.partial(step, math_key, precision, hoisted=True, keep_residuals=keep_residuals)

    def step_of(w, state, x_t, mask_t):
        return run_step(w, state, x_t, None if mask_t is None else mask_t > 0)

    new_state, (y, residuals) = jax.eval_shape(step_of, w, state0, xp[0], None if mask is None else mask[0])
    stacked = jax.ShapeDtypeStruct((T, *y.shape), y.dtype), jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((T, *a.shape), a.dtype), residuals
    )
    out_shape = (stacked, new_state)
    inputs = (w, xp, state0, mask)

    def specs(tree, layout):
        return jax.tree.map(lambda a: _block_spec(a.shape, block, layout), tree)

    in_specs = (specs(w, "weight"), specs(xp, "stacked"), specs(state0, "state"), specs(mask, "mask"))
    out_specs = (specs(stacked, "stacked"), specs(new_state, "state"))

    def kernel(w_ref, xp_ref, state0_ref, mask_ref, stacked_ref, final_ref):
        w_block = jax.tree.map(lambda r: r[...], w_ref)

        def body(t, state):
            mask_t = None if mask_ref is None else mask_ref[t]
            new_state, outputs = step_of(w_block, state, xp_ref[t], mask_t)
            jax.tree.map(lambda r, v: r.__setitem__(t, v), stacked_ref, outputs)
            return new_state

        final = jax.lax.fori_loop(0, T, body, jax.tree.map(lambda r: r[...], state0_ref))
        jax.tree.map(lambda r, v: r.__setitem__(..., v), final_ref, final)

    (ys, residuals), final = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(D, xp.shape[2] // block),
        in_specs=in_specs,
        out_specs=out_specs,
        **_compile_options(backend),
    )(*inputs)
    return (ys, final), residuals


def recurrence_pallas(math_key, unroll, precision, w: LoopWeights, xs, state0, mask):
    """`recurrence` with the forward loop as one Pallas kernel (`unroll` applies to the backward
    loop only). A GRU runs with its 3 gates padded to 4 (zero weights): Triton compiles blocks
    of power-of-two sizes only, which `3 * hidden_size` never is."""
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
    out, residuals = _kernel_forward(math_key, precision, w, xs, state0, mask, keep_residuals=True)
    return out, (w, mask, residuals, xs)


_fused_loop.defvjp(_fused_loop_fwd, _recurrence_bwd)

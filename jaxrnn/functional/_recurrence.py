"""The time loop of one layer: every direction advances in the same `lax.scan` step.

Shapes, with D directions stacked on a leading axis (the reverse direction's inputs are already
reversed in time, per sequence):
    xs     (T, D, B, I)     the layer's inputs, anything in the padding (`zeroed_padding`)
    state  tuple of (D, B, H_out) [and (D, B, H) for LSTM's c]
    mask   (T, 1, B, 1) bool, or None: step t of sequence b is valid
    ys     (T, D, B, H_out) zero where the mask is False

Where the input projection `x @ W_ih^T + b_ih` runs is chosen by measurement (2-core CPU,
interleaved medians): when gradients are taken, it is hoisted out of the loop as one large
matmul (the backward needs all of it anyway). Forward-only, RNNs and LSTMs hoist too (LSTM
B=8, T=500, H=256: 38 -> 28-30 ms; B=32, T=100, H=128: 10-11 -> 8.4-8.8 ms); a GRU hoists
only where that measured faster (`_hoists_forward_only`).

The backward pass is a custom VJP: the reverse loop carries only the state gradients (one
matmul per step), and the weight gradients (W_ih and dx included) are single large matmuls
over all time steps afterwards, instead of one small accumulation per step as autodiff through
`scan` does.

Memory is time here: each call faults its temporary buffers in afresh, so the forward writes
each step's pre-activations over its projections, and the backward writes their gradients
over them in turn; one `(T, D, B, G*H)` buffer serves all three.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._math import cell_math, is_highest


class LoopWeights(NamedTuple):
    """Weights of one layer, directions stacked and pre-transposed for the loop."""

    whh: jax.Array  # (D, H_out, G*H)
    bhh: jax.Array | None  # (D, 1, G*H)
    whr: jax.Array | None  # (D, H, P)
    wih: jax.Array  # (D, I, G*H)
    bih: jax.Array | None  # (D, 1, G*H)


def compute_dtype(dtype):
    """The dtype that a layer of `dtype` runs its gate math and keeps its state in: float32 for
    16-bit floats, whose matmuls take 16-bit operands and accumulate in float32 (as torch's
    fused kernels do), else `dtype` itself. XLA:CPU runs a bfloat16 matmul into float32 up to
    twice as fast as one into bfloat16, and float32 gate math faster than bfloat16's."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def mixed_matmul(op, a, w, precision):
    """`op(a, w)`, a matmul, on operands in the weights' dtype, accumulated and returned in its
    `compute_dtype`."""
    return op(a.astype(w.dtype), w, precision=precision, preferred_element_type=compute_dtype(w.dtype))


def _per_direction(spec, a, w, precision):
    """`einsum(spec, a, w)` (see `mixed_matmul`) with the leading direction axis looped over: XLA:CPU
    runs a plain matmul several times faster than the same matmul as a batched dot."""
    matmul = functools.partial(mixed_matmul, functools.partial(jnp.einsum, spec.replace("d", "")), precision=precision)
    if a.shape[0] == 1:  # as reshapes, which a Pallas kernel can lower (no slice, no stack)
        return matmul(a.reshape(a.shape[1:]), w[0] if isinstance(w, tuple) else w.reshape(w.shape[1:]))[None]
    return jnp.stack([matmul(a[d], w[d]) for d in range(a.shape[0])])


def _unstacked(w: LoopWeights) -> LoopWeights:
    """The matmul weights as one array per direction, sliced once before a loop: sliced from
    the stacked weights inside the step, they were copied at every step (a bidirectional GRU
    step took 1.5x the time of two one-way steps)."""

    def split(a):
        return None if a is None else tuple(a[d] for d in range(a.shape[0]))

    return w._replace(whh=split(w.whh), whr=split(w.whr), wih=split(w.wih))


# Below this many elements in a step's input slice, prefetching it costs more than it saves
# (RNN B=1, H=64: 1.56 -> 0.66 ms without; GRU B=8, H=256: 20 -> 29 ms without).
PREFETCH_MIN_SIZE = 1024


def _where_valid(mask, new, old):
    return new if mask is None else jnp.where(mask, new, old)


def zeroed_padding(xs, mask):
    """`xs` with 0 in its padding, as a loop needs it under differentiation, where a padded
    step's gradient (0) meets what the padding held (0 * NaN is NaN). A loop run forward only
    takes the padding as it comes: a masked step keeps its state whatever its input, and an
    unmasked one's outputs and state are dropped (`read_off_padding`). Zeroing a float32 (T=100,
    B=32, 128) input took 0.15-0.3 ms of an RNN forward's 2.0-2.2."""
    return _where_valid(mask, xs, 0)


def project(xs, w: LoopWeights, precision):
    """The hoisted input projections `x @ W_ih^T` of all steps: one large matmul per direction
    `(T, D, B, I) -> (T, D, B, G*H)`; the bias joins inside the step."""
    return jnp.stack([mixed_matmul(jnp.matmul, xs[:, d], w.wih[d], precision) for d in range(xs.shape[1])], 1)


def step(math_key, precision, w: LoopWeights, state, x_t, mask_t, *, hoisted: bool, keep_residuals: bool):
    """One time step of every direction: `(new_state, (y, residuals))`.

    `x_t` is the step's projection `(D, B, G*H)` when `hoisted`, else its input `(D, B, I)`.
    The residuals are what the custom VJP's backward step needs: the state before the step,
    the pre-activations and, with a projection, `h` before it.
    """
    math = cell_math(*math_key, is_highest(precision))

    def matmul(spec, a, w):
        return _per_direction(spec, a, w, precision)

    xp_t = x_t if hoisted else matmul("dbi,dig->dbg", x_t, w.wih)
    # The bias joins here, where it fuses into the gate math; added to the hoisted projections
    # it would cost one more (T, D, B, G*H) buffer.
    xp_t = xp_t if w.bih is None else xp_t + w.bih.astype(xp_t.dtype)
    hh = matmul("dbh,dhg->dbg", state[0], w.whh)
    if w.bhh is not None:
        hh = hh + w.bhh.astype(hh.dtype)
    pre = math.combine(xp_t, hh)
    h_raw, rest = math.update(pre, state)
    h = h_raw if w.whr is None else matmul("dbk,dkp->dbp", h_raw, w.whr)
    new_state = tuple(_where_valid(mask_t, n, o) for n, o in zip((h, *rest), state))
    y = _where_valid(mask_t, h, 0)
    residuals = (state, pre, h_raw if w.whr is not None else None) if keep_residuals else None
    return new_state, (y, residuals)


def _forward(math_key, unroll, precision, w, xs, state0, mask, *, keep_residuals, hoist=True):
    w = _unstacked(w)
    if hoist:
        xs = project(xs, w, precision)

    def step_t(state, x_t, mask_t):
        return step(math_key, precision, w, state, x_t, mask_t, hoisted=hoist, keep_residuals=keep_residuals)

    if xs[0].size < PREFETCH_MIN_SIZE:
        state, (ys, residuals) = jax.lax.scan(
            lambda state, inputs: step_t(state, *inputs), state0, (xs, mask), unroll=unroll
        )
        return (ys, state), residuals

    # x_t arrives through the carry, prefetched one step ahead: slicing the hoisted
    # projections inside the step makes XLA:CPU fuse the slice into the gate math, which then
    # runs several times slower (the hoisting trap). For tiny steps the extra copy costs more.
    # Each step's pre-activations (their part of the projections' shape) overwrite its
    # projections in place: every call faults its temporary memory in afresh (about 0.3 ms
    # per MB here), so one (T, D, B, G*H) buffer less is time saved.
    in_place = keep_residuals and hoist

    def prefetched(state, x_t, mask_t):
        new_state, (y, residuals) = step_t(state, x_t.reshape(xs.shape[1:]), mask_t)
        pre = None
        if in_place:
            first, rest = _split_first(residuals[1])
            pre = _merged(first)
            residuals = (residuals[0], rest, residuals[2])
        return new_state, pre, (y, residuals)

    state, buffer, (ys, residuals) = _in_place_scan(prefetched, state0, _merged(xs), mask, unroll=unroll)
    if in_place:
        residuals = (residuals[0], _join_first(buffer.reshape(xs.shape), residuals[1]), residuals[2])
    return (ys, state), residuals


def _in_place_scan(fn, carry, buffer, inputs, *, unroll: int, reverse: bool = False):
    """`lax.scan` of `fn(carry, slot, inputs_t) -> (carry, new_slot, outputs)` over the time slots
    of `buffer` `(T, ...)`, where a `new_slot` that is not None overwrites its slot in place.
    Returns `(carry, buffer, outputs)`, the outputs stacked over time.

    Each iteration runs `unroll` steps on slots that arrive through the loop's carry, read after
    the previous iteration's writes. Read inside the iteration instead (as `lax.scan`'s own
    unroll does), XLA fused each read into several consumers while overwriting that slot, and
    copied the whole buffer in every iteration: LSTM B=8, T=500, H=256 fwd+bwd on CPU took 513 ms
    at 2 steps an iteration against 132 at 1. Steps left over (last going forward, first in
    reverse) run after the loop on slots from its last read, where XLA copies the buffer once;
    so `unroll` is lowered to a divisor of T where one lies in [unroll / 2, unroll].
    """
    T = buffer.shape[0]
    U = min(unroll, T)
    U = next((d for d in range(U, (U - 1) // 2, -1) if T % d == 0), U)
    n, tail = divmod(T, U)
    first_block = tail if reverse else 0

    def block(carry, buffer, slots, start: int | jax.Array, inputs_block, length: int):
        outputs = [None] * length
        for j in reversed(range(length)) if reverse else range(length):
            inputs_t = jax.tree.map(lambda a, j=j: a[j], inputs_block)
            carry, new_slot, outputs[j] = fn(carry, slots[j], inputs_t)
            if new_slot is not None:
                buffer = jax.lax.dynamic_update_index_in_dim(buffer, new_slot, start + j, 0)
        return carry, buffer, jax.tree.map(lambda *o: jnp.stack(o), *outputs)

    def body(loop_carry, block_inputs):
        carry, slots, buffer = loop_carry
        c, inputs_block = block_inputs
        start = first_block + c * U
        carry, buffer, outputs = block(carry, buffer, slots, start, inputs_block, U)
        following = start - U if reverse else start + U
        return (carry, jax.lax.dynamic_slice_in_dim(buffer, jnp.clip(following, 0, T - U), U), buffer), outputs

    blocks = jax.tree.map(lambda a: a[first_block : first_block + n * U].reshape(n, U, *a.shape[1:]), inputs)
    slots = buffer[T - U :] if reverse else buffer[:U]
    (carry, slots, buffer), outputs = jax.lax.scan(
        body, (carry, slots, buffer), (jnp.arange(n), blocks), reverse=reverse
    )
    outputs = jax.tree.map(lambda a: a.reshape(n * U, *a.shape[2:]), outputs)
    if tail:
        start = 0 if reverse else n * U
        tail_inputs = jax.tree.map(lambda a: a[start : start + tail], inputs)
        tail_slots = slots[:tail] if reverse else slots[U - tail :]
        carry, buffer, tail_outputs = block(carry, buffer, tail_slots, start, tail_inputs, tail)
        outputs = jax.tree.map(lambda a, b: jnp.concatenate((b, a) if reverse else (a, b)), outputs, tail_outputs)
    return carry, buffer, outputs


def _merged(a):
    """`a` `(..., D, B, n)` as `(..., D * B, n)`, the form a loop carries its buffer in: with a
    one-way layer's unit direction axis, XLA:CPU copied the whole buffer into each loop (a change
    of layout that moves no byte). Without those copies an LSTM's fwd+bwd at B=16, T=20000,
    H=256 peaks at 2.80 GB instead of 4.03."""
    return a.reshape(*a.shape[:-3], -1, a.shape[-1])


def _split_first(pre):
    """`pre` as (its part of the projections' shape, the rest or None)."""
    return (pre[0], pre[1:]) if isinstance(pre, tuple) else (pre, None)


def _join_first(first, rest):
    return first if rest is None else (first, *rest)


# XLA:CPU's matmul library splits a dot over threads only from this much work, `(rows + columns)
# * contraction` (see docs/performance.md).
CPU_DOT_SPLIT_SIZE = 65536


def _hoists_forward_only(math_key, w: LoopWeights, xs) -> bool:
    """Whether a forward pass that keeps no residuals hoists its input projection. RNNs and
    LSTMs do. A GRU on CPU does where its step's own projection would run on one core and the
    step is large enough to prefetch (B=32, H=128: 6.2-6.6 against 7.5-7.7 ms); it projects
    inside the step where that dot splits over threads (B=8, H=256: 19 against 25 ms) or the
    step is tiny (B=1, H=64: 1.3 against 1.8 ms). With 16-bit weights the step's own
    mixed-precision dot is the slower one wherever the step is large enough to prefetch, split
    or not (hoisted against in the step, bfloat16 in two runs and float16 in one: B=8, T=500,
    H=256 0.74-0.87x; B=8, T=200, H=512 0.73-0.83x; B=32, T=100, H=256 0.84-0.90x; H=128 and
    B=64, H=512 level at 0.81-1.03x; B=1, H=64 1.5-1.6x). Off CPU a GRU projects inside the
    step, as it did when the GPU figures were taken (hoisting it there is not measured)."""
    if math_key[0] != "gru":
        return True
    _, D, B, I = xs.shape
    gates = w.wih.shape[-1]
    one_core = (B + gates) * I < CPU_DOT_SPLIT_SIZE
    mixed = compute_dtype(w.wih.dtype) != w.wih.dtype
    return jax.default_backend() == "cpu" and (one_core or mixed) and D * B * gates >= PREFETCH_MIN_SIZE


def read_off_padding(ys, final, state0, mask):
    """`(ys, final)` of a loop that also ran over the padding, made what the masked loop gives:
    the outputs 0 past each sequence's length, and `h_n` that of its last valid step (the
    initial `h` where it has none). The padding comes after each sequence's valid steps in
    every direction (the reverse one's inputs are reversed per sequence), so no valid step read
    it. The rest of `final` (LSTM's `c`) comes as it is: the caller has held it fixed."""
    valid = mask[:, 0, :, 0].sum(0)  # (B,) each sequence's number of valid steps
    ys = jnp.where(mask, ys, 0)
    h_n = ys[jnp.maximum(valid - 1, 0), :, jnp.arange(ys.shape[2])].swapaxes(0, 1)  # (D, B, H_out)
    h_n = jnp.where(valid[:, None] > 0, h_n, state0[0].astype(h_n.dtype))
    return ys, (h_n.astype(state0[0].dtype), *final[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def recurrence(math_key, unroll, precision, w: LoopWeights, xs, state0, mask):
    """Run one layer's loop; returns `(ys, final_state)`. See the module docstring for shapes.

    Where no gradient is taken, RNN and GRU layers run their padding unmasked (every step a
    select less, `read_off_padding`): with `seq_lengths`, B=32, T=100, H=128, RNN 3.24 -> 2.57
    ms and GRU 7.6 -> 7.9; B=8, T=500, H=256, RNN 12.0 -> 11.1 and GRU 40 -> 26 (its
    projection inside the step, which the selects slowed down). An LSTM's `c_n` is in no
    output, so it masks as before (B=8, T=500, H=256: 42.9 against 41.8 unmasked). Under
    differentiation the padding stays masked, as unmasked steps there could overflow (a relu
    RNN) and send 0 * inf into the weight gradients."""
    hoist = _hoists_forward_only(math_key, w, xs)
    if mask is None or math_key[0] == "lstm":
        return _forward(math_key, unroll, precision, w, xs, state0, mask, keep_residuals=False, hoist=hoist)[0]
    ys, final = _forward(math_key, unroll, precision, w, xs, state0, None, keep_residuals=False, hoist=hoist)[0]
    return read_off_padding(ys, final, state0, mask)


def _recurrence_fwd(math_key, unroll, precision, w, xs, state0, mask):
    xs = zeroed_padding(xs, mask)
    out, residuals = _forward(math_key, unroll, precision, w, xs, state0, mask, keep_residuals=True)
    return out, (w, mask, residuals, xs)


def step_back(math, recurrent, unproject, d_state, d_y, state_prev, gates, mask_t):
    """One step of the reverse loop, gate by gate (`_math.CellMath`): returns `(d state before
    the step, (d xp gates, d hh gates or None where they are d xp's, d h or None))`.

    `recurrent(d hh gates)` is `d_hh @ W_hh`, `unproject(d h)` is `d_h @ W_hr` (None without a
    projection); the scan and the Pallas kernel each bring their own.
    """
    d_new = (d_state[0] + d_y, *d_state[1:])
    # Where the step was padding, the state passed through unchanged and y was 0.
    passed = tuple(_where_valid(mask_t, 0, d) for d in d_state)
    d_new = tuple(_where_valid(mask_t, d, 0) for d in d_new)
    d_h_raw = d_new[0] if unproject is None else unproject(d_new[0])
    _, update_vjp = jax.vjp(math.update_gates, gates, state_prev)
    d_gates, d_prev = update_vjp((d_h_raw, d_new[1:]))
    d_xp, d_hh = math.gate_grads(d_gates)
    d_prev = (d_prev[0] + recurrent(d_hh), *d_prev[1:])
    if mask_t is not None:
        d_prev = tuple(a + b for a, b in zip(d_prev, passed))
    # Where both projections get the same gradient (RNN, LSTM), it is kept once.
    return d_prev, (d_xp, None if d_hh is d_xp else d_hh, None if unproject is None else d_new[0])


def _reverse_scan(math_key, unroll, precision, stacked: LoopWeights, mask, residuals, cotangents):
    """The reverse loop as a `lax.scan`: `(d state0, d xp, d hh or None, d h or None)`, the last
    three stacked over time `(T, D, B, ...)`."""
    states_prev, pres, _ = residuals
    w = _unstacked(stacked)
    d_ys, d_final = cotangents
    math = cell_math(*math_key, is_highest(precision))

    def matmul(spec, a, w):
        return _per_direction(spec, a, w, precision)

    def recurrent(d_hh):
        return matmul("dbg,dhg->dbh", jnp.concatenate(d_hh, -1), w.whh)

    unproject = None if w.whr is None else (lambda d_h: matmul("dbp,dkp->dbk", d_h, w.whr))

    def step_t(d_state, inputs):
        d_y, state_prev, pre, mask_t = inputs
        d_prev, grads = step_back(math, recurrent, unproject, d_state, d_y, state_prev, math.gates(pre), mask_t)
        d_xp, d_hh, d_h = grads
        return d_prev, (jnp.concatenate(d_xp, -1), None if d_hh is None else jnp.concatenate(d_hh, -1), d_h)

    first, rest = _split_first(pres)
    if first[0].size < PREFETCH_MIN_SIZE:
        d_state0, (d_xp, d_hh, d_h) = jax.lax.scan(
            step_t, d_final, (d_ys, states_prev, pres, mask), reverse=True, unroll=unroll
        )
        return d_state0, d_xp, d_hh, d_h

    # As in the forward: the step's pre-activations are prefetched through the carry, and the
    # gradient of the projections overwrites them in place.
    def in_place(d_state, first_t, inputs):
        d_y, state_prev, rest_t, mask_t = inputs
        pre_t = _join_first(first_t.reshape(first.shape[1:]), rest_t)
        d_prev, (d_xp, d_hh, d_h) = step_t(d_state, (d_y, state_prev, pre_t, mask_t))
        return d_prev, _merged(d_xp), (d_hh, d_h)

    d_state0, d_xp, (d_hh, d_h) = _in_place_scan(
        in_place, d_final, _merged(first), (d_ys, states_prev, rest, mask), unroll=unroll, reverse=True
    )
    return d_state0, d_xp.reshape(first.shape), d_hh, d_h


def backward(reverse_loop, math_key, unroll, precision, saved, cotangents):
    """The custom VJP's backward: `reverse_loop` (the scan, or a kernel) carries the state
    gradients back through time, then the weight gradients (W_ih and dx included) are one large
    matmul over all time steps each."""
    w, mask, residuals, xs = saved
    states_prev, _, h_raws = residuals
    d_state0, d_xp, d_hh, d_h = reverse_loop(math_key, unroll, precision, w, mask, residuals, cotangents)
    d_hh = d_xp if d_hh is None else d_hh

    # Per direction on (T * B, features) slabs, so that no operand needs a transpose first.
    def over_time(a, b):  # (T, D, B, m), (T, D, B, n) -> (D, m, n)
        slabs = [(a[:, d].reshape(-1, a.shape[-1]).T, b[:, d].reshape(-1, b.shape[-1]).astype(w.wih.dtype))
                 for d in range(a.shape[1])]
        return jnp.stack([mixed_matmul(jnp.matmul, a_d, b_d, precision) for a_d, b_d in slabs])

    d_xs = jnp.stack([mixed_matmul(jnp.matmul, d_xp[:, d], w.wih[d].T, precision) for d in range(d_xp.shape[1])], 1)
    d_w = LoopWeights(
        whh=over_time(states_prev[0], d_hh),
        bhh=None if w.bhh is None else d_hh.sum((0, 2))[:, None],
        whr=None if w.whr is None else over_time(h_raws, d_h),
        wih=over_time(xs, d_xp),
        bih=None if w.bih is None else d_xp.sum((0, 2))[:, None],
    )
    # Each gradient in its primal's dtype (the weights' 16-bit one, where the math ran in float32).
    d_w = jax.tree.map(lambda d, a: d.astype(a.dtype), d_w, w)
    return d_w, d_xs.astype(xs.dtype), d_state0, None


recurrence.defvjp(_recurrence_fwd, functools.partial(backward, _reverse_scan))


def recurrence_autodiff(math_key, unroll, precision, w, xs, state0, mask):
    """`recurrence` differentiated by JAX's autodiff through `scan` (supports forward mode)."""
    xs = zeroed_padding(xs, mask)
    return _forward(math_key, unroll, precision, w, xs, state0, mask, keep_residuals=False)[0]

"""Parity with torch on the same weights and inputs: outputs, final states, and gradients of a
scalar loss w.r.t. every parameter, the input and the initial state.

Reference: torch.nn.RNN/LSTM/GRU (and their cells) in the same dtype; variable lengths through
`pack_padded_sequence(enforce_sorted=False)` -> module -> `pad_packed_sequence(total_length=T)`.
Tolerances: max abs error < 1e-5 in float32, < 1e-10 in float64 (jax x64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from frontends import FRONTENDS, cell_fn, layer_fn
from matrix import OPTIONS, covering_rows, row_id
from torch_reference import assert_close, numpy_state_dict, run_torch, torch_module

from jaxrnn.functional import RecurrentSpec

T, B, INPUT, HIDDEN, PROJ = 5, 3, 4, 6, 3
LENGTHS = np.array([5, 2, 4])  # unsorted, includes T


def spec_of(row: dict, input_size: int = INPUT, hidden_size: int = HIDDEN) -> RecurrentSpec:
    kind, _, nonlinearity = row["kind"].partition("_")
    return RecurrentSpec(
        kind,
        input_size,
        hidden_size,
        num_layers=row["num_layers"],
        bias=row["bias"],
        bidirectional=row["bidirectional"],
        proj_size=min(PROJ, hidden_size - 1) if row["proj"] and kind == "lstm" else 0,
        nonlinearity=nonlinearity or "tanh",
    )


def loss_and_grads(fn, params, x, hx, seq_lengths, weights):
    """sum(w * output) + sum(w * each final state) and its gradients w.r.t. params, x and hx."""

    def loss(params, x, hx):
        output, state = fn(params, x, hx, seq_lengths)
        outs = (output, *state) if isinstance(state, tuple) else (output, state)
        return sum((o * w).sum() for o, w in zip(outs, weights)), outs

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, x, hx)


@pytest.mark.parametrize("row", covering_rows(OPTIONS, FRONTENDS), ids=row_id)
def test_layer_matches_torch(row, rng):
    check_layer_against_torch(row, rng)


INFERENCE_ROWS = covering_rows(dict(OPTIONS, seq_lengths=[True], backward=["fused", "remat"]), FRONTENDS, strength=2)


@pytest.mark.parametrize("row", INFERENCE_ROWS, ids=row_id)
def test_inference_with_lengths_matches_torch(row, rng):
    """Where no gradient is taken, the loop's own forward runs, not the one under autodiff: RNN
    and GRU layers run over the padding unmasked and read `h_n` off the outputs."""
    check_layer_against_torch(row, rng, inference=True)


def check_layer_against_torch(row, rng, T=T, B=B, INPUT=INPUT, HIDDEN=HIDDEN, LENGTHS=LENGTHS, inference=False,
                              **knobs):
    """Compare one configuration `row` (see matrix.OPTIONS) with torch at the given sizes:
    outputs, final states and (unless `inference`) every gradient; `knobs` go to the layer as
    keyword arguments."""
    spec, dtype = spec_of(row, INPUT, HIDDEN), np.dtype(row["dtype"])
    module = torch_module(spec, batch_first=row["batch_first"], dtype=dtype)
    params = numpy_state_dict(module)
    shape = (T, INPUT) if row["unbatched"] else ((B, T, INPUT) if row["batch_first"] else (T, B, INPUT))
    x = rng.standard_normal(shape).astype(dtype)
    lead = (spec.num_directions * spec.num_layers,) + (() if row["unbatched"] else (B,))
    hx = None
    if row["h0"]:
        sizes = [spec.output_size] + [HIDDEN] * (spec.kind == "lstm")
        hx = tuple(rng.standard_normal((*lead, s)).astype(dtype) for s in sizes)
    seq_lengths = (np.int32(LENGTHS[0]) if row["unbatched"] else LENGTHS) if row["seq_lengths"] else None

    expected, _ = run_torch(module, x, hx, seq_lengths, row["batch_first"])
    weights = [rng.standard_normal(e.shape).astype(dtype) for e in expected]
    expected, expected_grads = run_torch(module, x, hx, seq_lengths, row["batch_first"], weights)

    backward = {"fused": {}, "autodiff": {"fused_backward": False}, "remat": {"remat": 2}}[row["backward"]]
    fn = layer_fn(row["frontend"], spec, batch_first=row["batch_first"], **backward, **knobs)
    jax_hx = hx if hx is None or spec.kind == "lstm" else hx[0]
    if inference:
        outputs = jax.tree.leaves(jax.jit(lambda p, x, hx: fn(p, x, hx, seq_lengths))(params, x, jax_hx))
    else:
        (_, outputs), grads = loss_and_grads(fn, params, x, jax_hx, seq_lengths, weights)

    assert len(outputs) == len(expected)
    for name, actual, want in zip(("output", "h_n", "c_n"), outputs, expected):
        assert_close(actual, want, name)
    if not inference:
        d_params, d_x, d_hx = grads
        assert set(d_params) == set(expected_grads) - {"x", "hx"}
        for name, grad in d_params.items():
            assert_close(grad, expected_grads[name], f"d {name}")
        assert_close(d_x, expected_grads["x"], "d x")
        if hx is not None:
            for actual, want in zip(d_hx if spec.kind == "lstm" else (d_hx,), expected_grads["hx"]):
                assert_close(actual, want, "d hx")
    if seq_lengths is not None:  # torch zeroes padding; check it is exactly zero here too
        output = np.asarray(outputs[0])
        valid = np.arange(T)[:, None] < np.atleast_1d(seq_lengths)
        if row["unbatched"]:
            valid = valid[:, 0]
        elif row["batch_first"]:
            valid = valid.T
        assert np.all(output[~valid] == 0)


CELL_ROWS = [
    dict(kind=k, bias=b, batched=bt, dtype=d, frontend=f)
    for k in ("rnn_tanh", "rnn_relu", "lstm", "gru")
    for b in (True, False)
    for bt, d, f in (
        (True, "float32", "functional"),
        (False, "float64", "linen"),
        (True, "float64", "nnx"),
        (False, "float32", "nnx"),
    )
]


@pytest.mark.parametrize("row", CELL_ROWS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_cell_matches_torch(row, rng):
    kind, _, nonlinearity = row["kind"].partition("_")
    spec = RecurrentSpec(kind, INPUT, HIDDEN, bias=row["bias"], nonlinearity=nonlinearity or "tanh", cell=True)
    dtype = np.dtype(row["dtype"])
    module = torch_module(spec, dtype=dtype)
    params = numpy_state_dict(module)
    lead = (B,) if row["batched"] else ()
    x = rng.standard_normal((*lead, INPUT)).astype(dtype)
    hx = tuple(rng.standard_normal((*lead, HIDDEN)).astype(dtype) for _ in range(1 + (kind == "lstm")))
    expected, _ = run_torch(module, x, hx)
    weights = [rng.standard_normal(e.shape).astype(dtype) for e in expected]
    expected, expected_grads = run_torch(module, x, hx, loss_weights=weights)

    fn = cell_fn(row["frontend"], spec)

    def loss(params, x, hx):
        state = fn(params, x, hx if kind == "lstm" else hx[0])
        outs = tuple(state) if kind == "lstm" else (state,)
        return sum((o * w).sum() for o, w in zip(outs, weights)), outs

    (_, outputs), (d_params, d_x, d_hx) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    )(params, x, hx)
    for actual, want in zip(outputs, expected):
        assert_close(actual, want, "state")
    for name, grad in d_params.items():
        assert_close(grad, expected_grads[name], f"d {name}")
    assert_close(d_x, expected_grads["x"], "d x")
    for actual, want in zip(d_hx, expected_grads["hx"]):
        assert_close(actual, want, "d hx")


def test_long_sequence_float32_error_is_torchs(rng):
    """T=200: the f32 drift against a f64 reference is of torch's own f32 size, not more."""
    spec = RecurrentSpec("lstm", INPUT, HIDDEN)
    module = torch_module(spec, dtype=np.float64)
    params64 = numpy_state_dict(module)
    x = rng.standard_normal((200, B, INPUT))
    (ref, *_), _ = run_torch(module, x)
    (torch32, *_), _ = run_torch(module.float(), x.astype(np.float32))
    fn = layer_fn("functional", spec)
    ours = fn({k: v.astype(np.float32) for k, v in params64.items()}, jnp.asarray(x, jnp.float32), None, None)[0]
    torch_err = np.abs(torch32 - ref).max()
    our_err = np.abs(np.asarray(ours, np.float64) - ref).max()
    assert our_err < max(4 * torch_err, 1e-6), (our_err, torch_err)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("backward", ["fused", "autodiff", "remat"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_wide_steps_match_torch(kind, backward, bidirectional, rng):
    """Steps with 1024+ input elements take the loop's prefetching, in-place path (tiny ones do not)."""
    row = dict(
        kind=kind, num_layers=2, bidirectional=bidirectional, bias=True, batch_first=False, proj=False,
        unbatched=False, h0=True, seq_lengths=True, dtype="float64", backward=backward, frontend="functional",
    )
    lengths = rng.integers(1, 5, 32)
    check_layer_against_torch(row, rng, T=4, B=32, INPUT=32, HIDDEN=32, LENGTHS=lengths)


# A GRU's forward-only loop hoists its projection at 32 inputs and, on CPU, projects inside the
# step at 640 (where XLA:CPU splits that step's dot over threads).
@pytest.mark.parametrize("kind, input_size", [("rnn_tanh", 32), ("lstm", 32), ("gru", 32), ("gru", 640)])
@pytest.mark.parametrize("unroll", [1, 3])
def test_wide_forward_only_matches_torch(kind, input_size, unroll, rng):
    """Without gradients the loop runs its own forward: outputs and states of wide steps,
    one-way and bidirectional, against torch."""
    spec = RecurrentSpec(kind.partition("_")[0], input_size, 32, num_layers=2, bidirectional=True)
    module = torch_module(spec, dtype=np.float64)
    x = rng.standard_normal((5, 32, input_size))
    lengths = rng.integers(1, 6, 32)
    expected, _ = run_torch(module, x, seq_lengths=lengths)
    output, state = jax.jit(layer_fn("functional", spec, unroll=unroll))(numpy_state_dict(module), x, None, lengths)
    for name, actual, want in zip(("output", "h_n", "c_n"), (output, *jax.tree.leaves(state)), expected):
        assert_close(actual, want, name)


@pytest.mark.parametrize(
    "kind, backward", [("rnn_relu", "fused"), ("lstm", "fused"), ("gru", "fused"), ("lstm", "remat"), ("gru", "autodiff")]
)
@pytest.mark.parametrize("wide", [False, True])
def test_unrolled_loops_match_torch(kind, backward, wide, rng):
    """3 steps an iteration over T=5 (a partial last iteration), as GPUs run 8; narrow and wide
    steps take the loop's two paths, forward and backward."""
    row = dict(
        kind=kind, num_layers=1, bidirectional=True, bias=True, batch_first=False, proj=False,
        unbatched=False, h0=True, seq_lengths=True, dtype="float64", backward=backward, frontend="functional",
    )
    sizes = dict(B=32, INPUT=32, HIDDEN=32, LENGTHS=rng.integers(1, 6, 32)) if wide else {}
    check_layer_against_torch(row, rng, **sizes, unroll=3)

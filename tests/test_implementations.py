"""The accelerator implementations of the time loop, checked on CPU.

- "pallas": the fused kernel runs in Pallas's interpreter here and must match torch exactly as
  the scan does (outputs, states, every gradient); its GPU (Triton) and TPU (Mosaic) lowerings
  are built here too, without a device, to prove that they compile to a kernel at all.
- "cudnn": everything but the cuDNN call itself (weight packing, layout, lengths, states) runs
  against torch, with `jax.experimental.rnn`'s reference LSTM standing in for cuDNN.
- "onednn": oneDNN's own CPU kernels, run here, against torch on every configuration they cover.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from frontends import FRONTENDS
from jax.experimental import rnn
from matrix import BACKEND, OPTIONS, covering_rows, onednn_platform, row_id
from test_parity import check_layer_against_torch
from torch_reference import assert_close

import jaxrnn
from jaxrnn import functional as F
from jaxrnn.functional import RecurrentSpec, _cudnn, _onednn, _pallas

PALLAS_ROWS = covering_rows(dict(OPTIONS, backward=["fused", "remat"]), FRONTENDS, strength=2)


def kernel_sizes(row) -> dict:
    """Sizes the Pallas kernel is tested at: the parity test's own in the interpreter (CPU); on
    GPU, Triton's, which compiles powers of two only (proj_size 3 never is; a GRU's gates are
    padded to four) and a float64 dot of 16 rows and 16 columns at least."""
    if BACKEND != "gpu":
        return {}
    if row["proj"]:
        pytest.skip("Triton compiles power-of-two sizes only")
    if row["unbatched"] and row["dtype"] == "float64":
        pytest.skip("Triton's float64 dot needs a batch of 16 at least")
    return dict(B=16, INPUT=8, HIDDEN=16, LENGTHS=np.arange(16) % 5 + 1)


@pytest.mark.parametrize("row", PALLAS_ROWS, ids=row_id)
def test_pallas_matches_torch(row, rng):
    check_layer_against_torch(row, rng, **kernel_sizes(row), implementation="pallas")


def bidirectional_row(kind: str, **options) -> dict:
    """A configuration row of a bidirectional layer: functional, with `h0`, `options` changed."""
    return dict(
        kind=kind, num_layers=2, bidirectional=True, bias=True, batch_first=False, proj=False,
        unbatched=False, h0=True, seq_lengths=False, dtype="float32", backward="fused", frontend="functional",
    ) | options


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pallas_blocks_of_the_batch_match_torch(kind, rng):
    """A batch of 48 runs as three programs of 16 rows per direction."""
    row = bidirectional_row(kind, num_layers=1, seq_lengths=True, dtype="float64")
    sizes = kernel_sizes(row) | dict(T=3, B=48, LENGTHS=rng.integers(1, 4, 48))
    check_layer_against_torch(row, rng, **sizes, implementation="pallas")


def reference_lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional,
                   precision):
    """`jax.experimental.rnn.lstm`'s own reference, on the same flat cuDNN weight vector."""
    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size, num_layers, dropout,
                        bidirectional)


CUDNN_OPTIONS = dict(OPTIONS, kind=["lstm"], proj=[False], dtype=["float32"], backward=["fused"])


@pytest.mark.parametrize("row", covering_rows(CUDNN_OPTIONS, FRONTENDS, strength=2), ids=row_id)
def test_cudnn_path_matches_torch(row, rng, monkeypatch):
    if BACKEND != "gpu":  # on GPU: cuDNN itself
        monkeypatch.setattr(_cudnn, "lstm_kernel", lambda: reference_lstm)
    check_layer_against_torch(row, rng, implementation="cudnn")


ONEDNN_OPTIONS = dict(OPTIONS, proj=[False], dtype=["float32"], backward=["fused", "remat"])


@onednn_platform
@pytest.mark.parametrize("row", covering_rows(ONEDNN_OPTIONS, FRONTENDS, strength=2), ids=row_id)
def test_onednn_matches_torch(row, rng):
    check_layer_against_torch(row, rng, implementation="onednn")


def share_out(side_by_side: bool, monkeypatch, split_batch: bool = False) -> None:
    """Run a bidirectional layer's two directions side by side (on the pair of workers), or as
    one oneDNN call: the sizes of the tests are all small enough for the first. With
    `split_batch`, a one-way layer's inference runs its sequences in two halves on the pair from
    two sequences on (the tests' batches are below `SPLIT_MIN_BATCH`)."""
    if not side_by_side:
        monkeypatch.setattr(_onednn, "SIDE_BY_SIDE_MAX_STEP", 0)
    elif not _onednn._onednn().pair:
        pytest.skip("side by side needs two cores")
    if split_batch:
        monkeypatch.setattr(_onednn, "SPLIT_MIN_BATCH", 2)


def workspace_size(T: int, direction: int) -> int:
    """The workspace of an LSTM's training forward at B=2, I=4, H=8, on contiguous x and y."""
    width = 16 if direction == _onednn._CONCAT else 8
    return _onednn._primitives(
        "lstm", "tanh", T, 2, 4, 8, direction, True, "float32", 1, (8, 4, 1), (2 * width, width, 1)).workspace_bytes


@onednn_platform
@pytest.mark.parametrize("kind, bias, side_by_side", [
    ("rnn_tanh", False, False), ("rnn_relu", True, True), ("lstm", True, True), ("lstm", False, False),
    ("gru", True, True), ("gru", False, False)])
def test_onednn_bidirectional_layer_without_lengths_matches_torch(kind, bias, side_by_side, rng, monkeypatch):
    """Both ways of running both directions in one host call: oneDNN's `bidirectional_concat`
    on all cores, and its two directions side by side, writing their halves of `y` in place."""
    share_out(side_by_side, monkeypatch)
    check_layer_against_torch(bidirectional_row(kind, bias=bias), rng, implementation="onednn")


@onednn_platform
def test_onednn_bidirectional_layer_without_lengths_is_one_call():
    """A bidirectional layer without lengths is one host call forward and one backward (both
    directions side by side, or oneDNN's `bidirectional_concat`): nothing is reversed or
    concatenated outside it."""
    grad = jax.grad(lambda p: F.lstm(p, X, implementation="onednn")[0].sum())
    jaxpr = str(jax.make_jaxpr(grad)(_lstm_params(num_layers=2, bidirectional=True)))
    assert jaxpr.count("buffer_callback") == 2 * 2 and " rev[" not in jaxpr  # a forward and a backward per layer


@onednn_platform
@pytest.mark.parametrize("kind, backward", [("lstm", "remat"), ("gru", "fused")])
def test_onednn_bidirectional_layer_one_direction_after_the_other_matches_torch(kind, backward, rng, monkeypatch):
    """With `seq_lengths` each direction reads an input of its own, and runs side by side (the
    other tests' sizes) or, as a larger step does, one after the other on all cores."""
    share_out(False, monkeypatch)
    row = bidirectional_row(kind, batch_first=True, seq_lengths=True, backward=backward)
    check_layer_against_torch(row, rng, implementation="onednn")


@onednn_platform
@pytest.mark.parametrize("kind, seq_lengths", [("rnn_relu", True), ("lstm", False), ("lstm", True), ("gru", True)])
def test_onednn_inference_runs_the_sequences_in_two_halves_and_matches_torch(kind, seq_lengths, rng, monkeypatch):
    """Where no gradient is taken, here `remat`'s forward, a one-way layer's sequences run in
    two halves side by side (2 and 3 of 5), each writing its rows of the outputs and final
    states in place; the backward runs them all at once."""
    share_out(True, monkeypatch, split_batch=True)
    shares = []
    parts = _onednn._OneDNN.parts
    monkeypatch.setattr(_onednn._OneDNN, "parts", lambda *a, **kw: shares.append(parts(*a, **kw)) or shares[-1])
    row = bidirectional_row(kind, bidirectional=False, seq_lengths=seq_lengths, backward="remat")
    check_layer_against_torch(row, rng, B=5, LENGTHS=np.array([5, 2, 4, 1, 3]), implementation="onednn")
    halves = [[part.batch for part in share] for share in shares if len(share) == 2]
    assert halves and all(h == [slice(0, 2), slice(2, 5)] for h in halves)
    assert any(share[0].batch == slice(None) for share in shares)  # the backward's


@onednn_platform
def test_onednn_relu_rnn_padding_that_would_overflow_gives_finite_gradients():
    """Past a sequence's end a relu RNN's h would grow 4x a step up to inf, and the weight
    gradients would take inf times the padding's zero gradient: oneDNN's padding sets h to 0,
    and the outputs, h_n and every gradient are the scan's (which holds h there)."""
    params = RecurrentSpec("rnn", 4, 8, nonlinearity="relu").init(jax.random.key(0))
    params = dict(params, weight_hh_l0=4 * jnp.eye(8, dtype=jnp.float32), bias_ih_l0=jnp.ones(8, jnp.float32))
    x, seq_lengths = jnp.full((80, 2, 4), 0.1, jnp.float32), jnp.array([3, 5])

    def loss(params, implementation):
        outputs = F.rnn(params, x, seq_lengths=seq_lengths, nonlinearity="relu", implementation=implementation)
        return sum(o.sum() for o in outputs), outputs

    run = jax.jit(loss, static_argnums=1)  # the loops' own forwards, no gradient taken
    grad = jax.jit(jax.grad(lambda p, implementation: loss(p, implementation)[0]), static_argnums=1)
    for got, want in zip(jax.tree.leaves(run(params, "onednn")[1]), jax.tree.leaves(run(params, "xla")[1])):
        assert np.isfinite(got).all() and np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=1e-5)
    expected = grad(params, "xla")
    for name, got in grad(params, "onednn").items():
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, err_msg=name)


# Max difference of a kernel's bfloat16 from the scan's (oneDNN, measured: outputs and states
# equal for LSTM and RNN, one bfloat16 ulp, 3.9e-3, for GRU; gradients 6.6e-3 to 8.3e-3 of the
# largest). Triton's, not yet measured, is held to the same.
BFLOAT16_BOUNDS = dict(outputs=1e-2, gradients=2e-2)


def check_bfloat16_against_the_scan(kind, implementation, rng, bounds, B=9, hidden_size=8, remat=False, lengths=True,
                                    bidirectional=True):
    """Outputs, final states and every gradient of two layers (bidirectional, with lengths),
    in bfloat16 under `implementation` (with `remat`), against the scan's in bfloat16."""
    spec = RecurrentSpec(kind, 5, hidden_size, num_layers=2, bidirectional=bidirectional)
    params = spec.init(jax.random.key(0))
    x = rng.standard_normal((7, B, 5)).astype(np.float32)
    fn = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}[kind]

    def loss(params, x, implementation):
        seq_lengths = jnp.arange(B) % 7 + 1 if lengths else None
        outputs = fn(params, x, seq_lengths=seq_lengths, dtype=jnp.bfloat16, implementation=implementation,
                     remat=remat if implementation != "xla" else False)
        return sum(jnp.sum(a.astype(jnp.float32) ** 2) for a in jax.tree.leaves(outputs)), outputs

    run = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (grads, outputs), (want_grads, want_outputs) = run(params, x, implementation), run(params, x, "xla")
    for got, want in zip(jax.tree.leaves(outputs), jax.tree.leaves(want_outputs)):
        assert got.dtype == jnp.bfloat16
        assert np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)).max() <= bounds["outputs"]
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        assert np.abs(got - want).max() <= bounds["gradients"] * np.abs(want).max()


@onednn_platform
@pytest.mark.parametrize(
    "kind, remat, lengths",
    [("lstm", False, True), ("gru", False, True), ("rnn", False, True), ("lstm", 3, True), ("gru", 3, True),
     ("lstm", False, False), ("gru", False, False)],
)
def test_onednn_bfloat16_matches_the_scan(kind, remat, lengths, rng):
    """bfloat16 in oneDNN is the scan's mixed precision: bfloat16 matmuls into float32, float32
    gate math and LSTM's c. It rounds h to bfloat16 between steps, as the scan does for its
    matmul (a GRU's h, which the scan keeps in float32, too). With `remat`, the gradients
    cross the chunks and add up in float32."""
    check_bfloat16_against_the_scan(kind, "onednn", rng, BFLOAT16_BOUNDS, remat=remat, lengths=lengths)


@onednn_platform
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_onednn_bfloat16_inference_in_two_halves_matches_the_scan(kind, rng, monkeypatch):
    """`remat`'s forward runs a one-way layer's sequences in two halves (4 and 5 of 9), each on
    its views of the bfloat16 bits of x, y and h and of LSTM's float32 c."""
    share_out(True, monkeypatch, split_batch=True)
    check_bfloat16_against_the_scan(kind, "onednn", rng, BFLOAT16_BOUNDS, remat=3, bidirectional=False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pallas_bfloat16_matches_the_scan(kind, rng):
    """The kernel runs the scan's step, mixed precision included: in the interpreter it equals
    the scan (measured: bit for bit); Triton's own dot may round differently."""
    if BACKEND == "gpu":  # Triton: power-of-two sizes, dots of 16 rows at least
        check_bfloat16_against_the_scan(kind, "pallas", rng, BFLOAT16_BOUNDS, B=16, hidden_size=16)
    else:
        check_bfloat16_against_the_scan(kind, "pallas", rng, dict(outputs=0, gradients=0))


@onednn_platform
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onednn_forward_serves_any_number_of_backwards(bidirectional):
    """A backward takes its forward's workspace and gives it back to the pool; a second
    backward of the same forward (a vjp called again) runs the forward again, for the same
    gradients (bidirectional: each direction's, side by side)."""
    params, x, width = _lstm_params(bidirectional=bidirectional), X, 16 if bidirectional else 8
    _, vjp = jax.vjp(lambda p: F.lstm(p, x, implementation="onednn")[0], params)
    cotangent = jnp.linspace(-1, 1, 3 * 2 * width, dtype=jnp.float32).reshape(3, 2, width)
    first, second = (jax.block_until_ready(vjp(cotangent)) for _ in range(2))
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert not _onednn._onednn().workspaces


@onednn_platform
def test_onednn_merged_forwards_give_every_backward_its_gradients():
    """The host calls declare no side effect, so XLA merges the identical forwards of a jitted
    function called twice on the same input; their two backwards still get the scan's
    gradients."""
    apply = jax.jit(lambda p, implementation: F.lstm(p, X, implementation=implementation)[0], static_argnums=1)

    def loss(params, implementation):
        return apply(params, implementation).sum() + (apply(params, implementation) ** 2).mean()

    params = _lstm_params()
    merged = jax.jit(jax.grad(loss), static_argnums=1)
    expected = jax.grad(loss)(params, "xla")
    jax.tree.map(assert_close, merged(params, "onednn"), expected)


@onednn_platform
def test_onednn_runs_under_jax_checkpoint():
    """`jax.checkpoint` runs the forward again in the backward: the scan's gradients, and no
    workspace held after."""
    params = _lstm_params(bidirectional=True)
    x = jnp.linspace(-1, 1, X.size, dtype=jnp.float32).reshape(X.shape)

    def grad(implementation):
        return jax.jit(jax.grad(jax.checkpoint(lambda p: (F.lstm(p, x, implementation=implementation)[0] ** 2).sum())))

    got, expected = grad("onednn")(params), grad("xla")(params)
    jax.tree.map(assert_close, got, expected)
    assert not _onednn._onednn().workspaces


@onednn_platform
def test_onednn_holds_bounded_workspaces_when_backwards_never_run(monkeypatch):
    """A backward whose results go unused is dropped by XLA, and its forward's workspace would
    stay held: beyond POOL_BYTES the oldest are let go, and a backward that finds its workspace
    gone runs the forward again."""
    params = _lstm_params()
    workspace_bytes = workspace_size(3, _onednn._LEFT2RIGHT)
    monkeypatch.setattr(_onednn, "POOL_BYTES", 2 * workspace_bytes)
    dnn = _onednn._onednn()
    dnn.workspaces.clear()
    # Only the output is used: the backward, whose gradient is dropped, goes with it.
    dropped = jax.jit(lambda p: jax.value_and_grad(lambda p: F.lstm(p, X, implementation="onednn")[0].sum())(p)[0])
    _, vjp = jax.vjp(lambda p: F.lstm(p, X, implementation="onednn")[0], params)  # held first, let go
    for _ in range(4):
        jax.block_until_ready(dropped(params))
    assert dnn.held_bytes() <= 2 * workspace_bytes
    expected = jax.vjp(lambda p: F.lstm(p, X)[0], params)[1](jnp.ones((3, 2, 8), jnp.float32))
    got = vjp(jnp.ones((3, 2, 8), jnp.float32))
    jax.tree.map(assert_close, got, expected)
    dnn.workspaces.clear()


@onednn_platform
@pytest.mark.parametrize("side_by_side", [False, True])
def test_onednn_workspaces_are_reused(side_by_side, monkeypatch):
    """Each backward gives its forward's workspaces back, and the next forward takes them
    again: a bidirectional layer without lengths is one host call, whose workspace is that of
    both directions in one oneDNN call, or one of each direction run side by side (with a
    buffer for the second direction's gradient of x)."""
    share_out(side_by_side, monkeypatch)
    grad = jax.jit(jax.grad(lambda p: F.lstm(p, X, implementation="onednn")[0].sum()))
    params = _lstm_params(bidirectional=True)
    dnn = _onednn._onednn()
    dnn.free.clear()  # what earlier tests of the same sizes gave back
    for _ in range(3):
        jax.block_until_ready(grad(params))
    if side_by_side:
        expected = [X.nbytes, workspace_size(3, _onednn._LEFT2RIGHT), workspace_size(3, _onednn._RIGHT2LEFT)]
    else:
        expected = [workspace_size(3, _onednn._CONCAT)]
    assert not dnn.workspaces and sorted(w.nbytes for w in dnn.free) == sorted(expected)


@onednn_platform
def test_onednn_pair_of_workers_runs_on_two_halves_of_the_cpus():
    """Each worker of the pair, and the OpenMP team it starts, keeps to its own half of the
    process's CPUs, so that the two never share one core."""
    dnn = _onednn._onednn()
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or not dnn.pair:
        pytest.skip("the pair of workers needs two CPUs")
    halves = [w.executor.submit(os.sched_getaffinity, 0).result() for w in dnn.pair]
    assert halves[0] | halves[1] == cpus and not halves[0] & halves[1]
    assert abs(len(halves[0]) - len(halves[1])) <= 1


@onednn_platform
@pytest.mark.parametrize(
    "D, B, H, shared_input, training, share",
    [
        (2, 64, 512, True, False, "pair"),  # 2^26 a step: side by side
        (2, 64, 512, False, True, "pair"),
        (2, 128, 512, True, False, "one call"),  # past SIDE_BY_SIDE_MAX_STEP
        (2, 128, 512, False, False, "in turn"),
        (1, 32, 128, False, False, "halves"),
        (1, 32, 128, False, True, "whole"),  # training runs the whole batch
        (1, 64, 256, False, False, "whole"),  # past SPLIT_MAX_STEP
        (1, 8, 128, False, False, "whole"),  # below SPLIT_MIN_BATCH
    ],
)
def test_onednn_shares_a_call_out_by_the_size_of_its_step(D, B, H, shared_input, training, share):
    dnn = _onednn._onednn()
    if not dnn.pair:
        pytest.skip("the pair of workers needs two cores")
    parts = dnn.parts("lstm", D, B, H, shared_input, training)
    workers = [part.worker for part in parts]
    got = {
        (dnn.pair[0], dnn.pair[1]): "halves" if D == 1 else "pair",
        (dnn.worker,): "one call" if D == 2 else "whole",
        (dnn.worker, dnn.worker): "in turn",
    }[tuple(workers)]
    assert got == share


@onednn_platform
def test_onednn_worker_runs_where_its_cpus_cannot_be_set(monkeypatch):
    def refuse(*_):
        raise PermissionError("not in this sandbox")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    worker = _onednn._Worker(_onednn._onednn(), 1, frozenset({0}))
    try:
        assert worker.executor.submit(lambda: "ran").result() == "ran"
    finally:
        worker.executor.shutdown()


@onednn_platform
@pytest.mark.parametrize("kept", [True, False])
def test_onednn_inference_packs_weights_again_only_when_they_change(kept, monkeypatch):
    """Inference keeps the weights it packed while their bytes stay the same: two layers of one
    shape (one reorder) are told apart by their bytes, and a weight changed in one element is
    packed afresh. With nothing kept (PACKED_BYTES 0), every call packs all four. Every output
    is the scan's."""
    dnn = _onednn._onednn()
    monkeypatch.setattr(dnn.worker, "kept", [])
    if not kept:
        monkeypatch.setattr(_onednn, "PACKED_BYTES", 0)
    reorders = []
    execute = _onednn._Worker.execute

    def counted(worker, pd, prim, arrays):
        reorders.append(arrays.keys() == {_onednn.SRC, _onednn.DST})
        execute(worker, pd, prim, arrays)

    monkeypatch.setattr(_onednn._Worker, "execute", counted)
    x = jax.random.normal(jax.random.key(1), (3, 2, 8), jnp.float32)
    forward = {i: jax.jit(lambda p, i=i: F.lstm(p, x, implementation=i)[0]) for i in ("onednn", "xla")}
    params = RecurrentSpec("lstm", 8, 8, num_layers=2).init(jax.random.key(0), jnp.float32)
    changed = params | {"weight_hh_l1": params["weight_hh_l1"].at[5, 3].add(0.5)}
    packed = []
    for p in (params, params, changed, params):
        reorders.clear()
        got = forward["onednn"](p)
        packed.append(sum(reorders))
        assert_close(got, forward["xla"](p))
    assert packed == ([4, 0, 1, 0] if kept else [4] * 4)
    assert not np.allclose(forward["onednn"](changed), forward["onednn"](params))


@onednn_platform
def test_onednn_remat_holds_one_chunk_of_workspace_and_serves_every_backward():
    """With `remat`, each backward runs oneDNN's training forward again a chunk at a time, so
    only chunk-sized workspaces are made, none is held after it, and a vjp runs any number of
    times."""
    params, x = _lstm_params(), jnp.ones((7, 2, 4), jnp.float32)  # chunks of 3, 3 and 1 steps
    dnn = _onednn._onednn()
    dnn.free.clear()
    _, vjp = jax.vjp(lambda p: F.lstm(p, x, implementation="onednn", remat=3)[0], params)
    first, second = (jax.block_until_ready(vjp(jnp.ones((7, 2, 8), jnp.float32))) for _ in range(2))
    jax.tree.map(np.testing.assert_array_equal, first, second)
    chunk_sizes = {workspace_size(t, _onednn._LEFT2RIGHT) for t in (3, 1)}
    assert not dnn.workspaces and {w.nbytes for w in dnn.free} == chunk_sizes


@onednn_platform
def test_onednn_vmaps_one_call_per_member():
    """Under `vmap` the host calls run once per batch member: the numbers of separate calls (up to
    XLA's order of summation), outputs and gradients, with the weights batched too."""
    params = RecurrentSpec("gru", 4, 8, bidirectional=True).init(jax.random.key(0), jnp.float32)
    params = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)
    xs = jax.random.normal(jax.random.key(1), (2, 3, 2, 4), jnp.float32)

    def loss(p, x):
        output, h_n = F.gru(p, x, implementation="onednn")
        return output.sum() + (h_n**2).sum()

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    batched = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))(params, xs)
    separate = [value_and_grad(jax.tree.map(lambda a, i=i: a[i], params), xs[i]) for i in range(2)]
    for got, *want in zip(jax.tree.leaves(batched), *map(jax.tree.leaves, separate)):
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-6, atol=1e-6)


@onednn_platform
@pytest.mark.parametrize(
    "kind, batch, options, runs_onednn",
    [
        ("lstm", 8, {}, True),
        ("gru", 8, {}, True),
        ("lstm", 8, dict(dtype=jnp.bfloat16), True),
        ("lstm", 2, {}, False),  # too few sequences to share a step out
        ("rnn", 8, {}, False),  # too narrow (hidden_size 192)
        ("lstm", 8, dict(seq_lengths=np.full(8, 3)), True),  # the padded length counts
        ("lstm", 8, dict(remat=True), True),
        ("gru", 8, dict(fused_backward=False), False),
    ],
)
def test_auto_runs_onednn_where_it_measured_faster(kind, batch, options, runs_onednn):
    params = RecurrentSpec(kind, 4, 192).init(jax.random.key(0), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (32, batch, 4), jnp.float32)
    fn = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}[kind]
    jaxpr = str(jax.make_jaxpr(lambda p, x: fn(p, x, implementation="auto", **options))(params, x))
    assert ("buffer_callback" in jaxpr) == runs_onednn
    got, expected = (
        jax.jit(lambda p, x, implementation=implementation: fn(p, x, implementation=implementation, **options))(params, x)
        for implementation in ("auto", "onednn" if runs_onednn else "xla")
    )
    for actual, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(actual, want)


@onednn_platform
def test_auto_chooses_with_and_without_a_gradient_apart():
    """Over 12 steps oneDNN's forward alone is too short to gain, its forward and backward not:
    "auto" runs the scan where no gradient is taken and oneDNN's training calls where one is."""
    params = RecurrentSpec("lstm", 4, 192).init(jax.random.key(0), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (12, 8, 4), jnp.float32)

    def forward(p, x, implementation):
        return F.lstm(p, x, implementation=implementation)

    def loss(p, x, implementation):
        return sum((a**2).sum() for a in jax.tree.leaves(forward(p, x, implementation)))

    grad = jax.grad(loss, argnums=(0, 1))
    assert "buffer_callback" not in str(jax.make_jaxpr(functools.partial(forward, implementation="auto"))(params, x))
    assert "buffer_callback" in str(jax.make_jaxpr(functools.partial(grad, implementation="auto"))(params, x))
    for fn, picked in ((forward, "xla"), (grad, "onednn")):
        got, expected = (jax.jit(fn, static_argnums=2)(params, x, i) for i in ("auto", picked))
        for actual, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(actual, want)


@onednn_platform
@pytest.mark.parametrize(
    "kind, hidden_size, steps, training, runs_onednn",
    [
        ("rnn", 128, 100, False, False),  # RNN layers: wide ones only
        ("rnn", 128, 100, True, False),
        ("rnn", 256, 100, False, True),
        ("lstm", 192, 31, False, False),  # short sequences: the scan
        ("lstm", 192, 32, False, True),
        ("gru", 128, 42, False, False),  # too little work: 42 * 8 * 3 * 128 * 128 multiply-adds < 2^24
        ("gru", 128, 43, False, True),
        ("lstm", 64, 127, False, False),
        ("lstm", 64, 128, False, True),  # 128 * 8 * 4 * 64 * 64 = 2^24
        ("lstm", 255, 8, False, False),
        ("lstm", 256, 8, False, True),  # a wide LSTM or GRU from 8 steps
        ("gru", 256, 8, False, False),  # 8 * 8 * 3 * 256 * 256 < 2^24
        ("gru", 256, 11, False, True),
        ("lstm", 256, 7, False, False),
        ("lstm", 256, 4, True, True),  # under a gradient from 4 steps
        ("lstm", 256, 3, True, False),
        ("lstm", 128, 15, True, False),  # an LSTM from 2^23 multiply-adds
        ("lstm", 128, 16, True, True),
        ("gru", 128, 42, True, False),  # the others from 2^24
        ("gru", 128, 43, True, True),
    ],
)
def test_auto_prefers_onednn_for_wide_layers_and_long_enough_sequences(kind, hidden_size, steps, training, runs_onednn):
    assert _onednn.preferred(RecurrentSpec(kind, 4, hidden_size), jnp.float32, 8, steps, training) == runs_onednn


@onednn_platform
def test_onednn_is_set_up_once_under_concurrent_first_calls():
    """XLA may make its first host calls at once; they must share one engine (and lock)."""
    _onednn._instance.cache_clear()
    _onednn._primitives.cache_clear()  # made on the engine just dropped
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        instances = list(pool.map(lambda _: _onednn._onednn(), range(8)))
    assert all(instance is instances[0] for instance in instances)


def test_onednn_missing_package_is_named(monkeypatch):
    def missing(name):
        raise _onednn.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_onednn.metadata, "distribution", missing)
    with pytest.raises(ValueError, match=r"pip install 'jaxrnn\[onednn\]'"):
        _onednn._OneDNN()


def _lstm_params(**kw):
    return RecurrentSpec("lstm", 4, 8, **kw).init(jax.random.key(0), jnp.float32)


X = jnp.ones((3, 2, 4), jnp.float32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(implementation="cuda"), "implementation must be one of"),
        (dict(implementation="pallas", fused_backward=False), "fused_backward=False needs 'xla'"),
        (dict(implementation="cudnn", remat=True), "remat needs 'xla', 'pallas' or 'onednn'"),
        (dict(implementation="onednn", fused_backward=False), "fused_backward=False needs 'xla'"),
        (dict(implementation="onednn", dtype=jnp.float64), r"'onednn' does not support .*dtype float64 \(float32 and bfloat16 only\)"),
    ],
)
def test_bad_implementation_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.lstm(_lstm_params(), X, **kwargs)


def test_onednn_refuses_proj_size():
    with pytest.raises(ValueError, match=r"'onednn' does not support proj_size=2; use implementation='xla'"):
        F.lstm(_lstm_params(proj_size=2), X, implementation="onednn")


@pytest.mark.skipif(BACKEND == "gpu", reason="a GPU is there")
def test_cudnn_needs_a_cuda_gpu():
    with pytest.raises(ValueError, match="implementation='cudnn' needs a CUDA GPU; the default backend is 'cpu'"):
        F.lstm(_lstm_params(), X, implementation="cudnn")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.gru(RecurrentSpec("gru", 4, 8).init(jax.random.key(0), jnp.float32), X,
                       implementation="cudnn"), "kind 'gru' \\(LSTM only\\)"),
        (lambda: F.lstm(_lstm_params(proj_size=2), X, implementation="cudnn"), "proj_size=2"),
        (lambda: F.lstm(_lstm_params(), X.astype(jnp.float64), implementation="cudnn"),
         "dtype float64 \\(float32 only\\)"),
        (lambda: F.lstm(_lstm_params(num_layers=2), X, dropout=0.5,
                        dropout_key=jax.random.key(1), implementation="cudnn"), "dropout between layers"),
    ],
)
def test_cudnn_refuses_what_it_cannot_run(call, message, monkeypatch):
    monkeypatch.setattr(_cudnn, "lstm_kernel", lambda: reference_lstm)
    with pytest.raises(ValueError, match=f"implementation='cudnn' does not support {message}"):
        call()


@dataclasses.dataclass
class Lowering:
    kind: str
    platform: str
    masked: bool
    batch: int = 16
    proj_size: int = 0


LOWERINGS = [
    Lowering("lstm", "cuda", True),
    Lowering("lstm", "cuda", False, batch=64),
    Lowering("lstm", "cuda", True, proj_size=16),
    Lowering("rnn", "cuda", False),
    Lowering("gru", "cuda", True),
    Lowering("gru", "tpu", True),
    Lowering("lstm", "tpu", False),
]


@pytest.mark.parametrize("case", LOWERINGS, ids=lambda c: f"{c.kind}-{c.platform}-masked{c.masked}-B{c.batch}-P{c.proj_size}")
def test_pallas_kernel_lowers_for_accelerators(case, monkeypatch):
    """The forward and backward of a bidirectional layer, lowered as for a GPU or TPU: one kernel
    each way."""
    monkeypatch.setattr(_pallas, "_backend", lambda: {"cuda": "gpu"}.get(case.platform, case.platform))
    spec = RecurrentSpec(case.kind, 16, 32, bidirectional=True, proj_size=case.proj_size)
    params = spec.init(jax.random.key(0), jnp.float32)
    x = jnp.ones((6, case.batch, 16), jnp.float32)
    lengths = jnp.full((case.batch,), 4, jnp.int32) if case.masked else None
    fn = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}[case.kind]

    def loss(params, x):
        return fn(params, x, seq_lengths=lengths, implementation="pallas")[0].sum()

    kernels = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}[case.platform]
    exported = jax.export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1))),
        platforms=[case.platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(kernels)],
    )(params, x)
    assert exported.mlir_module().count(kernels) == 2


def test_pallas_on_gpu_refuses_sizes_triton_cannot_compile(monkeypatch):
    monkeypatch.setattr(_pallas, "_backend", lambda: "gpu")
    params = RecurrentSpec("lstm", 16, 12).init(jax.random.key(0), jnp.float32)
    with pytest.raises(ValueError, match="power-of-two sizes; got gates \\* hidden_size 48, state\\[0\\] features 12"):
        jax.eval_shape(lambda p, x: F.lstm(p, x, implementation="pallas"), params, jnp.ones((6, 16, 16), jnp.float32))


def test_modules_take_the_implementation(rng):
    x = jnp.asarray(rng.standard_normal((5, 2, 3)), jnp.float32)
    model = jaxrnn.LSTM(3, 8, implementation="pallas")  # sizes Triton compiles on GPU
    variables = model.init(jax.random.key(0), x)
    output, state = model.apply(variables, x)
    expected, expected_state = F.lstm(variables["params"], x)
    np.testing.assert_allclose(output, expected, atol=1e-6)
    for actual, want in zip(state, expected_state):
        np.testing.assert_allclose(actual, want, atol=1e-6)

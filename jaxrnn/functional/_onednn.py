"""oneDNN's fused RNN primitives on the CPU: `implementation="onednn"`.

These are the kernels torch's own CPU LSTM runs. XLA:CPU runs each step of a `lax.scan` on one
core; oneDNN spreads every step over all of them, which is where torch's CPU LSTM gets its
speed. Each layer is one host call into oneDNN's C API (through ctypes, so nothing is compiled
at install time), of both directions where it has two: where a step is small, side by side on
half of the cores each (and in inference, a one-way layer's sequences in two halves), else one
after the other on all of them, or as one oneDNN call where both read the same input
(`_OneDNN.parts`):

- forward inference when no gradient is taken;
- under differentiation, forward training, whose workspace (every step's gates and states) stays
  on the host side: at 20-40x the size of the outputs (30-120 MB in the benchmark's rows), an
  XLA buffer for it would be faulted in afresh every call. The backward call takes it by a
  handle the forward returned and gives it back to a pool for reuse.

A forward taken under differentiation keeps its workspace until its backward runs. Backwards
that never run (a `jax.vjp` never called, gradients that nothing uses) leave theirs held, up to
POOL_BYTES in all: beyond, the oldest are let go. A backward whose workspace is gone (let go,
or used by an earlier backward of the same forward) runs the forward again. With `remat`, the
forward runs inference a chunk at a time and keeps the states between chunks, and the backward
runs training's forward and the backward chunk by chunk (`_rnn_remat`): a chunk's
workspace at a time, none held between calls. Under `vmap` the host calls run once per batch
member, and `jax.checkpoint` runs the forward again in the backward. Forward-mode
differentiation and `jax.export` do not go through host calls; use "xla" there.

The host calls work on XLA's own buffers (`buffer_callback`): the outputs are written in place
and nothing is copied either way. The weights go in torch's own layout, `(G*H, I)` (oneDNN's
`ldgoi`), and their gradients come back in it: the forward reorders them into its own layout
on the host (inference keeps them so while they stay the same), the backward takes them as they
are and reorders its gradients from oneDNN's `ldigo`. In bfloat16, x, y, h and the weights are
bfloat16 and c, the bias and every gradient float32: the scan's mixed precision (its LSTM and
RNN outputs come out equal). GRU is oneDNN's linear-before-reset GRU, torch's formulation, with the
gates in oneDNN's order (update, reset, candidate). Needs the `onednn-cpu-gomp` package
(`pip install "jaxrnn[onednn]"`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import functools
import itertools
import os
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from ._recurrence import read_off_padding, zeroed_padding
from ._spec import RecurrentSpec

DISTRIBUTION = "onednn-cpu-gomp"
POOL_BYTES = 2**30
# Inference keeps the weights it packed, each with a copy of its bytes, and packs them again
# only when those change (`_Worker.pack`), for weights of up to KEEP_PACKED_MAX_BYTES and up to
# PACKED_BYTES a worker in all. Comparing 256 KB takes 6 us, packing it 60-140 with its call.
# Kept at 1 MB (LSTM H=256) and beyond, the kernel ran slower by about what that saved. In
# A/Bs in one process (against packing every call, medians of 30 turns): LSTM B=32, H=128
# 0.95x at T=32, 0.98-0.99x at T=100; GRU B=32, T=100, H=128 0.96-0.98x; kept at 1 MB, LSTM
# B=8, T=8, H=256 1.03-1.05x, at T=500 0.97-0.99x; B=64, T=50, H=512 1.00x.
KEEP_PACKED_MAX_BYTES = 2**19
PACKED_BYTES = 2**25
# Where a step (`h @ W_hh^T`) is small, too small to share out over the cores without their
# waiting at its barriers, a layer's call runs on the pair of workers, each on half of the
# cores: a bidirectional layer's two directions side by side, up to SIDE_BY_SIDE_MAX_STEP
# multiply-adds a step, and in inference a one-way layer's sequences in two halves, up to
# SPLIT_MAX_STEP, if it has SPLIT_MIN_BATCH or more. On 2 cores, with the pair on its own halves
# of the CPUs (`_halves`), the directions side by side took 0.94-0.99x the time of one call on
# all cores, forward and forward+backward, from LSTM, GRU and RNN B=32, H=256 to B=64, H=512
# (2^26, the largest step measured), and 0.84-0.91x that of the two one after the other with
# `seq_lengths` (LSTM B=64, H=256; GRU B=32, H=512). The sequences in halves took 0.85-0.99x
# the forward on all cores from B=16 to 64 (1.01 at LSTM B=64, H=128 and B=32, H=256), but
# beyond 2^23 1.02-1.20x (LSTM B=64, H=256 to B=64, H=512; RNN B=64, H=512 1.07; GRU B=64,
# H=256 0.99), 1.04-1.08x for LSTM and RNN at B=4 and 8 (B=8 pinned: LSTM H=256 1.35, GRU
# 1.08-1.10, RNN 1.01-1.13), and 0.95-1.17x forward+backward at B=16 and 32 (median 1.07), so
# a training forward runs on all cores. The figures are in docs/implementations.md.
SIDE_BY_SIDE_MAX_STEP = 2**26
SPLIT_MAX_STEP = 2**23
SPLIT_MIN_BATCH = 16
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
GRU_ORDER = (1, 0, 2)  # torch's (reset, update, candidate) as oneDNN's (update, reset, candidate)

# From oneDNN 3.2's dnnl_types.h.
_BF16, _F32, _ANY, _TNC, _LDNC, _LDIGO, _LDGOI, _LDGO = 2, 3, 1, 4, 5, 6, 31, 5
# oneDNN's type of x, y, h and the weights, by jax dtype; c, the bias and all gradients are float32.
DATA_TYPES = {"float32": _F32, "bfloat16": _BF16}
_FORWARD_TRAINING, _FORWARD_INFERENCE, _BACKWARD = 64, 96, 128
_CPU, _IN_ORDER = 1, 1
_LEFT2RIGHT, _RIGHT2LEFT, _CONCAT = 1, 2, 3  # oneDNN's directions (bidirectional_concat: both)
_DIRECTIONS = {1: _LEFT2RIGHT, 2: _CONCAT}  # by number of directions
_ACTIVATION = {"tanh": 33, "relu": 32}
_QUERY_ARG, _SCRATCHPAD_USER = 255, 1  # dnnl_query_exec_arg_md: any argument's, by id
_DIFF_WEIGHTS_OVERWRITE = 1
# Execution argument ids; the gradient of argument `a` is `a + DIFF`.
SRC, SRC_ITER, SRC_ITER_C, DST, DST_ITER, DST_ITER_C = 1, 2, 3, 17, 18, 19
W_LAYER, W_ITER, BIAS, WORKSPACE, SCRATCHPAD, DIFF = 33, 34, 41, 64, 80, 128


def _unsupported(spec: RecurrentSpec, dtype) -> list[str]:
    """What of a call oneDNN cannot run, in words; empty if it can."""
    dtype = jnp.dtype(dtype).name
    reasons = [
        f"the {jax.default_backend()!r} backend (CPU only)" if jax.default_backend() != "cpu" else None,
        f"dtype {dtype} (float32 and bfloat16 only)" if dtype not in DATA_TYPES else None,
        f"proj_size={spec.proj_size}" if spec.proj_size else None,
    ]
    return [r for r in reasons if r]


# Where oneDNN measured faster than the scan on the 2-core benchmark machine (float32 and
# bfloat16): layers of this many sequences or more, and RNN layers this wide or wider. Below,
# a step is too small to share out over the cores. RNN, oneDNN's time over the scan's: B=8,
# H=256 0.89-1.00x forward and 0.80-0.90x forward+backward in eight float32 runs, 0.72-1.04x
# and 0.89-1.06x in four bfloat16 runs; B=64, H=512 0.80-0.97x and 0.78-0.89x in float32,
# 0.65-0.76x and 0.76-0.83x in the latest two bfloat16 runs. At B=32, H=128 it is mixed:
# 0.73-1.10x in float32 but 1.04-1.19x in bfloat16, and 1.04-1.23x with `seq_lengths` under
# differentiation in both.
PREFERRED_MIN_BATCH = 8
PREFERRED_WIDE_HIDDEN = 256
# oneDNN's call costs 0.2-0.5 ms more than the scan's at any length (the hand-offs, the weights'
# reorders), which a short sequence does not make up, and a small step gains little from the
# second core. oneDNN's time over the scan's at 4, 8, 16 and 32 steps, forward, in four
# sweeps (the last three by `benchmarks/auto_steps.py`): LSTM B=32, H=128 1.29-2.01, 0.89-1.41,
# 0.89-1.23 (1.14 and 1.23 in the last two), 0.71-1.10; GRU B=32, H=128 1.93-2.40, 1.39-1.69,
# 1.11-1.18, 0.97-1.04 (the last two); RNN B=32, H=256 1.59-2.98, 1.33-1.66, 0.89-1.70, 0.84-1.08.
# Small steps lose for longer: LSTM B=8, H=64 1.23-1.41 at 32 steps, 0.95-0.97 at 100; GRU
# B=8, H=64 1.07-1.29 at 100. So without a gradient oneDNN takes layers of 32 steps or more
# whose recurrent matmuls (`T * B * gates * H * H`) add up to 2^24 multiply-adds or more; a
# wide LSTM or GRU gains from 8 steps (LSTM 0.65-1.07, B=8 and 32, H=256 and 512; GRU B=8,
# H=256 0.82-0.97 at 8 steps and 0.71-0.79 at 16 in the last two sweeps; RNN B=8, H=256 1.07-1.59
# at 8). Since the pair of workers keeps to its halves of the CPUs (`_halves`), B=32 gains from
# 16 steps: LSTM H=128 0.79-0.88, GRU H=128 0.81-0.96, RNN H=256 0.96-1.07 in three sweeps, but
# LSTM B=16, H=128 1.13-1.15 in two; the bound stays at 32 until more sweeps settle it.
PREFERRED_MIN_STEPS = 32
PREFERRED_MIN_STEPS_WIDE = 8
PREFERRED_MIN_WORK = 2**24
# Under a gradient the scan loses more to oneDNN than in its forward alone, so oneDNN gains
# from shorter sequences. Forward+backward in the last two sweeps, at 4, 8, 16 and 32 steps:
# LSTM B=32, H=128 0.70-0.85, 0.68-0.70, 0.48-0.56, 0.67-0.76; LSTM B=8, H=128 at 8 and 16
# 1.12-1.42 and 0.69-0.81; RNN B=32, H=256 0.90-0.97, 0.71-0.78, 0.60-0.70, 0.54-0.73; GRU B=32,
# H=128 1.01-1.41, 0.95-1.12, 0.60-0.70, 0.62-0.69. A small LSTM step gains over 100 steps
# (B=32, H=32 0.75 in both; B=8, H=64 0.77-1.11), a small GRU step does not (B=32, H=32
# 1.06-1.13; B=8, H=64 1.06-1.16), nor RNN B=8, H=256 over 16 steps (1.05-1.09). So under a
# gradient oneDNN takes layers of 4 steps or more with 2^24 multiply-adds or more, an LSTM
# with 2^23.
PREFERRED_MIN_STEPS_TRAINING = 4
PREFERRED_MIN_WORK_TRAINING_LSTM = 2**23


def preferred(spec: RecurrentSpec, dtype, batch: int, steps: int, training: bool) -> bool:
    """Whether `implementation="auto"` runs oneDNN, without a gradient or (`training`) under one:
    where it is installed, supports the call and measured faster than the scan. LSTM and GRU
    layers of 8 sequences or more, RNN layers too where `hidden_size` is 256 or more, with 2^24
    multiply-adds or more in the recurrent matmuls; without a gradient over 32 steps or more
    (an LSTM or GRU of `hidden_size` 256 or more: 8), under one over 4 or more (an LSTM from 2^23
    multiply-adds)."""
    H = spec.hidden_size
    wide = H >= PREFERRED_WIDE_HIDDEN
    min_work = PREFERRED_MIN_WORK
    if training:
        min_steps = PREFERRED_MIN_STEPS_TRAINING
        min_work = PREFERRED_MIN_WORK_TRAINING_LSTM if spec.kind == "lstm" else min_work
    else:
        min_steps = PREFERRED_MIN_STEPS_WIDE if spec.kind != "rnn" and wide else PREFERRED_MIN_STEPS
    fits = (spec.kind != "rnn" or wide) and batch >= PREFERRED_MIN_BATCH and steps >= min_steps
    fits = fits and steps * batch * GATES[spec.kind] * H * H >= min_work
    return fits and not _unsupported(spec, dtype) and _distribution() is not None


def _distribution() -> metadata.Distribution | None:
    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_supported(spec: RecurrentSpec, dtype) -> None:
    reasons = _unsupported(spec, dtype)
    if reasons:
        raise ValueError(f"implementation='onednn' does not support {', '.join(reasons)}; use implementation='xla'")


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Worker:
    """A thread that runs oneDNN with `threads` OpenMP threads, with its own stream and buffers
    (the scratchpad, the packed weights): two workers run primitives at once, each on its own.

    XLA calls back from any of its threads, each of which would get an OpenMP team of its own,
    and with more OpenMP threads than cores OpenMP stops spinning at its barriers (an LSTM step
    has several): 21 ms instead of 9 for an LSTM forward at B=32, T=100, H=128. So oneDNN runs
    only on workers, those of one host call at a time, whose threads add up to the cores; the
    call hands each its whole part of the work at once (`_OneDNN.run`).
    """

    def __init__(self, dnn: _OneDNN, threads: int, cpus: frozenset[int] | None = None):
        self.dnn, self.threads = dnn, threads
        self.stream = ctypes.c_void_p()
        dnn.check(dnn.lib.dnnl_stream_create(ctypes.byref(self.stream), dnn.engine, _IN_ORDER))
        self.scratchpad = _empty(0)
        self.packs: dict[int, np.ndarray] = {}  # argument id -> buffer of packed weights
        self.kept: list[_Packed] = []  # inference's packed weights, the latest used last (`pack`)
        # The primitives a worker makes are made for its number of threads (`_primitives`).
        self.executor = concurrent.futures.ThreadPoolExecutor(
            1, "onednn", initializer=self._start, initargs=(cpus,))

    def _start(self, cpus: frozenset[int] | None) -> None:
        """Set up the worker's thread: its OpenMP threads, and the CPUs it and they run on."""
        if cpus is not None:
            # This thread's CPUs, which its OpenMP team inherits. Where the system refuses (a
            # sandbox), the worker runs where the scheduler puts it: slower, never wrong.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)
        self.dnn.lib.omp_set_num_threads(self.threads)

    def packed(self, arg: int, nbytes: int) -> np.ndarray:
        """A buffer for packed weights, reused from call to call."""
        if arg not in self.packs or self.packs[arg].nbytes < nbytes:
            self.packs[arg] = _empty(nbytes)
        return self.packs[arg][:nbytes]

    def pack(self, arg: int, reorder, weights: np.ndarray, keep: bool) -> np.ndarray:
        """`weights` (argument `arg`) packed by `reorder` (`_Primitives.packs`). Where `keep`,
        as an earlier call packed the same bytes, else packed now and kept, the oldest let go
        beyond PACKED_BYTES; else into the worker's buffer for `arg`."""
        pd, prim = reorder
        nbytes = self.dnn.layout(pd, DST)[1]
        if not keep:
            packed = self.packed(arg, nbytes)
            self.execute(pd, prim, {SRC: weights, DST: packed})
            return packed
        for i, kept in enumerate(self.kept):
            if kept.reorder == pd.value and _same_bytes(kept.source, weights):
                self.kept.append(self.kept.pop(i))
                return kept.packed
        packed = _empty(nbytes)
        self.execute(pd, prim, {SRC: weights, DST: packed})
        self.kept.append(_Packed(pd.value, np.copy(weights), packed))
        while sum(k.source.nbytes + k.packed.nbytes for k in self.kept) > PACKED_BYTES:
            self.kept.pop(0)
        return packed

    def execute(self, pd, prim, arrays: dict[int, np.ndarray]) -> None:
        """Run `prim` on `arrays` by execution argument id, each checked against its size (a
        strided view, such as one direction's half of `y`, fits in it)."""
        dnn = self.dnn
        scratchpad = dnn.layout(pd, SCRATCHPAD)[1]
        if self.scratchpad.nbytes < scratchpad:
            self.scratchpad = _empty(scratchpad)
        arrays = arrays | {SCRATCHPAD: self.scratchpad[:scratchpad]}
        memories = []
        try:
            for arg, array in arrays.items():
                md, expected = dnn.layout(pd, arg)
                fits = array.nbytes <= expected if not array.flags.c_contiguous else array.nbytes == expected
                if not fits or array.strides[-1] != array.itemsize:
                    raise RuntimeError(f"oneDNN argument {arg}: {array.nbytes} bytes given, {expected} expected")
                memory = ctypes.c_void_p()
                dnn.check(dnn.lib.dnnl_memory_create(
                    ctypes.byref(memory), md, dnn.engine, ctypes.c_void_p(array.ctypes.data)))
                memories.append(_Arg(arg, memory))
            args = (_Arg * len(memories))(*memories)
            dnn.check(dnn.lib.dnnl_primitive_execute(prim, self.stream, len(memories), args))
            dnn.check(dnn.lib.dnnl_stream_wait(self.stream))
        finally:
            for created in memories:
                dnn.lib.dnnl_memory_destroy(ctypes.c_void_p(created.memory))


class _Packed(NamedTuple):
    """Weights packed for inference (`_Worker.pack`): by the reorder `pd` (its address), from
    a copy of their bytes in torch's layout, `source`."""

    reorder: int
    source: np.ndarray
    packed: np.ndarray


_LIBC = ctypes.CDLL(None)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` and `b`, `a` contiguous, hold the same bytes (`memcmp`: 6 us for 256 KB,
    where numpy's comparisons allocate an array of the elements' results)."""
    if a.shape != b.shape or a.dtype != b.dtype or not b.flags.c_contiguous:
        return False
    return _LIBC.memcmp(ctypes.c_void_p(a.ctypes.data), ctypes.c_void_p(b.ctypes.data), ctypes.c_size_t(a.nbytes)) == 0


class _Part(NamedTuple):
    """What one worker runs of a layer's host call: the layer's directions `directions` and its
    sequences `batch` (slices), in oneDNN's `direction`, on its views of the call's arrays."""

    worker: _Worker
    directions: slice
    direction: int
    batch: slice = slice(None)

    def x(self, x: np.ndarray) -> np.ndarray:
        """`x` (or its gradient) as this part reads it: `(T, B, I)` is every direction's,
        `(T, D, B, I)` holds each direction's own."""
        return x[:, self.batch] if x.ndim == 3 else x[:, self.directions.start, self.batch]

    def y(self, y: np.ndarray, H: int) -> np.ndarray:
        """This part's outputs (or their gradient) in `y`: its directions' columns of `(T, B,
        D * H)` (oneDNN's layout of a bidirectional layer), or its direction's `(T, D, B, H)`."""
        d = self.directions
        return y[:, self.batch, d.start * H : d.stop * H] if y.ndim == 3 else y[:, d.start, self.batch]

    def state(self, state: np.ndarray) -> np.ndarray:
        """This part's directions and sequences of a `(D, B, H)` state (or of its gradient)."""
        return state[self.directions, self.batch]


class _OneDNN:
    """The library, one CPU engine, its workers, the primitives made so far, the workspace pool."""

    def __init__(self):
        distribution = _distribution()
        if distribution is None:
            raise ValueError(
                f"implementation='onednn' needs oneDNN: pip install 'jaxrnn[onednn]' (the {DISTRIBUTION} package)"
            )
        files = distribution.files or []
        path = next(f for f in files if f.name.startswith("libdnnl.so"))
        self.lib = lib = ctypes.CDLL(str(path.locate()))
        lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.engine = ctypes.c_void_p()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), _CPU, ctypes.c_size_t(0)))
        # A scratchpad passed in by the caller: the library's own is per thread, and XLA calls back
        # from whichever thread it likes (a primitive made on one crashed when run on another).
        self.attr = ctypes.c_void_p()
        self.check(lib.dnnl_primitive_attr_create(ctypes.byref(self.attr)))
        self.check(lib.dnnl_primitive_attr_set_scratchpad_mode(self.attr, _SCRATCHPAD_USER))
        # One worker on every core, and a pair of workers on half of them each, which run a
        # bidirectional layer's two directions side by side (`parts`).
        threads = lib.omp_get_max_threads()
        self.worker = _Worker(self, threads)
        self.pair = [_Worker(self, threads // 2, cpus) for cpus in _halves()] if threads >= 2 else []
        self.cores = threading.Lock()  # held by the host call whose workers run (`run`)
        self.layouts: dict[int, dict[int, tuple[ctypes.c_void_p, int]]] = {}  # see `layout`
        self.handles = itertools.count()
        # Workers and XLA's threads take and give back workspaces at once: under this lock.
        self.pool = threading.Lock()
        # handle -> the workspaces of one forward, one per part, oldest first (see `hold`)
        self.workspaces: collections.OrderedDict[int, tuple[np.ndarray, ...]] = collections.OrderedDict()
        # Workspaces a backward gave back, reused by size so that no call faults them in afresh;
        # the oldest go beyond POOL_BYTES (shapes change, and each shape has its size).
        self.free: collections.deque[np.ndarray] = collections.deque()

    def parts(self, kind: str, D: int, B: int, H: int, shared_input: bool, training: bool) -> list[_Part]:
        """How a layer's call of `D` directions is shared out. Where a step is small enough, on
        the pair of workers: two directions side by side (`SIDE_BY_SIDE_MAX_STEP`), or, in
        inference, one direction's sequences in two halves (`SPLIT_MAX_STEP`,
        `SPLIT_MIN_BATCH`). Else on the one worker: as one call where two directions read one
        input (oneDNN's `bidirectional_concat`, the second direction right to left), else one
        after the other (each left to right on an input of its own)."""
        step = B * GATES[kind] * H * H
        if D == 1 and self.pair and step <= SPLIT_MAX_STEP and not training and B >= SPLIT_MIN_BATCH:
            halves = slice(0, B // 2), slice(B // 2, B)
            return [_Part(w, slice(0, 1), _LEFT2RIGHT, batch) for w, batch in zip(self.pair, halves)]
        side_by_side = D == 2 and bool(self.pair) and step <= SIDE_BY_SIDE_MAX_STEP
        if shared_input and not side_by_side:
            return [_Part(self.worker, slice(0, D), _DIRECTIONS[D])]
        workers = self.pair if side_by_side else [self.worker] * D
        directions = (_LEFT2RIGHT, _RIGHT2LEFT) if shared_input else (_LEFT2RIGHT,) * D
        return [_Part(w, slice(d, d + 1), direction) for d, (w, direction) in enumerate(zip(workers, directions))]

    def run(self, fn, parts: list[_Part], *arguments) -> list:
        """`fn(part, *its arguments)` for each part on its worker, all at once (`arguments`:
        lists of one argument per part); their results. Host calls that XLA makes at once run
        one after the other: the workers of one have the cores to themselves."""
        with self.cores:
            futures = [part.worker.executor.submit(fn, part, *args) for part, *args in zip(parts, *arguments)]
            return [future.result() for future in futures]

    def take_workspace(self, nbytes: int) -> np.ndarray:
        with self.pool:
            for i, workspace in enumerate(self.free):
                if workspace.nbytes == nbytes:
                    del self.free[i]  # by position: `remove` would compare arrays by value
                    return workspace
        return _empty(nbytes)

    def hold(self, workspaces: tuple[np.ndarray, ...]) -> int:
        """Keep a forward's workspaces for its backward; returns their handle. A backward may
        never come (XLA drops one whose results go unused), so beyond POOL_BYTES held the oldest
        are let go: a backward that finds its workspaces gone runs the forward again
        (`_host_backward`)."""
        handle = next(self.handles) % 2**31
        with self.pool:
            self.workspaces[handle] = workspaces
            while len(self.workspaces) > 1 and self.held_bytes() > POOL_BYTES:
                self._free(self.workspaces.popitem(last=False)[1])
        return handle

    def held_bytes(self) -> int:
        return sum(w.nbytes for held in self.workspaces.values() for w in held)

    def take_held(self, handle: int) -> tuple[np.ndarray, ...] | None:
        with self.pool:
            return self.workspaces.pop(handle, None)

    def give_back(self, workspace: np.ndarray) -> None:
        with self.pool:
            self._free((workspace,))

    def _free(self, workspaces) -> None:
        self.free.extend(workspaces)
        while sum(w.nbytes for w in self.free) > POOL_BYTES:
            self.free.popleft()

    @staticmethod
    def check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN call failed with status {status}")

    def desc(self, dims, tag, data_type: int = _F32) -> ctypes.c_void_p:
        md = ctypes.c_void_p()
        self.check(self.lib.dnnl_memory_desc_create_with_tag(
            ctypes.byref(md), len(dims), (ctypes.c_int64 * 12)(*dims), data_type, tag))
        return md

    def strided_desc(self, dims, strides, data_type: int = _F32) -> ctypes.c_void_p:
        md = ctypes.c_void_p()
        self.check(self.lib.dnnl_memory_desc_create_with_strides(
            ctypes.byref(md), len(dims), (ctypes.c_int64 * 12)(*dims), data_type, (ctypes.c_int64 * 12)(*strides)))
        return md

    def primitive(self, create, *args) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """`create(&pd, *args)`, then the primitive of that descriptor."""
        pd, prim = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(create(ctypes.byref(pd), *args))
        self.check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd))
        return pd, prim

    def desc_of(self, pd, arg: int) -> ctypes.c_void_p:
        """The memory descriptor of `pd`'s argument `arg` (the workspace and scratchpad too)."""
        return ctypes.c_void_p(self.lib.dnnl_primitive_desc_query_md(pd, _QUERY_ARG, arg))

    def layout(self, pd, arg: int) -> tuple[ctypes.c_void_p, int]:
        """(memory descriptor, bytes) of argument `arg` of `pd`, asked of oneDNN once."""
        layout = self.layouts.setdefault(pd.value, {})
        if arg not in layout:
            md = self.desc_of(pd, arg)
            layout[arg] = md, self.lib.dnnl_memory_desc_get_size(md)
        return layout[arg]


def _halves() -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The CPUs of each worker of the pair: half of this process's each. Woken from one thread,
    the two otherwise often shared one core: an LSTM forward at B=32, T=100, H=128, called
    every 50 ms, took 6.28 ms (both halves of the batch in turn) against 3.52 on halves."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return frozenset(cpus[:half]), frozenset(cpus[half:])


_SETUP = threading.Lock()


def _onednn() -> _OneDNN:
    """The one `_OneDNN` of the process. XLA may make its first two host calls at once (the two
    directions of a layer); without the lock each made an instance with an engine of its own,
    and one ran the other's primitives: "oneDNN call failed with status 2" in 2 of 12
    fresh processes, on the first call of a bidirectional LSTM."""
    with _SETUP:
        return _instance()


@functools.cache
def _instance() -> _OneDNN:
    return _OneDNN()


class _Primitives(NamedTuple):
    """What one layer's host calls run: the forward, the reorders of its weights from torch's
    layout into the forward's, and in training the workspace's size, the backward and the
    reorders of its weight gradients from `ldigo` (the only layout oneDNN writes them in) into
    torch's. A primitive is its `(pd, primitive)`; reorders are by execution argument id."""

    forward: tuple[ctypes.c_void_p, ctypes.c_void_p]
    packs: dict[int, tuple[ctypes.c_void_p, ctypes.c_void_p]]
    workspace_bytes: int
    backward: tuple[ctypes.c_void_p, ctypes.c_void_p] | None
    unpacks: dict[int, tuple[ctypes.c_void_p, ctypes.c_void_p]]


@functools.cache
def _primitives(kind: str, activation: str, T: int, B: int, I: int, H: int, direction: int, training: bool,
                dtype: str, threads: int, x_strides: tuple[int, ...], y_strides: tuple[int, ...]):
    """The `_Primitives` of one direction, or of both with their outputs side by side
    (`direction` `_CONCAT`), made for a worker of `threads` threads, on views of `x` `(T, B, I)`
    and `y` `(T, B, D * H)` of these strides, in elements (`_Part.x`, `_Part.y`).

    `dtype` ("float32" or "bfloat16") is that of x, y, h and the weights; c, the bias and every
    gradient are float32, as torch's bfloat16 LSTM has them for the backward.
    """
    dnn = _onednn()
    lib = dnn.lib
    G, D = GATES[kind], 2 if direction == _CONCAT else 1

    def descs(data_type):
        """(src, h, c, weights by tag, bias, dst) of one data type for x, y, h and the weights."""
        weights = {
            tag: (dnn.desc([1, D, I, G, H], tag, data_type), dnn.desc([1, D, H, G, H], tag, data_type))
            for tag in (_LDIGO, _LDGOI, _ANY)
        }
        h, c = dnn.desc([1, D, B, H], _LDNC, data_type), dnn.desc([1, D, B, H], _LDNC)
        bias = dnn.desc([1, D, G + (kind == "gru"), H], _LDGO)
        src = dnn.strided_desc([T, B, I], x_strides, data_type)
        return src, h, c, weights, bias, dnn.strided_desc([T, B, D * H], y_strides, data_type)

    data, grads = descs(DATA_TYPES[dtype]), descs(_F32)

    def args(tag, *diff):
        """A kind's descriptor arguments: the forward's with weights of layout `tag`, then
        (backward) those of the gradients, with `ldigo` weights."""
        mds = [(*data[:3], data[3][tag], *data[4:]), *[(*d[:3], d[3][_LDIGO], *d[4:]) for d in diff]]
        if kind == "lstm":
            return [a for s, h, c, (wl, wi), b, d in mds for a in (s, h, c, wl, wi, None, None, b, d, h, c)]
        return [a for s, h, _, (wl, wi), b, d in mds for a in (s, h, wl, wi, b, d, h)]

    def reorders(sources, destinations):
        return {arg: dnn.primitive(lib.dnnl_reorder_primitive_desc_create, src, dnn.engine, dst, dnn.engine, dnn.attr)
                for arg, src, dst in zip((W_LAYER, W_ITER), sources, destinations)}

    rnn = (_ACTIVATION[activation],) if kind == "rnn" else ()
    alpha_beta = (ctypes.c_float(0), ctypes.c_float(0)) if kind == "rnn" else ()
    name = {"lstm": "lstm", "gru": "lbr_gru", "rnn": "vanilla_rnn"}[kind]
    # Inference takes the weights in oneDNN's packed layout of choice, training's forward in
    # `ldigo`: both are reordered into from torch's layout, training's each call, inference's
    # when the weights change (`_Worker.pack`). oneDNN's reorders beat XLA's transposes here
    # (256 KB: 0.03-0.05 against 0.06-0.13 ms; 4 MB: 0.5-0.7 against 0.7-1.1), and leave XLA
    # nothing to run around the calls.
    forward = dnn.primitive(
        getattr(lib, f"dnnl_{name}_forward_primitive_desc_create"), dnn.engine,
        _FORWARD_TRAINING if training else _FORWARD_INFERENCE, *rnn, direction,
        *args(_LDIGO if training else _ANY), 0, *alpha_beta, dnn.attr,
    )
    packs = reorders(data[3][_LDGOI], [dnn.desc_of(forward[0], arg) for arg in (W_LAYER, W_ITER)])
    if not training:
        return _Primitives(forward, packs, 0, None, {})
    # The backward takes the weights in torch's layout as they come.
    backward = dnn.primitive(
        getattr(lib, f"dnnl_{name}_backward_primitive_desc_create"), dnn.engine,
        _BACKWARD, *rnn, direction, *args(_LDGOI, grads),
        _DIFF_WEIGHTS_OVERWRITE, *alpha_beta, forward[0], dnn.attr,
    )
    unpacks = reorders(grads[3][_LDIGO], grads[3][_LDGOI])
    return _Primitives(forward, packs, dnn.layout(forward[0], WORKSPACE)[1], backward, unpacks)


def _run_forward(worker: _Worker, primitives: _Primitives, y, final, w_layer, w_iter, bias, x, state):
    """Run the forward into `y` and `final`, from weights in torch's layout; returns the
    workspace in training, else None."""
    arrays = {SRC: x, W_LAYER: w_layer, W_ITER: w_iter, BIAS: bias, DST: y}
    arrays |= dict(zip((SRC_ITER, SRC_ITER_C), state)) | dict(zip((DST_ITER, DST_ITER_C), final))  # h, then c
    for arg, reorder in primitives.packs.items():
        # A model's weights stay the same from call to call, training's change at every step.
        keep = primitives.backward is None and arrays[arg].nbytes <= KEEP_PACKED_MAX_BYTES
        arrays[arg] = worker.pack(arg, reorder, arrays[arg], keep)
    if primitives.backward is None:
        worker.execute(*primitives.forward, arrays)
        return None
    workspace = worker.dnn.take_workspace(primitives.workspace_bytes)
    worker.execute(*primitives.forward, arrays | {WORKSPACE: workspace})
    return workspace


def _part_primitives(part: _Part, kind, activation, training, dtype, x, y, H) -> _Primitives:
    """The primitives of `part`, on its views `x` and `y`."""
    return _primitives(kind, activation, *x.shape, H, part.direction, training, dtype, part.worker.threads,
                       _strides(x), _strides(y))


def _strides(a: np.ndarray) -> tuple[int, ...]:
    return tuple(s // a.itemsize for s in a.strides)


def _host_forward(kind, activation, training, dtype, outputs, w_layer, w_iter, bias, x, *state):
    """Host side of the forward: writes `outputs`, `(y, final state..., [workspace handle])`."""
    y, *final = outputs[: 1 + len(state)]
    D, B, H = state[0].shape
    dnn = _onednn()

    def forward(part):
        d, x_part, y_part = part.directions, part.x(x), part.y(y, H)
        primitives = _part_primitives(part, kind, activation, training, dtype, x_part, y_part, H)
        return _run_forward(part.worker, primitives, y_part, [part.state(f) for f in final],
                            w_layer[d], w_iter[d], bias[d], x_part, [part.state(s) for s in state])

    workspaces = dnn.run(forward, dnn.parts(kind, D, B, H, x.ndim == 3, training))
    if training:
        outputs[-1][...] = dnn.hold(tuple(workspaces))


def _host_backward(kind, activation, n, dtype, outputs, w_layer, w_iter, bias, x, y, handle, *rest):
    """Host side of the backward: writes `outputs`, `(dx, d_state0..., d_w_layer, d_w_iter,
    d_bias)`. The weights and their gradients are in torch's layout, `(G, H, in)` (oneDNN's
    `ldgoi`); oneDNN writes the gradients as `(in, G, H)` (`ldigo`), reordered from there.

    `rest` is the initial state, the final state (`n` arrays each), `d_y` and `d_final` (`n`).
    """
    state, final, d_y, d_final = rest[:n], rest[n : 2 * n], rest[2 * n], rest[2 * n + 1 :]
    d_x, *d_state, d_layer, d_iter, d_bias = outputs
    D, B, H = state[0].shape
    dnn = _onednn()
    shared_input = x.ndim == 3
    parts = dnn.parts(kind, D, B, H, shared_input, training=True)
    held: Sequence[np.ndarray | None] | None = dnn.take_held(int(handle))
    if held is None or len(held) != len(parts):
        # Let go (`_OneDNN.hold`), or taken by another backward of the same forward: a `vjp`
        # called again, or two identical forwards that XLA merged into one (or held for parts
        # of another sharing, had SIDE_BY_SIDE_MAX_STEP changed in between). The forward runs
        # again, on scratch outputs (its own are identical).
        held = [None] * len(parts)
    # Where both directions read one x, each part's gradient of it: the first part's in `d_x`,
    # a second's in a buffer from the pool, added to it after.
    if shared_input:
        buffers = [dnn.take_workspace(d_x.nbytes) for _ in parts[1:]]
        d_xs = [d_x, *(b.view(d_x.dtype).reshape(d_x.shape) for b in buffers)]
    else:  # each part writes its direction's own view of d_x (`_Part.x`)
        buffers, d_xs = [], [d_x] * len(parts)
    states = ((SRC_ITER, state), (DST_ITER, final), (DIFF + SRC_ITER, d_state), (DIFF + DST_ITER, d_final))

    def backward(part, workspace, d_x):
        d, worker, x_part, y_part = part.directions, part.worker, part.x(x), part.y(y, H)
        primitives = _part_primitives(part, kind, activation, True, dtype, x_part, y_part, H)
        arrays = {
            SRC: x_part, W_LAYER: w_layer[d], W_ITER: w_iter[d], BIAS: bias[d], DST: y_part,
            DIFF + SRC: part.x(d_x), DIFF + BIAS: d_bias[d], DIFF + DST: part.y(d_y, H),
        }
        for first, group in states:
            arrays |= dict(zip((first, first + 1), map(part.state, group)))  # h, then LSTM's c
        # The weight gradients as oneDNN writes them, by execution argument id.
        ldigo = {DIFF + arg: worker.packed(DIFF + arg, dnn.layout(pd, SRC)[1])
                 for arg, (pd, _) in primitives.unpacks.items()}
        if workspace is None:
            pd = primitives.forward[0]
            scratch = [_empty(dnn.layout(pd, arg)[1]) for arg in (DST, DST_ITER, DST_ITER_C)[: n + 1]]
            workspace = _run_forward(worker, primitives, scratch[0], scratch[1:], w_layer[d], w_iter[d], bias[d],
                                     x_part, list(map(part.state, state)))
        assert primitives.backward is not None  # made for training
        try:
            worker.execute(*primitives.backward, arrays | {WORKSPACE: workspace} | ldigo)
        finally:
            dnn.give_back(workspace)
        for arg, gradient in ((W_LAYER, d_layer[d]), (W_ITER, d_iter[d])):
            worker.execute(*primitives.unpacks[arg], {SRC: ldigo[DIFF + arg], DST: gradient})

    dnn.run(backward, parts, held, d_xs)
    for other, buffer in zip(d_xs[1:], buffers):
        d_x += other
        dnn.give_back(buffer)


def _host_call(host_fn, result_shapes, *args):
    """`host_fn(outputs, *args)` on numpy views of XLA's own buffers, which hands its oneDNN
    calls to the workers (`_Worker`): it writes its outputs in place, so nothing is copied in or
    out (`pure_callback` copied every output: 0.9 ms for 1.6 MB, and took 77 us a call against
    14 us). Host calls that XLA makes at once run one after the other (`_OneDNN.run`).

    The calls declare no side effect, though a training forward holds its workspace for the
    backward: a jitted function with effects takes JAX's Python dispatch, 0.3 ms a call of an
    LSTM's forward+backward at B=32/H=128. What effects would guard against, the backward
    handles itself (`_host_backward`, `_OneDNN.hold`).
    """

    def callback(_, outputs, *args):
        # `np.asarray` views each buffer in place, bfloat16 too, and the outputs writable:
        # through DLPack, numpy before 2.1 views them read-only and numpy reads no bfloat16.
        host_fn([np.asarray(a) for a in outputs], *(np.asarray(a) for a in args))

    return buffer_callback(callback, result_shapes, vmap_method="sequential")(*args)


def _empty(nbytes: int) -> np.ndarray:
    """Uninitialised bytes on a 64-byte boundary, as oneDNN's kernels store to them."""
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + nbytes]


def _float32_shapes(*arrays):
    return [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in arrays]


def _forward_shapes(x, state):
    """The forward's outputs: `y` in `x`'s dtype, `(T, B, D * H)` from `x` `(T, B, I)` or `(T, D,
    B, H)` from `(T, D, B, I)` (see `_rnn`), and the final state in `state`'s."""
    D, _, H = state[0].shape
    y = jax.ShapeDtypeStruct((*x.shape[:2], D * H) if x.ndim == 3 else (*x.shape[:3], H), x.dtype)
    return [y, *(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in state)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rnn(kind, activation, w_layer, w_iter, bias, x, state):
    """One layer in D directions, one host call: `x` `(T, B, I)`, which every direction reads,
    or `(T, D, B, I)`, each direction's own; `state` a tuple of `(D, B, H)` -> `(y, final)`, `y`
    `(T, B, D * H)` or `(T, D, B, H)` likewise. With one `x`, D=2 is torch's bidirectional layer
    without lengths: its second direction runs right to left, and `y` holds both directions'
    outputs side by side. With each direction's own, every direction runs left to right (a
    reverse direction's input comes reversed).

    The weights come in torch's layout, `(D, G, H, in)` (oneDNN's `ldgoi`), which the backward
    takes and the forward reorders into its own on the host (`_Primitives`).
    `x`, the weights and `h` are float32 or bfloat16 (see `DATA_TYPES`); the bias `(D, G', H)`
    and LSTM's `c`, float32.
    """
    y, *final = _host_call(
        functools.partial(_host_forward, kind, activation, False, x.dtype.name),
        _forward_shapes(x, state),
        w_layer, w_iter, bias, x, *state,
    )
    return y, tuple(final)


def _rnn_fwd(kind, activation, w_layer, w_iter, bias, x, state):
    y, *final, handle = _host_call(
        functools.partial(_host_forward, kind, activation, True, x.dtype.name),
        [*_forward_shapes(x, state), jax.ShapeDtypeStruct((), jnp.int32)],
        w_layer, w_iter, bias, x, *state,
    )
    final = tuple(final)
    return (y, final), (w_layer, w_iter, bias, x, state, y, final, handle)


def _float32_gradients(kind, activation, residuals, cotangents):
    """The backward host call: the gradients of `(w_layer, w_iter, bias, x, state)`, all float32."""
    w_layer, w_iter, bias, x, state, y, final, handle = residuals
    d_y, d_final = cotangents
    d_x, *d_state, d_layer, d_iter, d_bias = _host_call(
        functools.partial(_host_backward, kind, activation, len(state), x.dtype.name),
        _float32_shapes(x, *state, w_layer, w_iter, bias),
        w_layer, w_iter, bias, x, y, handle, *state, *final, *(d.astype(jnp.float32) for d in (d_y, *d_final)),
    )
    return d_layer, d_iter, d_bias, d_x, tuple(d_state)


def _rnn_bwd(kind, activation, residuals, cotangents):
    grads = _float32_gradients(kind, activation, residuals, cotangents)
    return jax.tree.map(lambda d, primal: d.astype(primal.dtype), grads, residuals[:5])


_rnn.defvjp(_rnn_fwd, _rnn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _rnn_remat(kind, activation, chunk, w_layer, w_iter, bias, x, state):
    """`_rnn` of one direction (D=1) that keeps only the states every `chunk` steps for its
    backward, which runs oneDNN's training forward again one chunk at a time: oneDNN's workspace
    is then that of `chunk` steps, not of the whole sequence. One inference call forward, where
    no gradient is taken."""
    return _rnn(kind, activation, w_layer, w_iter, bias, x, state)


def _chunks(a, chunk: int):
    """`a` `(T, ...)` as its full chunks `(n, chunk, ...)` and the steps left over."""
    n = a.shape[0] // chunk
    return a[: n * chunk].reshape(n, chunk, *a.shape[1:]), a[n * chunk :]


def _rnn_remat_fwd(kind, activation, chunk, w_layer, w_iter, bias, x, state):
    def forward(state, x):  # inference, one chunk: no workspace is kept
        y, final = _rnn(kind, activation, w_layer, w_iter, bias, x, state)
        return final, (y, state)

    chunks, rest = _chunks(x, chunk)
    final, (ys, starts) = jax.lax.scan(forward, state, chunks)
    y, rest_start = ys.reshape(-1, *ys.shape[2:]), None
    if rest.shape[0]:
        rest_start = final
        final, (y_rest, _) = forward(final, rest)
        y = jnp.concatenate([y, y_rest])
    return (y, final), (w_layer, w_iter, bias, x, state, starts, rest_start)


def _rnn_remat_bwd(kind, activation, chunk, residuals, cotangents):
    w_layer, w_iter, bias, x, state, starts, rest_start = residuals
    d_y, d_final = cotangents

    def backward(carry, inputs):  # one chunk: oneDNN's training forward, then its backward
        d_state, d_weights = carry
        x, start, d_y = inputs
        _, saved = _rnn_fwd(kind, activation, w_layer, w_iter, bias, x, start)
        *d_chunk_weights, d_x, d_start = _float32_gradients(kind, activation, saved, (d_y, d_state))
        return (d_start, jax.tree.map(jnp.add, d_weights, tuple(d_chunk_weights))), d_x

    # The state gradients cross the chunks in float32, and the weights' accumulate in it.
    d_state = tuple(d.astype(jnp.float32) for d in d_final)
    carry = (d_state, tuple(jnp.zeros(w.shape, jnp.float32) for w in (w_layer, w_iter, bias)))
    (x_chunks, x_rest), (d_y_chunks, d_y_rest) = _chunks(x, chunk), _chunks(d_y, chunk)
    d_x_rest = jnp.zeros(x_rest.shape, jnp.float32)
    if rest_start is not None:
        carry, d_x_rest = backward(carry, (x_rest, rest_start, d_y_rest))
    (d_state, d_weights), d_x = jax.lax.scan(backward, carry, (x_chunks, starts, d_y_chunks), reverse=True)
    d_x = jnp.concatenate([d_x.reshape(-1, *d_x.shape[2:]), d_x_rest])
    grads = (*d_weights, d_x, d_state)
    return jax.tree.map(lambda d, primal: d.astype(primal.dtype), grads, (w_layer, w_iter, bias, x, state))


_rnn_remat.defvjp(_rnn_remat_fwd, _rnn_remat_bwd)


def _kernel_weights(kind: str, w, directions) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The given directions of `LoopWeights`, stacked, in torch's layout: `(D, G, H, I)`,
    `(D, G, H, H)`, and the bias `(D, G', H)` in float32. The loop's transposes cancel against
    these: for one direction XLA moves no weight."""
    G, H = GATES[kind], w.whh.shape[1]

    def weight(a):  # (D, n, G*H) -> (len(directions), G, H, n)
        return jnp.stack([a[d].T.reshape(G, H, -1) for d in directions])

    def bias(b):  # (D, 1, G*H) -> (len(directions), G, H)
        return jnp.zeros((len(directions), G, H), jnp.float32) if b is None else weight(b)[..., 0].astype(jnp.float32)

    w_layer, w_iter, b_ih = weight(w.wih), weight(w.whh), bias(w.bih)
    if kind != "gru":
        return w_layer, w_iter, b_ih  # b_hh is folded into b_ih (see `_layer_weights`)
    b_hh = bias(w.bhh)
    gru_bias = jnp.stack([b_ih[:, 1] + b_hh[:, 1], b_ih[:, 0] + b_hh[:, 0], b_ih[:, 2], b_hh[:, 2]], 1)
    w_layer, w_iter = (a[:, list(GRU_ORDER)] for a in (w_layer, w_iter))
    return w_layer, w_iter, gru_bias


def _run(rnn, w_layer, w_iter, bias, x, state0):
    """`rnn(w_layer, w_iter, bias, x, state)` (`_rnn` or `_rnn_remat`) with `x` and `h` in the
    weights' dtype; the final state comes back in `state0`'s dtypes."""
    state = (state0[0].astype(w_layer.dtype), *state0[1:])  # LSTM's c stays float32
    y, final = rnn(w_layer, w_iter, bias, x.astype(w_layer.dtype), state)
    return y, tuple(f.astype(s.dtype) for f, s in zip(final, state0))


def bidirectional_layer_onednn(math_key, w, x, state0):
    """One bidirectional layer without lengths as one host call (oneDNN's `bidirectional_concat`,
    or its two directions side by side): `x` `(T, B, I)` in time order, `state0` a tuple of
    `(2, B, H)` -> `(y, final state)`, `y` `(T, B, 2 * H)`. Nothing is reversed, stacked or
    concatenated on XLA's side."""
    kind, activation = math_key
    return _run(functools.partial(_rnn, kind, activation), *_kernel_weights(kind, w, range(2)), x, state0)


def _padding_weights(kind: str, activation: str, dtype) -> tuple[float, ...] | None:
    """The weights on each gate of an input column that is 1 in padded steps, or None where the
    padding needs none. LSTM's (i, f, g, o): there i = sigmoid(-1e4) and f = sigmoid(1e4)
    round to 0 and 1 (and their slopes to 0), so c passes through unchanged, and so does its
    gradient. A relu RNN's: the most negative float, so that h is 0 there; else its steps
    could grow without bound past a sequence's end, up to inf, which the weight gradients
    multiply by the padding's zero gradient (NaN). tanh and GRU states stay bounded."""
    if kind == "lstm":
        return (-1e4, 1e4, 0.0, 0.0)
    if kind == "rnn" and activation == "relu":
        return (float(jnp.finfo(dtype).min),)
    return None


def recurrence_onednn(math_key, unroll, precision, w, xs, state0, mask, *, chunk: int | None = None):
    """`recurrence`'s contract (see `_recurrence`), run by oneDNN in one host call, each
    direction on its input `xs[:, d]` (`_rnn`); with `chunk` (`remat`), differentiated a chunk
    of that many steps at a time (`_rnn_remat`).

    oneDNN has no per-sequence lengths. With a mask it runs over the padding too, zeroed
    first, which comes after each sequence's valid steps in both directions:
    the outputs there are set to 0 and `h_n` is read off the last valid step's output
    (`read_off_padding`). An LSTM's `c_n` is in no output, so an extra input column holds `c`
    fixed in padded steps (its input and forget gates saturate to 0 and 1), and the final `c`
    is `c_n`; a relu RNN's sets `h` to 0 there (`_padding_weights`). Autodiff of all this gives
    the padding no gradient, as the scan's masked steps do.
    """
    kind, activation = math_key
    if chunk is None:
        rnn = functools.partial(_rnn, kind, activation)
    else:
        rnn = functools.partial(_rnn_remat, kind, activation, chunk)
    w_layer, w_iter, bias = _kernel_weights(kind, w, range(xs.shape[1]))
    xs = zeroed_padding(xs, mask)  # in inference too: the column's gates (below) saturate only on zeros
    gate_weights = None if mask is None else _padding_weights(kind, activation, w_layer.dtype)
    if gate_weights is not None:  # the extra input column: 1 in padded steps
        padded = jnp.broadcast_to(~mask[:, :1], (*xs.shape[:3], 1)).astype(xs.dtype)  # (T, D, B, 1)
        per_gate = jnp.asarray(gate_weights, w_layer.dtype)[:, None, None]  # (G, 1, 1)
        column = jnp.broadcast_to(per_gate, (*w_layer.shape[:3], 1))  # (D, G, H, 1)
        w_layer, xs = jnp.concatenate([w_layer, column], -1), jnp.concatenate([xs, padded], -1)
    ys, finals = _run(rnn, w_layer, w_iter, bias, xs, state0)
    return (ys, finals) if mask is None else read_off_padding(ys, finals, state0, mask)

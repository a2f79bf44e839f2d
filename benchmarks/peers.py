"""The peers every benchmark row is measured against, each built on the same torch weights.

Each builder returns `run()`, which computes the output (forward mode) or the gradients of
`sum(output)` w.r.t. parameters and input (forward+backward) and waits for them; or None
where the peer cannot run that row (cuDNN has no GRU, for one).
"""

from __future__ import annotations

import copy
import functools
import multiprocessing

import equinox as eqx
import flax.linen as nn
import isolated
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxrnn
from jaxrnn import functional as F
from jaxrnn.convert import module_from_torch
from jaxrnn.functional._cudnn import pack_weights
from jaxrnn.functional._onednn import DATA_TYPES
from jaxrnn.functional._spec import RecurrentSpec


def dtype_of(module: torch.nn.Module) -> jnp.dtype:
    """The dtype of the row: that of the torch module's weights, which every peer computes in."""
    return jnp.dtype(str(next(module.parameters()).dtype).removeprefix("torch."))


def torch_runner(module: torch.nn.Module, x: np.ndarray, lengths, backward: bool, device: str = "cpu"):
    module = copy.deepcopy(module).to(device)
    x_t = torch.tensor(x, requires_grad=backward, device=device, dtype=next(module.parameters()).dtype)
    lengths_t = None if lengths is None else torch.tensor(lengths)  # packing takes them on the CPU
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None

    def forward():
        inp = x_t
        if lengths_t is not None:
            inp = torch.nn.utils.rnn.pack_padded_sequence(x_t, lengths_t, enforce_sorted=False)
        out, _ = module(inp)
        if lengths_t is not None:
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
        return out

    if not backward:
        def run():
            with torch.no_grad():
                forward()
            synchronize()
    else:
        def run():
            module.zero_grad(set_to_none=True)
            x_t.grad = None
            forward().sum().backward()
            synchronize()
    return run


def _jax_runner(apply, params, x, lengths, backward: bool):
    """jit `apply(params, x, lengths)`; in backward mode, its gradient w.r.t. params and x."""
    lengths = None if lengths is None else jnp.asarray(lengths)
    if backward:
        fn = jax.jit(jax.grad(lambda p, x: apply(p, x, lengths).sum(), argnums=(0, 1)))
    else:
        fn = jax.jit(lambda p, x: apply(p, x, lengths))
    return lambda: jax.block_until_ready(fn(params, x))


def functional_runner(kind: str, B: int, T: int, H: int, backward: bool, **options):
    """`_jax_runner` of jaxrnn's functional layer `kind` (`H` features in and out) with `options`,
    on random weights and a random `(T, B, H)` input."""
    layer = {"lstm": F.lstm, "gru": F.gru, "rnn": F.rnn}[kind]
    params = RecurrentSpec(kind, H, H).init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (T, B, H))
    return _jax_runner(lambda p, x, n: layer(p, x, seq_lengths=n, **options)[0], params, x, None, backward)


def jaxrnn_runner(module: torch.nn.Module, x, lengths, backward: bool, implementation: str | None = None):
    if implementation == "cudnn" and not isinstance(module, torch.nn.LSTM):
        return None
    x = jnp.asarray(x, dtype_of(module))
    return jaxrnn_model_runner(*module_from_torch(module, implementation=implementation), x, lengths, backward)


def jaxrnn_model_runner(model, variables, x, lengths, backward: bool):
    """`_jax_runner` of a jaxrnn Linen layer."""
    return _jax_runner(lambda v, x, n: model.apply(v, x, seq_lengths=n)[0], variables, x, lengths, backward)


def experimental_rnn_runner(module: torch.nn.Module, x, lengths, backward: bool):
    """`jax.experimental.rnn.lstm`, JAX's own cuDNN LSTM (CUDA GPUs only), batch-first."""
    if not isinstance(module, torch.nn.LSTM) or dtype_of(module) != jnp.float32:
        return None
    from jax.experimental import rnn

    spec = RecurrentSpec("lstm", module.input_size, module.hidden_size, module.num_layers,
                         bidirectional=module.bidirectional)
    weights = pack_weights(spec, {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()})
    T, B = x.shape[:2]
    zeros = jnp.zeros((spec.num_directions * spec.num_layers, B, spec.hidden_size), jnp.float32)
    n = jnp.full((B,), T, jnp.int32) if lengths is None else np.asarray(lengths, np.int32)

    def apply(w, x, n):
        y, _, _ = rnn.lstm(jnp.swapaxes(x, 0, 1), zeros, zeros, w, n, spec.input_size, spec.hidden_size,
                           spec.num_layers, 0.0, spec.bidirectional)
        return y

    return _jax_runner(apply, weights, jnp.asarray(x), n, backward)


# Flax's own cells with their own initialisation: the weights' values do not change the time.
def _flax_cell(kind: str, hidden: int, dtype):
    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[kind]
    return cell(hidden, dtype=dtype, param_dtype=dtype)


class _FlaxStack(nn.Module):
    kind: str
    hidden: int
    num_layers: int
    bidirectional: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, seq_lengths):  # x (T, B, I), time-major as torch's default
        for _ in range(self.num_layers):
            forward = nn.RNN(_flax_cell(self.kind, self.hidden, self.dtype), time_major=True)
            if self.bidirectional:
                backward = nn.RNN(_flax_cell(self.kind, self.hidden, self.dtype), time_major=True)
                x = nn.Bidirectional(forward, backward, time_major=True)(x, seq_lengths=seq_lengths)
            else:
                x = forward(x, seq_lengths=seq_lengths)
        return x


def flax_runner(module: torch.nn.Module, x, lengths, backward: bool, kind: str):
    stack = _FlaxStack(kind, module.hidden_size, module.num_layers, module.bidirectional)
    variables = stack.init(jax.random.key(0), jnp.asarray(x), None)  # Flax's own init: speed only
    # Flax's initialisers refuse bfloat16 (and SimpleCell's carry follows its param_dtype), so
    # the params are made in float32 and cast.
    dtype = dtype_of(module)
    stack, variables = stack.clone(dtype=dtype), jax.tree.map(lambda a: a.astype(dtype), variables)
    x = jnp.asarray(x, dtype)
    return _jax_runner(lambda v, x, n: stack.apply(v, x, n), variables, x, lengths, backward)


def equinox_runner(module: torch.nn.Module, x, lengths, backward: bool, kind: str):
    """Equinox cells under `lax.scan`, one scan per layer and direction, masked when needed."""
    cls = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell, "rnn": None}[kind]
    directions = 2 if module.bidirectional else 1
    keys = iter(jax.random.split(jax.random.key(0), 2 * module.num_layers))
    cells = []
    for layer in range(module.num_layers):
        size = x.shape[-1] if layer == 0 else directions * module.hidden_size
        if cls is None:
            cells.append([_EqxRNNCell(size, module.hidden_size, next(keys)) for _ in range(directions)])
        else:
            cells.append([cls(size, module.hidden_size, key=next(keys)) for _ in range(directions)])
    dtype = dtype_of(module)
    cells = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, cells)

    def apply(cells, x, lengths):
        T, B = x.shape[:2]
        mask = None if lengths is None else jnp.arange(T)[:, None] < lengths
        for layer_cells in cells:
            outs = []
            for d, cell in enumerate(layer_cells):
                xs = x if d == 0 else jaxrnn.functional.reverse_sequences(x, lengths)
                zeros = jnp.zeros((B, module.hidden_size), x.dtype)
                h0 = (zeros, zeros) if kind == "lstm" else zeros

                def step(h, inputs, cell=cell):
                    x_t, m_t = inputs
                    new = jax.vmap(cell)(x_t, h)
                    if m_t is not None:
                        new = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new, h)
                    out = new[0] if kind == "lstm" else new
                    return new, out

                _, ys = jax.lax.scan(step, h0, (xs, mask))
                outs.append(ys if d == 0 else jaxrnn.functional.reverse_sequences(ys, lengths))
            x = jnp.concatenate(outs, -1)
        return x

    return _jax_runner(apply, cells, jnp.asarray(x, dtype), lengths, backward)


class _EqxRNNCell(eqx.Module):
    """Equinox has no Elman cell: the same two Linear layers its cells use, with tanh."""

    ih: eqx.nn.Linear
    hh: eqx.nn.Linear

    def __init__(self, input_size, hidden_size, key):
        k1, k2 = jax.random.split(key)
        self.ih = eqx.nn.Linear(input_size, hidden_size, key=k1)
        self.hh = eqx.nn.Linear(hidden_size, hidden_size, key=k2)

    def __call__(self, x, h):
        return jnp.tanh(self.ih(x) + self.hh(h))


class IsolatedRunner:
    """`run()` of a jaxrnn layer living in a process of its own (see isolated.py). `seconds` is
    the time of the last call as that process measured it: without the round trip to it through
    a pipe and the waking of each process, 0.20-0.33 ms a call (LSTM B=32, T=100, H=128) that no
    peer in this process pays."""

    def __init__(self, module: torch.nn.Module, x, lengths, backward: bool, implementation: str):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        state_dict = {k: v.detach().float().numpy() for k, v in module.state_dict().items()}
        nonlinearity = getattr(module, "nonlinearity", "tanh")
        dtype = dtype_of(module).name
        self.process = context.Process(
            target=isolated.serve,
            args=(child, state_dict, nonlinearity, x, lengths, backward, implementation, dtype),
            daemon=True,
        )
        self.process.start()
        child.close()  # so that a process that dies ends the pipe, rather than leaves us waiting
        self._receive()  # compiled
        self.seconds = float("nan")

    def __call__(self):
        self.connection.send("run")
        self.seconds = self._receive()

    def _receive(self):
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(
                f"the {self.process.name} process running jaxrnn exited with code {self.process.exitcode} "
                "(its traceback is above)"
            ) from None

    def close(self):
        self.connection.send("stop")
        self.process.join()


def onednn_runner(module: torch.nn.Module, x, lengths, backward: bool):
    """jaxrnn's `implementation="onednn"`, in a process without torch (see isolated.py)."""
    if dtype_of(module).name not in DATA_TYPES:
        return None
    return IsolatedRunner(module, x, lengths, backward, "onednn")


# Every name starting with "jaxrnn" is one of jaxrnn's implementations; the rest are its peers.
PEERS = {
    "torch": torch_runner,
    "jaxrnn": jaxrnn_runner,
    "jaxrnn onednn": onednn_runner,
    "flax": flax_runner,
    "equinox": equinox_runner,
}

# On a GPU: torch with cuDNN, JAX's cuDNN LSTM, and jaxrnn's GPU implementations.
GPU_PEERS = {
    "torch": functools.partial(torch_runner, device="cuda"),
    "jaxrnn": jaxrnn_runner,
    "jaxrnn pallas": functools.partial(jaxrnn_runner, implementation="pallas"),
    "jaxrnn cudnn": functools.partial(jaxrnn_runner, implementation="cudnn"),
    "jax.experimental.rnn": experimental_rnn_runner,
    "flax": flax_runner,
    "equinox": equinox_runner,
}

"""Run torch's recurrent modules on given weights and inputs: the reference every test uses."""

from __future__ import annotations

import numpy as np
import torch

from jaxrnn.functional import RecurrentSpec

TOLERANCE = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}


def assert_close(actual, expected, what: str = "") -> None:
    """Max abs error below the project's tolerance for the expected dtype (f32 1e-5, f64 1e-10)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err < TOLERANCE[expected.dtype], f"{what}: max abs error {err:.3e}"


def torch_module(spec: RecurrentSpec, batch_first: bool = False, dtype=torch.float32):
    """The torch module that `spec` describes, with torch's own random initialisation."""
    if not isinstance(dtype, torch.dtype):
        dtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    if spec.cell:
        cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[spec.kind]
        extra = {"nonlinearity": spec.nonlinearity} if spec.kind == "rnn" else {}
        return cls(spec.input_size, spec.hidden_size, bias=spec.bias, **extra).to(dtype)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec.kind]
    extra = {"nonlinearity": spec.nonlinearity} if spec.kind == "rnn" else {}
    if spec.proj_size:
        extra["proj_size"] = spec.proj_size
    return cls(
        spec.input_size,
        spec.hidden_size,
        num_layers=spec.num_layers,
        bias=spec.bias,
        batch_first=batch_first,
        bidirectional=spec.bidirectional,
        **extra,
    ).to(dtype)


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def run_torch(module, x, hx=None, seq_lengths=None, batch_first=False, loss_weights=None):
    """Forward (and backward of `sum(w * outputs)` when `loss_weights` is given) in torch.

    Variable lengths go through `pack_padded_sequence(enforce_sorted=False)` and
    `pad_packed_sequence(total_length=T)`. Returns `(outputs, grads)`: outputs is a tuple
    `(output, h_n[, c_n])` of numpy arrays, grads a dict over parameter names, "x" and "hx".
    """
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None
    if hx is not None:
        hx_t = tuple(torch.tensor(h, requires_grad=True) for h in hx)
    unbatched = x_t.dim() == 2 and not isinstance(module, torch.nn.RNNCellBase)
    if isinstance(module, torch.nn.RNNCellBase):
        out = module(x_t, hx_t if isinstance(module, torch.nn.LSTMCell) or hx_t is None else hx_t[0])
        outputs = out if isinstance(out, tuple) else (out,)
    else:
        state = None if hx_t is None else (hx_t if len(hx_t) == 2 else hx_t[0])
        inp = x_t
        if seq_lengths is not None:
            lengths = np.atleast_1d(np.asarray(seq_lengths))
            if unbatched:  # torch packs batched input only: run a batch of one
                inp = x_t.unsqueeze(0 if batch_first else 1)
                state = None if state is None else _map(state, lambda s: s.unsqueeze(1))
            T = inp.shape[1 if batch_first else 0]
            inp = torch.nn.utils.rnn.pack_padded_sequence(
                inp, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
            )
            out, state_n = module(inp, state)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
            if unbatched:
                out = out.squeeze(0 if batch_first else 1)
                state_n = _map(state_n, lambda s: s.squeeze(1))
        else:
            out, state_n = module(inp, state)
        outputs = (out,) + (state_n if isinstance(state_n, tuple) else (state_n,))
    grads = {}
    if loss_weights is not None:
        loss = sum((o * torch.tensor(w)).sum() for o, w in zip(outputs, loss_weights))
        loss.backward()
        grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
        grads["x"] = x_t.grad.numpy().copy()
        if hx_t is not None:
            grads["hx"] = tuple(h.grad.numpy().copy() for h in hx_t)
    return tuple(o.detach().numpy() for o in outputs), grads


def _map(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)

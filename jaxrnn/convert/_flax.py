"""torch weights <-> the parameters of Flax's own cells, Linen and NNX.

Flax's cells (`LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell`) keep one kernel per
gate, transposed (`(in, H)`), and fold torch's two biases into one where the formula allows:
LSTM `h{g}.bias = b_i{g} + b_h{g}`; GRU `ir/iz.bias = b_i + b_h`, `in.bias = b_in`,
`hn.bias = b_hn` (the reset gate multiplies it, as in torch); SimpleCell `i.bias = b_ih + b_hh`.
Folding is exact for the forward pass and cannot be undone: going back puts the folded bias in
`bias_ih` and zeros in `bias_hh`. NNX's cells hold the same numbers under other names
(`OptimizedLSTMCell`, `GRUCell` and `SimpleCell` concatenate the gates in `dense_i`/`dense_h`);
NNX's `GRUCell` has no `b_hn`, so only weights with `b_hn == 0` fit it.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..functional._spec import RecurrentSpec
from ._torch import read_params

FLAX_CELLS = {"LSTMCell": "lstm", "OptimizedLSTMCell": "lstm", "GRUCell": "gru", "SimpleCell": "rnn"}
_LSTM_GATES = "ifgo"


def _kind(cell_type: str) -> str:
    if cell_type not in FLAX_CELLS:
        raise ValueError(f"cell_type must be one of {tuple(FLAX_CELLS)}, got {cell_type!r}")
    return FLAX_CELLS[cell_type]


def to_flax_cell(
    source, cell_type: str, *, prefix: str = "", layer: int = 0, reverse: bool = False
) -> dict:
    """Flax variables `{"params": ...}` for `flax.linen.<cell_type>` holding torch's weights.

    `source` is anything `from_torch` takes (a torch cell or layer, a state_dict, a file);
    for a layer, `layer` and `reverse` pick one layer and direction. A SimpleCell computes
    tanh by default: build it with `activation_fn=nn.relu` for a relu RNN. Flax's LSTM carry
    is `(c, h)`, torch's `(h, c)`.

    >>> import torch, jax.numpy as jnp, flax.linen as nn
    >>> from jaxrnn.convert import to_flax_cell
    >>> variables = to_flax_cell(torch.nn.GRUCell(3, 5), "GRUCell")
    >>> carry, h = nn.GRUCell(5).apply(variables, jnp.zeros(5), jnp.ones(3))
    >>> h.shape
    (5,)
    """
    kind = _kind(cell_type)
    spec, params = read_params(source, prefix=prefix, kind=kind)
    if spec.proj_size:
        raise ValueError(f"Flax's {cell_type} has no projection: {spec.describe()} cannot fit it")
    if not spec.cell and not (0 <= layer < spec.num_layers and (spec.bidirectional or not reverse)):
        raise ValueError(f"layer={layer}, reverse={reverse} is not a layer of {spec.describe()}")
    suffix = "" if spec.cell else f"_l{layer}" + "_reverse" * reverse
    w_ih, w_hh = params[f"weight_ih{suffix}"], params[f"weight_hh{suffix}"]
    zeros = np.zeros(w_ih.shape[0], w_ih.dtype)  # bias=False: Flax's always-present bias is 0
    b_ih = params.get(f"bias_ih{suffix}", zeros)
    b_hh = params.get(f"bias_hh{suffix}", zeros)
    wi, wh, bi, bh = (np.split(a, spec.gates) for a in (w_ih, w_hh, b_ih, b_hh))
    if kind == "lstm":
        tree = {f"i{g}": {"kernel": wi[k].T} for k, g in enumerate(_LSTM_GATES)}
        tree |= {f"h{g}": {"kernel": wh[k].T, "bias": bi[k] + bh[k]} for k, g in enumerate(_LSTM_GATES)}
    elif kind == "gru":
        tree = {
            "ir": {"kernel": wi[0].T, "bias": bi[0] + bh[0]},
            "iz": {"kernel": wi[1].T, "bias": bi[1] + bh[1]},
            "in": {"kernel": wi[2].T, "bias": bi[2]},
            "hr": {"kernel": wh[0].T},
            "hz": {"kernel": wh[1].T},
            "hn": {"kernel": wh[2].T, "bias": bh[2]},
        }
    else:
        tree = {"i": {"kernel": wi[0].T, "bias": bi[0] + bh[0]}, "h": {"kernel": wh[0].T}}
    return {"params": tree}


_NNX_LSTM_GATES = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")


def _nnx_tree(cell: Any) -> dict:  # a Flax NNX cell
    """The Linen parameter tree holding the same numbers as an NNX cell."""
    def value(variable):
        return np.asarray(variable[...])

    name = type(cell).__name__
    if name == "LSTMCell":
        inputs, hiddens = _NNX_LSTM_GATES
        return {f"i{g}": {"kernel": value(getattr(cell, a).kernel)} for g, a in zip(_LSTM_GATES, inputs)} | {
            f"h{g}": {"kernel": value(getattr(cell, a).kernel), "bias": value(getattr(cell, a).bias)}
            for g, a in zip(_LSTM_GATES, hiddens)
        }
    w_i, w_h = value(cell.dense_i.kernel), value(cell.dense_h.kernel)
    if name == "OptimizedLSTMCell":
        parts = zip(np.split(w_i, 4, 1), np.split(w_h, 4, 1), np.split(value(cell.dense_h.bias), 4))
        return {k: v for g, (wi, wh, b) in zip(_LSTM_GATES, parts)
                for k, v in ((f"i{g}", {"kernel": wi}), (f"h{g}", {"kernel": wh, "bias": b}))}
    if name == "GRUCell":
        (wr, wz, wn), (hr, hz, hn) = np.split(w_i, 3, 1), np.split(w_h, 3, 1)
        br, bz, bn = np.split(value(cell.dense_i.bias), 3)
        return {
            "ir": {"kernel": wr, "bias": br}, "iz": {"kernel": wz, "bias": bz}, "in": {"kernel": wn, "bias": bn},
            "hr": {"kernel": hr}, "hz": {"kernel": hz}, "hn": {"kernel": hn, "bias": np.zeros_like(bn)},
        }
    return {"i": {"kernel": w_i, "bias": value(cell.dense_i.bias)}, "h": {"kernel": w_h}}


def to_nnx_cell(cell: nnx.Module, source, *, prefix: str = "", layer: int = 0, reverse: bool = False):
    """Fill an NNX cell (`nnx.LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell`) with
    torch's weights, in place, and return it. Arguments as `to_flax_cell`.

    >>> import torch, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxrnn.convert import to_nnx_cell
    >>> cell = to_nnx_cell(nnx.OptimizedLSTMCell(3, 5, rngs=nnx.Rngs(0)), torch.nn.LSTMCell(3, 5))
    >>> (c, h), y = cell((jnp.zeros(5), jnp.zeros(5)), jnp.ones(3))
    >>> y.shape
    (5,)
    """
    cell_type = type(cell).__name__
    tree = to_flax_cell(source, cell_type, prefix=prefix, layer=layer, reverse=reverse)["params"]
    if cell_type == "GRUCell" and np.any(tree["hn"]["bias"] != 0):
        raise ValueError(
            "nnx.GRUCell has no bias for W_hn h (torch's b_hn, inside r * (W_hn h + b_hn)), and these "
            "weights have a non-zero one: use flax.linen.GRUCell or jaxrnn.nnx.GRUCell, which keep it"
        )
    expected = _nnx_tree(cell)
    for gate, leaves in expected.items():
        for leaf, value in leaves.items():
            if value.shape != tree[gate][leaf].shape:
                raise ValueError(
                    f"{cell_type} {gate}.{leaf} has shape {value.shape}, the torch weights give "
                    f"{tree[gate][leaf].shape}: build the cell with the checkpoint's sizes"
                )

    _put_nnx_tree(cell, tree)
    return cell


def _put_nnx_tree(cell: Any, tree: dict) -> None:  # a Flax NNX cell
    """Write `tree` (Linen's layout of the cell's params, as `_nnx_tree` reads them) into `cell`."""
    cell_type = type(cell).__name__

    def put(variable, value):
        variable.set_value(jnp.asarray(value, variable[...].dtype))

    if cell_type == "LSTMCell":
        for g, a_i, a_h in zip(_LSTM_GATES, *_NNX_LSTM_GATES):
            put(getattr(cell, a_i).kernel, tree[f"i{g}"]["kernel"])
            put(getattr(cell, a_h).kernel, tree[f"h{g}"]["kernel"])
            put(getattr(cell, a_h).bias, tree[f"h{g}"]["bias"])
    elif cell_type == "SimpleCell":
        put(cell.dense_i.kernel, tree["i"]["kernel"])
        put(cell.dense_i.bias, tree["i"]["bias"])
        put(cell.dense_h.kernel, tree["h"]["kernel"])
    else:
        gates = _LSTM_GATES if cell_type == "OptimizedLSTMCell" else "rzn"
        put(cell.dense_i.kernel, np.concatenate([tree[f"i{g}"]["kernel"] for g in gates], 1))
        put(cell.dense_h.kernel, np.concatenate([tree[f"h{g}"]["kernel"] for g in gates], 1))
        if cell_type == "OptimizedLSTMCell":
            put(cell.dense_h.bias, np.concatenate([tree[f"h{g}"]["bias"] for g in gates]))
        else:
            put(cell.dense_i.bias, np.concatenate([tree[f"i{g}"]["bias"] for g in gates]))


def from_flax_cell(variables, cell_type: str | None = None) -> dict[str, np.ndarray]:
    """torch-layout cell params (`weight_ih`, ..., `bias_hh`) from a Flax cell's parameters.

    `variables` is a Linen cell's variables (then `cell_type` names the cell) or an NNX cell.
    The folded biases go to `bias_ih`, `bias_hh` is zero except GRU's `b_hn`: the same
    function as the Flax cell, usable with `jaxrnn.functional` or `to_torch`.
    """
    if isinstance(variables, nnx.Module):
        cell_type, tree = type(variables).__name__, _nnx_tree(variables)
    else:
        if cell_type is None:
            raise TypeError("from_flax_cell needs cell_type for Linen variables, e.g. 'GRUCell'")
        tree = variables.get("params", variables)
    kind = _kind(cell_type)
    if kind == "lstm":
        gates = [(tree[f"i{g}"]["kernel"], tree[f"h{g}"]["kernel"], tree[f"h{g}"]["bias"], None) for g in _LSTM_GATES]
    elif kind == "gru":
        gates = [
            (tree["ir"]["kernel"], tree["hr"]["kernel"], tree["ir"]["bias"], None),
            (tree["iz"]["kernel"], tree["hz"]["kernel"], tree["iz"]["bias"], None),
            (tree["in"]["kernel"], tree["hn"]["kernel"], tree["in"]["bias"], tree["hn"]["bias"]),
        ]
    else:
        gates = [(tree["i"]["kernel"], tree["h"]["kernel"], tree["i"]["bias"], None)]
    params = {
        "weight_ih": np.concatenate([np.asarray(k).T for k, _, _, _ in gates]),
        "weight_hh": np.concatenate([np.asarray(k).T for _, k, _, _ in gates]),
        "bias_ih": np.concatenate([np.asarray(b) for _, _, b, _ in gates]),
        "bias_hh": np.concatenate(
            [np.zeros_like(np.asarray(b)) if bh is None else np.asarray(bh) for _, _, b, bh in gates]
        ),
    }
    RecurrentSpec.from_params(params, kind)  # the tree must form a whole cell
    return params

"""torch weights <-> the parameter trees of Flax Linen's own cells.

Flax's cells (`LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell`) keep one kernel per
gate, transposed (`(in, H)`), and fold torch's two biases into one where the formula allows:
LSTM `h{g}.bias = b_i{g} + b_h{g}`; GRU `ir/iz.bias = b_i + b_h`, `in.bias = b_in`,
`hn.bias = b_hn` (the reset gate multiplies it, as in torch); SimpleCell `i.bias = b_ih + b_hh`.
Folding is exact for the forward pass and cannot be undone: going back puts the folded bias in
`bias_ih` and zeros in `bias_hh`.
"""

from __future__ import annotations

import numpy as np

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


def from_flax_cell(variables, cell_type: str) -> dict[str, np.ndarray]:
    """torch-layout cell params (`weight_ih`, ..., `bias_hh`) from a Flax cell's variables.

    The folded biases go to `bias_ih`, `bias_hh` is zero except GRU's `b_hn`: the same
    function as the Flax cell, usable with `jaxrnn.functional` or `to_torch`.
    """
    kind = _kind(cell_type)
    tree = variables.get("params", variables)
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

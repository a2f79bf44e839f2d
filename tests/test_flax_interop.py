"""torch weights in Flax's own cells: outputs equal torch's, and back through jaxrnn."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxrnn import functional as F
from jaxrnn.convert import from_flax_cell, to_flax_cell, to_nnx_cell


def _gru_without_b_hn(**kwargs):
    cell = torch.nn.GRUCell(3, 5, **kwargs)
    with torch.no_grad():
        cell.bias_hh[10:] = 0  # NNX's GRUCell has no b_hn
    return cell

CASES = [
    ("LSTMCell", lambda: torch.nn.LSTMCell(3, 5), lambda: nn.LSTMCell(5)),
    ("OptimizedLSTMCell", lambda: torch.nn.LSTMCell(3, 5, bias=False), lambda: nn.OptimizedLSTMCell(5)),
    ("GRUCell", lambda: torch.nn.GRUCell(3, 5), lambda: nn.GRUCell(5)),
    ("SimpleCell", lambda: torch.nn.RNNCell(3, 5), lambda: nn.SimpleCell(5)),
    ("SimpleCell", lambda: torch.nn.RNNCell(3, 5, nonlinearity="relu"), lambda: nn.SimpleCell(5, activation_fn=nn.relu)),
]


NNX_CASES = [
    ("LSTMCell", lambda: torch.nn.LSTMCell(3, 5), lambda: nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))),
    ("OptimizedLSTMCell", lambda: torch.nn.LSTMCell(3, 5), lambda: nnx.OptimizedLSTMCell(3, 5, rngs=nnx.Rngs(0))),
    ("GRUCell", _gru_without_b_hn, lambda: nnx.GRUCell(3, 5, rngs=nnx.Rngs(0))),
    ("SimpleCell", lambda: torch.nn.RNNCell(3, 5, bias=False), lambda: nnx.SimpleCell(3, 5, rngs=nnx.Rngs(0))),
]


@pytest.mark.parametrize(
    "api, cell_type, torch_cell, flax_cell",
    [("linen", *case) for case in CASES] + [("nnx", *case) for case in NNX_CASES],
)
def test_flax_cell_with_torch_weights_matches_torch(api, cell_type, torch_cell, flax_cell):
    source, cell = torch_cell(), flax_cell()
    x, h, c = torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 5)
    lstm = cell_type.endswith("LSTMCell")
    expected = source(x, (h, c)) if lstm else source(x, h)
    expected = [t.detach().numpy() for t in (expected if lstm else (expected,))]
    carry = (c.numpy(), h.numpy()) if lstm else h.numpy()
    if api == "linen":
        variables = to_flax_cell(source, cell_type)
        new_carry, _ = cell.apply(variables, carry, x.numpy())
    else:
        variables = to_nnx_cell(cell, source)
        new_carry, _ = cell(carry, x.numpy())
    actual = [new_carry[1], new_carry[0]] if lstm else [new_carry]  # Flax's carry is (c, h)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=0)
    # And back: the unfolded params run in jaxrnn give the Flax cell's numbers.
    params = from_flax_cell(variables, cell_type)
    kind = {"L": "lstm", "O": "lstm", "G": "gru", "S": "rnn"}[cell_type[0]]
    extra = {"nonlinearity": source.nonlinearity} if kind == "rnn" else {}
    fn = {"lstm": F.lstm_cell, "gru": F.gru_cell, "rnn": F.rnn_cell}[kind]
    again = fn(params, x.numpy(), (h.numpy(), c.numpy()) if lstm else h.numpy(), **extra)
    for a, e in zip(again if lstm else (again,), expected):
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=0)


def test_flax_rnn_over_a_torch_layer_direction():
    """A layer's direction in `nn.RNN(cell)`: torch's reverse direction of a bidirectional GRU."""
    layer = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    expected, _ = layer(x)
    variables = to_flax_cell(layer, "GRUCell", layer=0, reverse=True)
    first_layer = torch.nn.GRU(3, 5, bidirectional=True)
    first_layer.load_state_dict({k: v for k, v in layer.state_dict().items() if "_l0" in k})
    want = first_layer(x)[0][..., 5:].detach().numpy()
    rnn = nn.RNN(nn.GRUCell(5), time_major=True, reverse=True, keep_order=True)
    actual = rnn.apply({"params": {"cell": variables["params"]}}, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(actual, want, atol=1e-5, rtol=0)


def test_what_flax_cells_cannot_express_is_refused():
    with pytest.raises(ValueError, match=r"nnx.GRUCell has no bias for W_hn h .* use flax.linen.GRUCell"):
        to_nnx_cell(nnx.GRUCell(3, 5, rngs=nnx.Rngs(0)), torch.nn.GRUCell(3, 5))
    with pytest.raises(ValueError, match=r"SimpleCell i.kernel has shape \(4, 5\), the torch weights give \(3, 5\)"):
        to_nnx_cell(nnx.SimpleCell(4, 5, rngs=nnx.Rngs(0)), torch.nn.RNNCell(3, 5))
    with pytest.raises(ValueError, match=r"Flax's LSTMCell has no projection: LSTM\(3, 5, proj_size=2\)"):
        to_flax_cell(torch.nn.LSTM(3, 5, proj_size=2), "LSTMCell")
    with pytest.raises(ValueError, match=r"cell_type must be one of .*got 'MGUCell'"):
        to_flax_cell(torch.nn.LSTMCell(3, 5), "MGUCell")
    with pytest.raises(ValueError, match=r"layer=2, reverse=False is not a layer of GRU\(3, 5, num_layers=2\)"):
        to_flax_cell(torch.nn.GRU(3, 5, num_layers=2), "GRUCell", layer=2)
    with pytest.raises(ValueError, match=r"expected the weights of a gru, got a torch LSTMCell"):
        to_flax_cell(torch.nn.LSTMCell(3, 5), "GRUCell")
    with pytest.raises(ValueError, match=r"'weight_ih' has 20 rows, not 3 \* hidden_size \(gru\)"):
        to_flax_cell(torch.nn.LSTMCell(3, 5).state_dict(), "GRUCell")

"""The pure-function core of jaxrnn: torch's recurrent layers and cells on plain param dicts.

Parameters are torch's `state_dict()` as a dict of arrays (`weight_ih_l0`, `weight_hh_l0`,
`bias_ih_l0`, `bias_hh_l0`, `weight_hr_l0`, each with `_reverse` for the backward direction;
cells: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`); gate order is torch's (LSTM i, f, g, o;
GRU r, z, n). Every function works under `jit`, `grad` and `vmap`.
"""

from ._cells import gru_cell as gru_cell
from ._cells import lstm_cell as lstm_cell
from ._cells import rnn_cell as rnn_cell
from ._layers import gru as gru
from ._layers import lstm as lstm
from ._layers import reverse_sequences as reverse_sequences
from ._layers import rnn as rnn
from ._math import LSTMState as LSTMState
from ._spec import RecurrentSpec as RecurrentSpec

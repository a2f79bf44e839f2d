"""jaxrnn: PyTorch-exact RNN, LSTM and GRU layers for JAX and Flax.

Linen modules live here (`jaxrnn.LSTM`, ...), NNX twins in `jaxrnn.nnx`, the pure-function core
in `jaxrnn.functional`, and the torch checkpoint converter in `jaxrnn.convert`.
"""

from . import functional as functional
from .functional import LSTMState as LSTMState
from .functional import RecurrentSpec as RecurrentSpec
from .linen import GRU as GRU
from .linen import LSTM as LSTM
from .linen import RNN as RNN
from .linen import GRUCell as GRUCell
from .linen import LSTMCell as LSTMCell
from .linen import RNNCell as RNNCell

__version__ = "0.1.0"

"""jaxrnn: PyTorch-exact RNN, LSTM and GRU layers for JAX and Flax."""

from . import functional as functional
from .functional import LSTMState as LSTMState
from .functional import RecurrentSpec as RecurrentSpec

__version__ = "0.1.0"

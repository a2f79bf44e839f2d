"""The configuration of a recurrent layer, and its parameters in torch's state_dict layout.

`RecurrentSpec` is the one place that knows which keys and shapes a configuration has; the
modules declare parameters from it, the core validates params against it, and the converter
infers it from a state_dict.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NONLINEARITIES = ("tanh", "relu")
_LAYER_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


@dataclasses.dataclass(frozen=True)
class RecurrentSpec:
    """What torch's constructor arguments say about the parameters of a recurrent layer or cell.

    `kind` is "rnn", "lstm" or "gru"; `cell=True` describes a single cell (`nn.LSTMCell`),
    whose keys carry no `_l{k}` suffix.
    """

    kind: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    proj_size: int = 0
    nonlinearity: str = "tanh"
    cell: bool = False

    def __post_init__(self):
        if self.kind not in GATES:
            raise ValueError(f"kind must be one of {tuple(GATES)}, got {self.kind!r}")
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )
        if not isinstance(self.proj_size, int) or self.proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative integer, got {self.proj_size!r}")
        if self.proj_size and self.kind != "lstm":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size, got proj_size={self.proj_size} "
                f"and hidden_size={self.hidden_size}"
            )

    @property
    def gates(self) -> int:
        return GATES[self.kind]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """`H_out`: the size of `h`, `proj_size` when there is a projection."""
        return self.proj_size or self.hidden_size

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The keys and shapes of torch's `state_dict()`, in torch's order."""
        gh, h = self.gates * self.hidden_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]]
        if self.cell:
            shapes = {"weight_ih": (gh, self.input_size), "weight_hh": (gh, h)}
            if self.bias:
                shapes |= {"bias_ih": (gh,), "bias_hh": (gh,)}
            return shapes
        shapes = {}
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else self.num_directions * self.output_size
            for suffix in ("", "_reverse")[: self.num_directions]:
                shapes[f"weight_ih_l{layer}{suffix}"] = (gh, layer_in)
                shapes[f"weight_hh_l{layer}{suffix}"] = (gh, self.output_size)
                if self.bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gh,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gh,)
                if self.proj_size:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (self.proj_size, h)
        return shapes

    def init(self, key: jax.Array, dtype=jnp.float32) -> dict[str, jax.Array]:
        """torch's default initialisation: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        shapes = self.param_shapes()
        keys = jax.random.split(key, len(shapes))
        return {
            name: jax.random.uniform(k, shape, dtype, -bound, bound)
            for k, (name, shape) in zip(keys, shapes.items())
        }

    def check_params(self, params: Mapping[str, object], what: str = "params") -> None:
        """Raise `ValueError` naming every missing, unexpected or mis-shaped key."""
        expected = self.param_shapes()
        problems = []
        missing = [k for k in expected if k not in params]
        unexpected = [k for k in params if k not in expected]
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for name, shape in expected.items():
            if name in params and tuple(getattr(params[name], "shape", ())) != shape:
                actual = tuple(getattr(params[name], "shape", ()))
                problems.append(f"{name!r} has shape {actual}, expected {shape}")
        if problems:
            raise ValueError(f"{what} do not fit {self.describe()}: " + "; ".join(problems))

    @property
    def class_name(self) -> str:
        """torch's (and jaxrnn's) class for this configuration: "LSTM", "GRUCell", ..."""
        return {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[self.kind] + "Cell" * self.cell

    def describe(self) -> str:
        """A constructor call that builds this configuration, e.g. `LSTM(8, 16, num_layers=2)`."""
        args = [str(self.input_size), str(self.hidden_size)]
        defaults = RecurrentSpec(self.kind, 1, 2, cell=self.cell)
        fields = ("num_layers", "nonlinearity", "bias", "bidirectional", "proj_size")
        args += [
            f"{f}={getattr(self, f)!r}"
            for f in fields
            if getattr(self, f) != getattr(defaults, f) and not (self.cell and f == "num_layers")
        ]
        return f"{self.class_name}({', '.join(args)})"

    @classmethod
    def from_params(
        cls, params: Mapping[str, object], kind: str | None = None, nonlinearity: str = "tanh"
    ) -> RecurrentSpec:
        """Infer the configuration that a torch-layout parameter dict determines.

        `kind` is inferred from the gate count when not given (1: rnn, 3: gru, 4: lstm);
        `nonlinearity` cannot be read off the weights. Raises `ValueError` when the keys do not
        form a recurrent layer or cell, or do not fit together.
        """
        keys = list(params)
        shape = {k: tuple(getattr(params[k], "shape", ())) for k in keys}
        cell = "weight_ih" in shape
        if not cell and not any(_LAYER_KEY.match(k) for k in keys):
            raise ValueError(
                "params are not a recurrent layer or cell: expected keys like 'weight_ih_l0' "
                f"(layer) or 'weight_ih' (cell), got {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            )
        w_ih = "weight_ih" if cell else "weight_ih_l0"
        w_hh = "weight_hh" if cell else "weight_hh_l0"
        for k in (w_ih, w_hh):
            if len(shape.get(k, ())) != 2:
                raise ValueError(f"params need a 2-D {k!r}, got {shape.get(k, 'nothing')}")
        gh, input_size = shape[w_ih]
        if kind is not None:
            if kind not in GATES:
                raise ValueError(f"kind must be one of {tuple(GATES)}, got {kind!r}")
            if gh % GATES[kind]:
                raise ValueError(f"{w_ih!r} has {gh} rows, not {GATES[kind]} * hidden_size ({kind})")
            hidden_size = gh // GATES[kind]
        else:
            w_h = w_hh if cell or "weight_hr_l0" not in shape else "weight_hr_l0"
            hidden_size = shape[w_h][1]
            kind = {g * hidden_size: k for k, g in GATES.items()}.get(gh)
            if kind is None:
                raise ValueError(
                    f"{w_ih!r} has {gh} rows but {w_h!r} says hidden_size={hidden_size}: expected "
                    "1, 3 or 4 * hidden_size rows (RNN, GRU, LSTM)"
                )
        spec_args = dict(
            kind=kind,
            input_size=input_size,
            hidden_size=hidden_size,
            bias=("bias_ih" if cell else "bias_ih_l0") in shape,
            nonlinearity=nonlinearity,
            cell=cell,
        )
        if not cell:
            num_layers = 1  # the run of consecutive layers from 0; stray keys are then unexpected
            while f"weight_ih_l{num_layers}" in shape:
                num_layers += 1
            spec_args |= dict(
                num_layers=num_layers,
                bidirectional="weight_ih_l0_reverse" in shape,
                proj_size=shape.get("weight_hr_l0", (0,))[0],
            )
        spec = cls(**spec_args)
        spec.check_params(params)
        return spec

"""The converter against torch: bit-exact round trips, files, prefixes, strict errors, the CLI."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import flax.serialization
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch_reference import torch_module

import jaxrnn
from jaxrnn.convert import from_torch, module_from_torch, to_torch
from jaxrnn.functional import RecurrentSpec

SPECS = [
    RecurrentSpec("lstm", 3, 5, num_layers=2, bidirectional=True, proj_size=2),
    RecurrentSpec("gru", 3, 5, bias=False),
    RecurrentSpec("rnn", 3, 5, num_layers=3, nonlinearity="relu"),
    RecurrentSpec("lstm", 3, 5, cell=True),
    RecurrentSpec("gru", 3, 5, cell=True, bias=False),
    RecurrentSpec("rnn", 3, 5, cell=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=RecurrentSpec.describe)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_is_bit_exact(spec, dtype):
    module = torch_module(spec, dtype=dtype)
    state_dict = to_torch(from_torch(module))
    assert list(state_dict) == list(module.state_dict())
    for name, tensor in module.state_dict().items():
        assert state_dict[name].dtype == tensor.dtype
        assert torch.equal(state_dict[name], tensor), name
    torch_module(spec, dtype=dtype).load_state_dict(state_dict, strict=True)


class Model(torch.nn.Module):
    """A whole model: the LSTM is one submodule among others."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)
        self.encoder = torch.nn.Module()
        self.encoder.lstm = torch.nn.LSTM(3, 5, batch_first=True, dropout=0.25, num_layers=2)
        self.head = torch.nn.Linear(5, 2)


def _check_lstm(variables, model):
    for name, tensor in model.encoder.lstm.state_dict().items():
        np.testing.assert_array_equal(np.asarray(variables["params"][name]), tensor.numpy())


def test_prefix_from_model_state_dict_and_files(tmp_path):
    model = Model()
    _check_lstm(from_torch(model.state_dict(), prefix="encoder.lstm."), model)
    _check_lstm(from_torch(model, prefix="encoder.lstm."), model)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save({"model": model.state_dict(), "step": 3}, tmp_path / "ckpt.pth")
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    _check_lstm(from_torch(tmp_path / "model.pt", prefix="encoder.lstm."), model)
    _check_lstm(from_torch(str(tmp_path / "ckpt.pth"), prefix="model.encoder.lstm."), model)
    _check_lstm(from_torch(tmp_path / "model.safetensors", prefix="encoder.lstm."), model)


def test_module_from_torch_reads_configuration():
    model = Model()
    module, variables = module_from_torch(model, prefix="encoder.lstm.")
    assert isinstance(module, jaxrnn.LSTM)
    assert (module.num_layers, module.batch_first, module.dropout) == (2, True, 0.25)
    x = torch.randn(2, 4, 3)
    output, (h_n, c_n) = module.apply(variables, x.numpy())
    expected, (h_t, c_t) = model.encoder.lstm.eval()(x)
    np.testing.assert_allclose(np.asarray(output), expected.detach().numpy(), atol=1e-5)
    rnn, _ = module_from_torch(torch.nn.RNN(3, 4, nonlinearity="relu"))
    assert rnn.nonlinearity == "relu"
    # From a bare state_dict, what the weights do not say comes from the caller.
    rnn, _ = module_from_torch(
        torch.nn.RNN(3, 4, bidirectional=True).state_dict(), nonlinearity="relu", batch_first=True
    )
    assert (rnn.nonlinearity, rnn.batch_first, rnn.bidirectional) == ("relu", True, True)


def test_to_torch_prefix_loads_into_model():
    model, other = Model(), Model()
    state_dict = to_torch(from_torch(model, prefix="encoder.lstm."), prefix="encoder.lstm.")
    other.load_state_dict(state_dict, strict=False)
    for name, tensor in model.encoder.lstm.state_dict().items():
        assert torch.equal(other.encoder.lstm.state_dict()[name], tensor)


STRICT_CASES = [
    (None, lambda sd: sd.pop("bias_hh_l1"), r"missing keys \['bias_hh_l1'\]"),
    (None, lambda sd: sd.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
    ("lstm", lambda sd: sd.update(weight_hh_l0=torch.zeros(20, 4)), r"'weight_hh_l0' has shape \(20, 4\), expected \(20, 5\)"),
    (None, lambda sd: sd.update(weight_hh_l0=torch.zeros(20, 4)), r"'weight_ih_l0' has 20 rows but 'weight_hh_l0' says hidden_size=4"),
    ("lstm", lambda sd: sd.update(weight_ih_l0=torch.zeros(21, 3)), r"'weight_ih_l0' has 21 rows, not 4 \* hidden_size"),
    ("gru", lambda sd: None, r"'weight_ih_l0' has 20 rows, not 3 \* hidden_size \(gru\)"),
]


@pytest.mark.parametrize("kind, mutate, message", STRICT_CASES)
def test_strict_errors_name_the_key(kind, mutate, message):
    state_dict = torch.nn.LSTM(3, 5, num_layers=2).state_dict()
    mutate(state_dict)
    with pytest.raises(ValueError, match=message):
        from_torch(state_dict, kind=kind)


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match=r"prefix 'decoder.' matches no key.*\['encoder.lstm.'\]"):
        from_torch(Model().state_dict(), prefix="decoder.")
    with pytest.raises(ValueError, match="not a recurrent layer or cell"):
        from_torch(torch.nn.Linear(2, 3).state_dict())
    with pytest.raises(TypeError, match="not a torch recurrent module"):
        from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="source must be"):
        from_torch(42)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        from_torch(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown suffix"):
        from_torch(__file__)
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04trunc")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        from_torch(tmp_path / "truncated.pt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_torch(tmp_path / "corrupt.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, expected a state_dict"):
        from_torch(tmp_path / "list.pt")


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"weight_ih_l0": _Payload(str(marker))}, file, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True.*safetensors"):
        from_torch(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".msgpack"])
def test_cli_writes_flax_params_and_prints_configuration(tmp_path, suffix):
    model = Model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    dst = tmp_path / f"lstm{suffix}"
    result = subprocess.run(
        [sys.executable, "-m", "jaxrnn.convert", str(tmp_path / "model.pt"), str(dst), "--prefix", "encoder.lstm."],
        capture_output=True, text=True, check=True,
    )
    assert "jaxrnn.LSTM(3, 5, num_layers=2)" in result.stdout
    if suffix == ".safetensors":
        variables = from_torch(dst)
    else:
        variables = flax.serialization.msgpack_restore(dst.read_bytes())
    _check_lstm(variables, model)


@pytest.mark.parametrize("flags", [[], ["-OO"]], ids=["", "docstrings-stripped"])
def test_import_does_not_import_torch(tmp_path, flags):
    """The core, the Linen modules and the safetensors path of the converter need no torch, nor
    their docstrings (`python -OO` strips them)."""
    save_file(torch.nn.GRU(3, 4).state_dict(), tmp_path / "gru.safetensors")
    code = (
        "import sys, jaxrnn, jaxrnn.nnx, jaxrnn.convert\n"
        f"v = jaxrnn.convert.from_torch({str(tmp_path / 'gru.safetensors')!r})\n"
        "if v['params']['weight_ih_l0'].shape != (12, 3): sys.exit('wrong shape')\n"
        "if 'torch' in sys.modules: sys.exit('torch was imported')\n"
    )
    subprocess.run([sys.executable, *flags, "-c", code], check=True, env=os.environ | {"JAX_PLATFORMS": "cpu"})

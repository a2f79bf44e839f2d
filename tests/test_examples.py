"""Every example runs in its small mode, and the numbers it claims hold."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (Flax modules) look their module up there
    spec.loader.exec_module(module)
    return module


def test_torch_roundtrip():
    result = load("torch_roundtrip").main(small=True)
    assert result["logits_diff"] < 1e-5  # JAX on torch's weights gives torch's logits
    assert result["same_text"] == 1.0  # greedy generation with a carried state matches
    assert result["export_diff"] < 1e-5  # torch on the exported weights gives JAX's logits
    assert result["jax_loss"] < result["torch_loss"]  # fine-tuning in JAX went on learning


def test_silero_vad_matches_torchscript_chunk_by_chunk():
    result = load("silero_vad").main(plot=None)
    assert result["max_diff"] < 1e-4  # every chunk's speech probability, against TorchScript
    # The clip holds two synthesised sentences, starting at 0.8 s and 6.2 s.
    assert [round(start, 1) for start, _ in result["segments"]] == [0.8, 6.2]


def test_train_classifier_learns_variable_length_digits():
    result = load("train_classifier").main(epochs=6, plot=None)
    assert result["distinct_lengths"] > 10  # the sequences really differ in length
    assert result["last_loss"] < 0.7 * result["first_loss"]
    assert result["test_accuracy"] > 0.4  # chance is 0.1: 6 epochs reach 0.58, the full 30 reach 0.93


def test_multi_device_sharded_steps_equal_single_device():
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "multi_device.py"), "--json"],
        capture_output=True, text=True, env=env, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["max_param_diff"] < 1e-5 and result["max_loss_diff"] < 1e-5
    assert result["loss_decreased"]

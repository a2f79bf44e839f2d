"""Silero VAD (the production voice-activity model of the `silero-vad` package) in JAX.

The 16 kHz model is an STFT as a strided conv, four conv1d+relu layers, an LSTMCell(128, 128),
and a 1x1 conv with a sigmoid. Here the convolutions are `lax` calls, the LSTM is
`jaxrnn.LSTMCell` loaded with `jaxrnn.convert.from_torch(..., prefix=...)`, and every weight
comes from the package's TorchScript model, which is the reference: the audio streams in chunks
of 512 samples with 64 samples of context, the LSTM state carried from chunk to chunk by a
jitted step, and each chunk's speech probability is compared with TorchScript's.

    python examples/silero_vad.py [--audio speech.wav] [--plot silero_vad.png]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import warnings
import wave

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxrnn
from jaxrnn.convert import from_torch

RATE, CHUNK, CONTEXT = 16000, 512, 64
HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO = os.path.join(HERE, "data", "speech_16k.wav")


def read_wav(path: str) -> np.ndarray:
    with wave.open(path) as file:
        if (file.getframerate(), file.getnchannels(), file.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        return np.frombuffer(file.readframes(file.getnframes()), np.int16).astype(np.float32) / 32768


def load_torchscript() -> torch.jit.ScriptModule:
    # Located through the package's metadata: importing `silero_vad` from this script would
    # find the script itself.
    path = importlib.metadata.distribution("silero-vad").locate_file("silero_vad/data/silero_vad.jit")
    with warnings.catch_warnings():  # the package ships TorchScript, which torch now deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path))
    model.eval()
    return model


def jax_weights(state_dict) -> tuple[dict, dict]:
    """The convolutions' weights as arrays, and the LSTMCell's Flax variables."""
    def array(key):
        return jnp.asarray(state_dict[f"_model.{key}"].numpy())

    convs = {
        "stft": array("stft.forward_basis_buffer"),
        "encoder": [
            (array(f"encoder.{k}.reparam_conv.weight"), array(f"encoder.{k}.reparam_conv.bias"))
            for k in range(4)
        ],
        "head": (array("decoder.decoder.2.weight"), array("decoder.decoder.2.bias")),
    }
    return convs, from_torch(state_dict, prefix="_model.decoder.rnn.")


def _conv1d(x, weight, stride: int, padding: int):
    """torch's `F.conv1d` on (N, C, W) with an (O, I, K) weight."""
    return jax.lax.conv_general_dilated(
        x, weight, (stride,), [(padding, padding)], dimension_numbers=("NCH", "OIH", "NCH")
    )


CELL = jaxrnn.LSTMCell(128, 128)


@jax.jit
def vad_step(convs, lstm_variables, samples, state):
    """One chunk: `samples` (B, 64 + 512), `state` the LSTM's (h, c) -> (probability (B,), state)."""
    x = jnp.pad(samples, ((0, 0), (0, 64)), mode="reflect")[:, None]
    x = _conv1d(x, convs["stft"], stride=128, padding=0)
    half = x.shape[1] // 2
    x = jnp.sqrt(x[:, :half] ** 2 + x[:, half:] ** 2)
    for (weight, bias), stride in zip(convs["encoder"], (1, 2, 2, 1)):
        x = jax.nn.relu(_conv1d(x, weight, stride, padding=1) + bias[:, None])
    h, c = CELL.apply(lstm_variables, x[..., 0], state)
    weight, bias = convs["head"]
    logits = jax.nn.relu(h) @ weight[:, :, 0].T + bias
    return jax.nn.sigmoid(logits)[:, 0], (h, c)


def stream_jax(convs, lstm_variables, audio: np.ndarray) -> np.ndarray:
    """Chunk by chunk, as a live stream would arrive, carrying the context and the LSTM state."""
    state = (jnp.zeros((1, 128)), jnp.zeros((1, 128)))
    context = np.zeros(CONTEXT, np.float32)
    probabilities = []
    for start in range(0, len(audio), CHUNK):
        chunk = audio[start : start + CHUNK]
        samples = np.concatenate([context, chunk])[None]
        probability, state = vad_step(convs, lstm_variables, samples, state)
        probabilities.append(float(probability[0]))
        context = chunk[-CONTEXT:]
    return np.array(probabilities)


def stream_torchscript(model, audio: np.ndarray) -> np.ndarray:
    model.reset_states()
    with torch.no_grad():
        return np.array(
            [float(model(torch.from_numpy(audio[s : s + CHUNK])[None], RATE)) for s in range(0, len(audio), CHUNK)]
        )


def speech_segments(probabilities, threshold: float = 0.5, min_gap_s: float = 0.3):
    """(start, end) seconds of speech: above `threshold` to start, below `threshold - 0.15` to end."""
    segments, start = [], None
    for i, p in enumerate(probabilities):
        if start is None and p >= threshold:
            start = i
        elif start is not None and p < threshold - 0.15:
            segments.append([start, i])
            start = None
    if start is not None:
        segments.append([start, len(probabilities)])
    merged = []
    for seg in segments:
        if merged and (seg[0] - merged[-1][1]) * CHUNK / RATE < min_gap_s:
            merged[-1][1] = seg[1]
        else:
            merged.append(seg)
    return [(a * CHUNK / RATE, b * CHUNK / RATE) for a, b in merged]


def main(audio_path: str = AUDIO, plot: str | None = None) -> dict:
    audio = read_wav(audio_path)
    audio = np.pad(audio, (0, -len(audio) % CHUNK))
    model = load_torchscript()
    convs, lstm_variables = jax_weights(model.state_dict())
    ours = stream_jax(convs, lstm_variables, audio)
    reference = stream_torchscript(model, audio)
    max_diff = float(np.abs(ours - reference).max())
    segments = speech_segments(ours)
    print(f"{len(ours)} chunks of {CHUNK} samples; max |JAX - TorchScript| probability: {max_diff:.2e}")
    for start, end in segments:
        print(f"speech {start:6.2f} s -> {end:6.2f} s")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = np.arange(len(ours)) * CHUNK / RATE
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.plot(np.arange(len(audio)) / RATE, audio / np.abs(audio).max() * 0.5 + 0.5, color="0.8", lw=0.5)
        ax.plot(t, reference, lw=3, alpha=0.4, label="TorchScript")
        ax.plot(t, ours, lw=1, label="JAX (jaxrnn.LSTMCell)")
        for start, end in segments:
            ax.axvspan(start, end, color="tab:green", alpha=0.1)
        ax.set(xlabel="seconds", ylabel="speech probability", ylim=(0, 1))
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        print(f"wrote {plot}")
    return {"max_diff": max_diff, "segments": segments, "chunks": len(ours)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", default=AUDIO, help="16 kHz mono 16-bit WAV")
    parser.add_argument("--plot", default=os.path.join(HERE, "silero_vad.png"))
    args = parser.parse_args()
    main(args.audio, args.plot)

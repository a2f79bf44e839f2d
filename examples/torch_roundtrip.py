"""Torch checkpoint -> JAX -> torch, with a character-level LSTM language model.

1. Train Embedding -> 2-layer LSTM -> Linear in torch on a real text (the Zen of Python).
2. Save the whole model's state_dict; load only the LSTM into jaxrnn with `prefix="lstm."`,
   run the embedding and the head in Flax, and check the logits equal torch's.
3. Generate greedily one character at a time, carrying the LSTM state, in both: same text.
4. Fine-tune in JAX with optax; export with `to_torch` and check torch reproduces JAX's logits.

    python examples/torch_roundtrip.py [--small]
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jaxrnn
from jaxrnn.convert import from_torch, to_torch

with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
    import this
TEXT = codecs.decode(this.s, "rot13")  # the Zen of Python, shipped with every Python
VOCAB = sorted(set(TEXT))
IDS = np.array([VOCAB.index(c) for c in TEXT])


class TorchCharLM(torch.nn.Module):
    def __init__(self, vocab: int, hidden: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 16)
        self.lstm = torch.nn.LSTM(16, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        output, state = self.lstm(self.embed(ids), state)
        return self.head(output), state


class FlaxCharLM(nn.Module):
    """The same model in Flax: torch's LSTM weights as they are, via jaxrnn."""

    vocab: int
    hidden: int = 64

    @nn.compact
    def __call__(self, ids, state=None):
        output, state = jaxrnn.LSTM(16, self.hidden, num_layers=2, batch_first=True, name="lstm")(
            nn.Embed(self.vocab, 16, name="embed")(ids), state
        )
        return nn.Dense(self.vocab, name="head")(output), state


def batches(rng, batch: int, length: int):
    starts = rng.integers(0, len(IDS) - length - 1, batch)
    window = np.stack([IDS[s : s + length + 1] for s in starts])
    return window[:, :-1], window[:, 1:]


def train_torch(model, steps: int, rng):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        inputs, targets = map(torch.tensor, batches(rng, 16, 64))
        logits, _ = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def flax_variables(path: str):
    """The whole-model checkpoint into the Flax model's tree: jaxrnn reads the LSTM by prefix."""
    state_dict = torch.load(path, weights_only=True)
    return {
        "params": {
            "lstm": from_torch(path, prefix="lstm.")["params"],
            "embed": {"embedding": jnp.asarray(state_dict["embed.weight"].numpy())},
            "head": {
                "kernel": jnp.asarray(state_dict["head.weight"].numpy().T),
                "bias": jnp.asarray(state_dict["head.bias"].numpy()),
            },
        }
    }


def generate(step, state, first: str, length: int) -> str:
    """Greedy sampling, one character at a time, the recurrent state carried along."""
    text, current = first, VOCAB.index(first)
    for _ in range(length):
        logits, state = step(current, state)
        current = int(np.argmax(np.asarray(logits).reshape(-1)))
        text += VOCAB[current]
    return text


def main(small: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TorchCharLM(len(VOCAB))
    torch_loss = train_torch(model, 40 if small else 300, rng)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "charlm.pt")
        torch.save(model.state_dict(), path)
        variables = flax_variables(path)

    flax_model = FlaxCharLM(len(VOCAB))
    apply = jax.jit(flax_model.apply)
    inputs, targets = batches(rng, 8, 64)
    with torch.no_grad():
        torch_logits = model(torch.tensor(inputs))[0].numpy()
    logits_diff = float(np.abs(np.asarray(apply(variables, jnp.asarray(inputs))[0]) - torch_logits).max())

    def torch_step(current, state):
        with torch.no_grad():
            return model(torch.tensor([[current]]), state)

    def jax_step(current, state):
        return apply(variables, jnp.array([[current]]), state)

    length = 60 if small else 200
    torch_text = generate(torch_step, None, "B", length)
    jax_text = generate(jax_step, None, "B", length)

    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(variables)

    @jax.jit
    def train_step(variables, opt_state, inputs, targets):
        def loss_fn(variables):
            logits, _ = flax_model.apply(variables, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(variables)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(variables, updates), opt_state, loss

    for _ in range(20 if small else 200):
        variables, opt_state, jax_loss = train_step(variables, opt_state, *map(jnp.asarray, batches(rng, 16, 64)))

    model.lstm.load_state_dict(to_torch(variables["params"]["lstm"]), strict=True)
    model.embed.weight.data = torch.tensor(np.asarray(variables["params"]["embed"]["embedding"]))
    model.head.weight.data = torch.tensor(np.asarray(variables["params"]["head"]["kernel"]).T)
    model.head.bias.data = torch.tensor(np.asarray(variables["params"]["head"]["bias"]))
    with torch.no_grad():
        exported = model(torch.tensor(inputs))[0].numpy()
    export_diff = float(np.abs(np.asarray(apply(variables, jnp.asarray(inputs))[0]) - exported).max())

    print(f"torch training loss {torch_loss:.3f}; after fine-tuning in JAX {float(jax_loss):.3f}")
    print(f"logits, torch vs JAX on torch's weights: max abs diff {logits_diff:.2e}")
    print(f"greedy samples identical: {torch_text == jax_text}\n  {jax_text!r}")
    print(f"logits, JAX vs torch after to_torch export: max abs diff {export_diff:.2e}")
    return {
        "logits_diff": logits_diff,
        "export_diff": export_diff,
        "same_text": float(torch_text == jax_text),
        "torch_loss": torch_loss,
        "jax_loss": float(jax_loss),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="few training steps, as CI runs it")
    main(parser.parse_args().small)

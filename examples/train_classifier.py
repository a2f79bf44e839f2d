"""Train a bidirectional GRU classifier on variable-length sequences with optax.

The data are scikit-learn's bundled handwritten digits (1,797 images of 8x8), each read as the
sequence of its inked pixels in raster order, one step per pixel with (row, column, intensity):
images have different amounts of ink, so the sequences have different lengths (about 20 to 50),
which `seq_lengths=` handles. The classifier is a jaxrnn.GRU (bidirectional,
2 layers, dropout between them) with a Dense head on the final states of both directions.
`implementation="auto"` runs it on oneDNN's CPU kernels where they are installed, else on the
scan: the whole 30-epoch run took 27-28 s on 2 cores (each layer's two directions side by
side), against 56 s on the default scan, to the same test accuracy (0.929).

    python examples/train_classifier.py [--epochs 30] [--plot train_classifier.png]
"""

from __future__ import annotations

import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from tqdm import trange

import jaxrnn

HERE = os.path.dirname(os.path.abspath(__file__))


def digit_sequences():
    """(x (N, 64, 3) zero-padded pixel sequences, lengths (N,), labels (N,))."""
    digits = load_digits()
    images = digits.images / 16.0
    x = np.zeros((len(images), 64, 3), np.float32)
    lengths = np.zeros(len(images), np.int32)
    for n, image in enumerate(images):
        rows, cols = np.nonzero(image)
        x[n, : len(rows)] = np.stack([rows / 7, cols / 7, image[rows, cols]], axis=1)
        lengths[n] = len(rows)
    return x, lengths, digits.target.astype(np.int32)


class Classifier(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x, lengths, *, deterministic: bool):
        gru = jaxrnn.GRU(
            3, self.hidden, num_layers=2, batch_first=True, dropout=0.2, bidirectional=True, implementation="auto"
        )
        _, h_n = gru(x, seq_lengths=lengths, deterministic=deterministic)
        last = jnp.concatenate([h_n[-2], h_n[-1]], axis=-1)  # last layer, both directions
        return nn.Dense(10)(last)


def main(epochs: int = 30, plot: str | None = None) -> dict:
    x, lengths, labels = digit_sequences()
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    model = Classifier()
    params = model.init(jax.random.key(0), x[:2], lengths[:2], deterministic=True)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, x, lengths, labels, key):
        def loss_fn(params):
            logits = model.apply(params, x, lengths, deterministic=False, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, lengths, labels):
        logits = model.apply(params, x, lengths, deterministic=True)
        return jnp.mean(jnp.argmax(logits, -1) == labels)

    batch, losses, key = 100, [], jax.random.key(1)
    rng = np.random.default_rng(1)
    for _ in trange(epochs, desc="training"):
        for idx in np.array_split(rng.permutation(train), len(train) // batch):
            key, step_key = jax.random.split(key)
            params, opt_state, loss = train_step(params, opt_state, x[idx], lengths[idx], labels[idx], step_key)
            losses.append(float(loss))
    test_accuracy = float(accuracy(params, x[test], lengths[test], labels[test]))
    print(f"sequence lengths {lengths.min()}..{lengths.max()}; test accuracy {test_accuracy:.3f}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(losses)
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title=f"test accuracy {test_accuracy:.3f}")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        print(f"wrote {plot}")
    return {"test_accuracy": test_accuracy, "first_loss": losses[0], "last_loss": losses[-1],
            "distinct_lengths": len(set(lengths.tolist()))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plot", default=os.path.join(HERE, "train_classifier.png"))
    args = parser.parse_args()
    main(args.epochs, args.plot)

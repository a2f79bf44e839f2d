"""The shared configuration matrix: a 3-wise covering array over every option of the layers.

Each row is one configuration; every combination of values of any three options appears in
some row, so interactions up to three options are tested without the full product.
"""

from __future__ import annotations

import itertools
import platform
import random

import jax
import pytest

OPTIONS = {
    "kind": ["rnn_tanh", "rnn_relu", "lstm", "gru"],
    "num_layers": [1, 2],
    "bidirectional": [False, True],
    "bias": [True, False],
    "batch_first": [False, True],
    "proj": [False, True],  # proj_size > 0 (LSTM only: other kinds ignore it)
    "unbatched": [False, True],
    "h0": [False, True],
    "seq_lengths": [False, True],
    "dtype": ["float32", "float64"],
    "backward": ["fused", "autodiff", "remat"],  # custom VJP, autodiff through scan, chunks of 2
}


BACKEND = jax.default_backend()
# implementation="onednn" runs on the CPU backend where its wheel exists: x86-64 Linux.
ONEDNN_PLATFORM = BACKEND == "cpu" and (platform.system(), platform.machine()) == ("Linux", "x86_64")
onednn_platform = pytest.mark.skipif(not ONEDNN_PLATFORM, reason="oneDNN runs on the CPU backend of x86-64 Linux")


def covering_rows(options: dict[str, list], frontends: list[str], strength: int = 3, seed: int = 0):
    """Greedy `strength`-wise covering array over `options` plus a `frontend` factor."""
    factors = dict(options, frontend=frontends)
    names = list(factors)
    uncovered = {
        (combo, values)
        for combo in itertools.combinations(range(len(names)), strength)
        for values in itertools.product(*(range(len(factors[names[i]])) for i in combo))
    }
    rows, rand = [], random.Random(seed)
    while uncovered:
        best, best_hits = None, -1
        for _ in range(60):
            row = tuple(rand.randrange(len(factors[n])) for n in names)
            hits = sum(
                (combo, tuple(row[i] for i in combo)) in uncovered
                for combo in itertools.combinations(range(len(names)), strength)
            )
            if hits > best_hits:
                best, best_hits = row, hits
        uncovered -= {
            (combo, tuple(best[i] for i in combo))
            for combo in itertools.combinations(range(len(names)), strength)
        }
        rows.append({n: factors[n][v] for n, v in zip(names, best)})
    return rows


def row_id(row: dict) -> str:
    flags = [k for k, v in row.items() if v is True]
    parts = [row["frontend"], row["kind"], f"L{row['num_layers']}", row["dtype"][-2:], row["backward"]]
    return "-".join(parts + flags)

"""Time jaxrnn's default loop at each `unroll` (time steps per loop iteration) on this device.

    python benchmarks/unroll.py                    # CPU
    BENCH_DEVICE=gpu python benchmarks/unroll.py   # GPU

`unroll=None` picks 1 on CPU and 8 on accelerators from this sweep (benchmarks/RESULTS_GPU.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import functional_runner  # noqa: E402
from run import interleaved_turns, median_ms  # noqa: E402  (sets the device and thread count first)

# isort: split
import jax  # noqa: E402

UNROLLS = (1, 2, 4, 8, 16)
ROWS = [("lstm", 32, 100, 128), ("lstm", 1, 1000, 64), ("lstm", 8, 500, 256), ("lstm", 64, 50, 512),
        ("gru", 32, 100, 128), ("gru", 1, 1000, 64), ("rnn", 32, 100, 128), ("rnn", 1, 1000, 64)]


def main():
    print(f"{jax.devices()[0].device_kind}: median ms per unroll")
    for kind, B, T, H in ROWS:
        for backward in (False, True):
            runs = {u: functional_runner(kind, B, T, H, backward, unroll=u) for u in UNROLLS}
            for run in runs.values():
                run()  # compiles
            ms = median_ms(interleaved_turns(runs, repeats=9))
            mode = "fwd+bwd" if backward else "fwd"
            print(f"{kind.upper()} {B}/{T}/{H} {mode}: " + " | ".join(f"{u}: {ms[u]:.2f}" for u in UNROLLS), flush=True)


if __name__ == "__main__":
    main()

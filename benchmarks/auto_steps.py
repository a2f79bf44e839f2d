"""Time `implementation="onednn"` against the default scan on short sequences and small steps,
on this CPU.

    python benchmarks/auto_steps.py

oneDNN's call costs a few tenths of a millisecond more than the scan's at any length, which a
short sequence does not make up, and a small step gains nothing from a second core;
`implementation="auto"` keeps the scan where this sweep finds it faster (`PREFERRED_MIN_STEPS`
and `PREFERRED_MIN_WORK` in jaxrnn/functional/_onednn.py).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import functional_runner  # noqa: E402
from run import interleaved_turns, median_ms  # noqa: E402  (sets the device and thread count first)

STEPS = (4, 8, 16, 32, 100)
ROWS = [  # (kind, B, H = input)
    ("lstm", 8, 128), ("lstm", 32, 128), ("lstm", 8, 256), ("lstm", 32, 256), ("gru", 8, 128), ("gru", 32, 128),
    ("gru", 8, 256), ("rnn", 8, 256), ("rnn", 32, 256),
    # Small steps, whose work (T * B * gates * H * H) reaches PREFERRED_MIN_WORK over 85-683 steps
    ("lstm", 8, 32), ("lstm", 8, 64), ("lstm", 32, 32),
    ("gru", 8, 32), ("gru", 8, 64), ("gru", 32, 32), ("gru", 64, 32),
]


def main():
    print("oneDNN's median time over the scan's (the scan's ms), per number of steps T")
    for kind, B, H in ROWS:
        for backward in (False, True):
            cells = []
            for T in STEPS:
                runs = {i: functional_runner(kind, B, T, H, backward, implementation=i) for i in ("xla", "onednn")}
                for run in runs.values():
                    run()  # compiles
                ms = median_ms(interleaved_turns(runs, repeats=15))
                cells.append(f"T={T}: {ms['onednn'] / ms['xla']:.2f} ({ms['xla']:.2f})")
            mode = "fwd+bwd" if backward else "fwd"
            print(f"{kind.upper()} B={B} H={H} {mode}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()

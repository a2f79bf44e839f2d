"""Forward+backward of a long sequence: peak memory and time, with and without `remat`, on the
scan and on oneDNN (`implementation="onednn"`, which `"auto"` picks here) where it is installed.

    python benchmarks/long_sequence.py            # LSTM B=16, T=20000, H=256
    python benchmarks/long_sequence.py --T 2000   # shorter

Each configuration runs in its own process so that its peak RSS is its own; the table goes to
benchmarks/LONG_SEQUENCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = 2


# (label, peer, jaxrnn.LSTM's options)
RUNS = [
    ("torch", "torch", {}),
    ("jaxrnn remat=False", "jaxrnn", {"remat": False}),
    ("jaxrnn remat=True", "jaxrnn", {"remat": True}),
    ("jaxrnn onednn remat=False", "jaxrnn", {"implementation": "onednn"}),
    ("jaxrnn onednn remat=True", "jaxrnn", {"implementation": "onednn", "remat": True}),
]


def measure(peer: str, options: dict, B: int, T: int, H: int, repeats: int = 3) -> dict:
    """Runs in a child process: one warm-up (compile), then the median of `repeats` timed
    forward+backward runs."""
    import numpy as np

    x_np = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    if peer == "torch":
        import torch

        torch.set_num_threads(THREADS)
        module = torch.nn.LSTM(H, H)
        x = torch.tensor(x_np, requires_grad=True)

        def run():
            module.zero_grad()
            module(x)[0].sum().backward()
    else:
        import jax
        import jax.numpy as jnp

        import jaxrnn

        model = jaxrnn.LSTM(H, H, **options)
        x = jnp.asarray(x_np)
        variables = model.init(jax.random.key(0), x[:2])
        grad = jax.jit(jax.grad(lambda v, x: model.apply(v, x)[0].sum(), argnums=(0, 1)))

        def run():
            jax.block_until_ready(grad(variables, x))

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "peak_gb": peak_gb}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--T", type=int, default=20000)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peer, options = args.child
        print(json.dumps(measure(peer, json.loads(options), args.B, args.T, args.H)))
        return
    env = os.environ | {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
    }
    rows = []
    for label, peer, options in RUNS:
        out = subprocess.run(
            [sys.executable, __file__, "--B", str(args.B), "--T", str(args.T), "--H", str(args.H),
             "--child", peer, json.dumps(options)],
            capture_output=True, text=True, env=env,
        )
        if out.returncode:  # left out, its error shown (oneDNN, for one, may not be installed)
            print(f"{label}: failed: {out.stderr.strip().splitlines()[-1][:300]}", flush=True)
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((label, result))
        print(f"{label:26s} {result['seconds']:7.2f} s  peak RSS {result['peak_gb']:5.2f} GB", flush=True)
    lines = [
        "# Long sequences: LSTM forward+backward",
        "",
        f"B={args.B}, T={args.T}, H={args.H}, float32, CPU, {THREADS} threads; median of 3 timed runs "
        "after a warm-up; peak RSS of the whole process (runtime included). "
        "Produced by `python benchmarks/long_sequence.py`.",
        "",
        "| run | seconds | peak RSS GB |",
        "|---|---|---|",
    ] + [f"| {label} | {r['seconds']:.2f} | {r['peak_gb']:.2f} |" for label, r in rows]
    with open(os.path.join(HERE, "LONG_SEQUENCE.md"), "w") as file:
        file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

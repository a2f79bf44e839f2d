"""Benchmark jaxrnn against torch, Flax's nn.RNN and Equinox cells; write RESULTS.md and a figure.

    python benchmarks/run.py                    # the full grid (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick            # tiny sizes, as CI runs it
    python benchmarks/run.py --dtype bfloat16   # every peer in bfloat16 (RESULTS_BFLOAT16.md)
    BENCH_DEVICE=gpu python benchmarks/run.py   # on a CUDA GPU, against cuDNN
    BENCH_PEERS=torch,jaxrnn python benchmarks/run.py   # only these peers

The table is rewritten after every row, so a run cut short leaves the rows it measured.

Every peer runs on the same torch weights and inputs with the same thread count; times are
medians of `--repeats` runs after a warm-up call, compile time (first call) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
GPU = os.environ.get("BENCH_DEVICE", "cpu") == "gpu"
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
)
os.environ.setdefault("JAX_PLATFORMS", "cuda" if GPU else "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from peers import GPU_PEERS, PEERS, IsolatedRunner  # noqa: E402

from jaxrnn.functional import RecurrentSpec  # noqa: E402
from jaxrnn.functional._onednn import preferred  # noqa: E402

PEERS = GPU_PEERS if GPU else PEERS
if os.environ.get("BENCH_PEERS"):  # a comma-separated subset, for a short run on a lent device
    chosen = os.environ["BENCH_PEERS"].split(",")
    unknown = [name for name in chosen if name not in PEERS]
    ours_chosen = [name for name in chosen if name.startswith("jaxrnn")]
    if unknown or not ours_chosen or len(ours_chosen) == len(chosen):
        raise SystemExit(
            f"BENCH_PEERS must name a jaxrnn implementation and a peer to compare it with, "
            f"among {list(PEERS)}; got {chosen}"
        )
    PEERS = {name: PEERS[name] for name in chosen}
OURS = [name for name in PEERS if name.startswith("jaxrnn")]  # jaxrnn's implementations
OTHERS = [name for name in PEERS if name not in OURS]

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [(32, 100, 128), (8, 500, 256), (64, 50, 512), (1, 1000, 64)]
QUICK_SIZES = [(4, 20, 16)]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Timed calls of each peer a row: 10 turns of 3, so that a slow spell of the machine moves a
# median less. In two runs of 5 turns on a quiet 2-core host, the worst oneDNN LSTM row (the
# same kernel as torch's) measured 1.09x and 1.29x torch, the latter's turns 0.96-1.67x; in two
# runs of 10 after them, 1.08x and 1.05x.
REPEATS = 30
WARM_S = 0.05  # seconds of untimed calls before each turn (`interleaved_turns`)


def cases(quick: bool):
    """(kind, mode, B, T, H, num_layers, bidirectional, seq_lengths) rows."""
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    for kind in ("lstm", "gru", "rnn"):
        for mode in ("fwd", "fwd+bwd"):
            for B, T, H in sizes:
                rows.append((kind, mode, B, T, H, 1, False, False))
            B, T, H = sizes[0]
            rows.append((kind, mode, B, T, H, 2, True, False))  # 2-layer bidirectional
            rows.append((kind, mode, B, T, H, 1, False, True))  # variable lengths
    return rows


def _seconds(run) -> float:
    """Seconds of one call of `run`: as its own process timed it for a run in a process of its
    own (`IsolatedRunner`), as every other peer is timed in this one."""
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    return run.seconds if isinstance(run, IsolatedRunner) else elapsed


def interleaved_turns(runs: dict, repeats: int, block: int = 3, warm_s: float = WARM_S) -> dict[str, list[list[float]]]:
    """Seconds of each (already compiled) run's calls, turn by turn.

    Peers take turns in blocks of `block` timed calls, each block after untimed calls that
    last `warm_s` seconds or more (one at least): the turns spread a slow spell of a shared
    machine over every peer, and the untimed calls bring each peer to its steady state after
    the one before it (torch's OpenMP workers, for one, keep spinning for a while after a
    call, and whichever peer follows torch pays for it). One untimed call was not enough for
    short calls: on a 2-core EPYC host, jaxrnn's RNN 32/100/128 forward took 3.4-3.6 ms right
    after torch's turn and 2.5 after 50 ms of untimed calls (Flax's, after jaxrnn's, 3.2-3.4
    and 2.9-3.1), which had put that row at 0.99-1.11x Flax's time in three A/Bs instead of
    0.81-0.86x; a 20 ms pause before the one call gave 0.87-1.04x.
    """
    turns = {name: [] for name in runs}
    for _ in range(-(-repeats // block)):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            while time.perf_counter() - start < warm_s:
                run()
            turns[name].append([_seconds(run) for _ in range(block)])
    return turns


def median_ms(turns: dict[str, list[list[float]]]) -> dict[str, float]:
    """Median ms of each run over all its turns (`interleaved_turns`)."""
    return {name: float(np.median(np.concatenate(t))) * 1e3 for name, t in turns.items()}


def matmul_peak_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """The machine's large-matmul rate: the best of `repeats` `n x n` matmuls in `dtype` by XLA
    (into float32, as jaxrnn's) and, on CPU, by torch (whose BLAS can be the faster), so that no
    row's fraction of it exceeds 1."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    runs = [lambda: f(a).block_until_ready()]
    if not GPU:
        t = torch.ones(n, n, dtype=getattr(torch, dtype))
        runs.append(lambda: t @ t)
    best = min(min(_seconds(run) for _ in range(repeats + 1)) for run in runs)
    return 2 * n**3 / best / 1e9


def stolen_fraction(start) -> float | None:
    """The share of the CPUs' time since `start` (a `psutil.cpu_times()`) that the hypervisor
    gave to other machines (`steal`), where the system reports it (Linux); else None."""
    now = psutil.cpu_times()
    total = sum(now) - sum(start)
    return (now.steal - start.steal) / total if hasattr(now, "steal") and total > 0 else None


def flops(kind, mode, B, T, H, num_layers, bidirectional) -> float:
    """Matmul FLOPs: 2 * T * B * (I + H) * G * H per layer and direction; backward twice that."""
    D = 2 if bidirectional else 1
    total = 0.0
    for layer in range(num_layers):
        size = H if layer == 0 else D * H
        total += D * 2 * T * B * (size + H) * GATES[kind] * H
    return total * (3 if mode == "fwd+bwd" else 1)


def measure(row, repeats: int, rng, dtype: str) -> dict:
    kind, mode, B, T, H, num_layers, bidirectional, varlen = row
    torch_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    module = torch_cls(H, H, num_layers=num_layers, bidirectional=bidirectional).to(getattr(torch, dtype))
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, B) if varlen else None
    if varlen:
        lengths[0] = T
    backward = mode == "fwd+bwd"
    runs, first_call = {}, {}
    for name, builder in PEERS.items():
        try:
            run = builder(module, x, lengths, backward, **({"kind": kind} if name in ("flax", "equinox") else {}))
            if run is not None:
                first_call[name] = _seconds(run)  # compiles
                runs[name] = run
        except Exception as error:  # a peer that cannot run this row is left out of it, its error shown
            print(f"{label(row)}: {name} failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    turns = interleaved_turns(runs, repeats)
    result = median_ms(turns)
    result |= {f"{name}_compile": max(seconds - result[name] * 1e-3, 0.0) for name, seconds in first_call.items()}
    for run in runs.values():
        getattr(run, "close", lambda: None)()
    result["best"] = min(result[name] for name in OURS if name in result)
    if not GPU:  # `implementation="auto"`: the measured time of the implementation it picks here
        spec = RecurrentSpec(kind, H, H, num_layers, bidirectional=bidirectional)
        auto = "jaxrnn onednn" if preferred(spec, jnp.dtype(dtype), B, T, backward) else "jaxrnn"
        if auto in result:
            result["auto"] = result[auto]
            # Each turn's ratio (medians of its calls): how far the machine moves the row's ratio.
            result["auto_turns"] = {
                peer: [float(np.median(a) / np.median(b)) for a, b in zip(turns[auto], turns[peer])]
                for peer in OTHERS if peer in turns
            }
    result["gflops"] = flops(kind, mode, B, T, H, num_layers, bidirectional) / (result["best"] * 1e-3) / 1e9
    return result


def label(row) -> str:
    kind, mode, B, T, H, num_layers, bidirectional, varlen = row
    extra = " 2L-bi" if bidirectional else (" lengths" if varlen else "")
    return f"{kind.upper()} {B}/{T}/{H}{extra} {mode}"


def geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def ratio(r: dict, ours: str, peer: str) -> float | None:
    return r[ours] / r[peer] if ours in r and peer in r else None


def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def machine() -> str:
    if GPU:
        return f"GPU ({jax.devices()[0].device_kind}, torch on cuDNN)"
    return f"CPU, {THREADS} threads for every peer (XLA intra-op threads, `torch.set_num_threads`)"


AUTO_NOTE = "" if GPU else "; jaxrnn auto: `implementation='auto'`, the time of the implementation it picks for the row"


def compile_seconds(r: dict) -> str:
    """The default jaxrnn's compile time, else that of the first jaxrnn implementation measured."""
    name = next((name for name in ("jaxrnn", *OURS) if f"{name}_compile" in r), None)
    return "n/a" if name is None else f"{r[name + '_compile']:.1f}"


def write_table(rows, results, peak, steal, path_md, quick, repeats, dtype):
    """RESULTS.md of the rows measured so far (`results` may be shorter than `rows`)."""
    pairs = [(ours, peer) for peer in OTHERS for ours in OURS]
    short = {name: name.removeprefix("jaxrnn").strip() or "default" for name in OURS}
    env_peers = f"BENCH_PEERS={shlex.quote(','.join(PEERS))} " if os.environ.get("BENCH_PEERS") else ""
    described = ", ".join(f"{n}: `implementation={short[n]!r}`" if n != "jaxrnn" else f"{n}: the default" for n in OURS)
    lines = [
        "# Benchmark results",
        "",
        f"{machine()}; "
        f"{dtype}; jax {jax.__version__}, torch {torch.__version__}; medians of {repeats} or more calls, "
        f"timed in turns of 3 per peer, each turn after {WARM_S * 1e3:.0f} ms or more of untimed calls. "
        "Ratio = jaxrnn time / peer time (< 1: jaxrnn is faster), for each of jaxrnn's implementations "
        f"({described}{AUTO_NOTE}). "
        f"Large-matmul peak on this machine: {peak:.0f} GFLOP/s (the best {dtype} matmul of XLA"
        f"{'' if GPU else ' and torch'}); GFLOP/s of the faster jaxrnn. "
        + ("" if steal is None else f"CPU time taken by the hypervisor during the run (`steal`): {steal:.1%}"
           " (from a few percent on, ratios of a few percent are noise). ")
        + f"Produced by `{'BENCH_DEVICE=gpu ' if GPU else ''}{env_peers}python benchmarks/run.py"
        f"{' --quick' if quick else ''}{'' if repeats == REPEATS else f' --repeats {repeats}'}"
        f"{'' if dtype == 'float32' else f' --dtype {dtype}'}`."
        + ("" if len(results) == len(rows) else f" **Partial: {len(results)} of {len(rows)} rows (the run stopped).**"),
        "",
        "| case (B/T/H) | " + " | ".join(f"{p} ms" for p in PEERS)
        + " | " + " | ".join(f"{short[o]} /{p}" for o, p in pairs) + " | GFLOP/s (of peak) | compile s |",
        "|---" * (1 + len(PEERS) + len(pairs) + 2) + "|",
    ]
    for row, r in zip(rows, results):
        lines.append(
            f"| {label(row)} | "
            + " | ".join(cell(r.get(p)) for p in PEERS) + " | "
            + " | ".join(cell(ratio(r, o, p)) for o, p in pairs)
            + f" | {r['gflops']:.0f} ({r['gflops'] / peak:.0%}) | {compile_seconds(r)} |"
        )
    lines += ["", "| ratio | rows | worst | geometric mean |", "|---|---|---|---|"]
    summaries = {**{ours: ours for ours in OURS}, "auto": "jaxrnn auto", "best": "faster jaxrnn"}
    for ours, name in summaries.items():
        for peer in OTHERS:
            measured = [(ratio(r, ours, peer), row) for row, r in zip(rows, results) if r.get(ours) and peer in r]
            if measured:
                worst, worst_row = max(measured, key=lambda m: m[0])
                lines.append(
                    f"| {name} / {peer} | {len(measured)} | {worst:.2f} ({label(worst_row)}) "
                    f"| {geomean([m[0] for m in measured]):.2f} |"
                )
    lines += slower_rows(rows, results)
    with open(path_md, "w") as file:
        file.write("\n".join(lines) + "\n")


def slower_rows(rows, results) -> list[str]:
    """Lines of a table of the rows where jaxrnn auto is slower than a peer, each with the ratio
    in each turn of the run: how much of the miss the machine's drift between turns covers."""
    misses = [
        (row, peer, r["auto"] / r[peer], turns)
        for row, r in zip(rows, results)
        for peer, turns in r.get("auto_turns", {}).items()
        if r["auto"] > r[peer]
    ]
    if not misses:
        return []
    lines = [
        "",
        "Rows where jaxrnn auto is slower than a peer, with its ratio in each turn of the run "
        "(the medians of the turn's 3 calls of each):",
        "",
        "| case | peer | ratio | per turn, lowest to highest | turns below 1 |",
        "|---|---|---|---|---|",
    ]
    for row, peer, value, turns in misses:
        below = sum(t < 1 for t in turns)
        lines.append(
            f"| {label(row)} | {peer} | {value:.2f} | {' '.join(f'{t:.2f}' for t in sorted(turns))} "
            f"| {below} of {len(turns)} |"
        )
    return lines


def write_figure(rows, results, path_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # On CPU what `implementation="auto"` picks, one setting for every row; elsewhere the faster.
    ours = "auto" if all("auto" in r for r in results) else "best"
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.8), layout="constrained")
    y = np.arange(len(rows))
    height = 0.8 / len(OTHERS)
    for i, p in enumerate(OTHERS):
        ratios = [ratio(r, ours, p) or np.nan for r in results]
        ax.barh(y + (i - (len(OTHERS) - 1) / 2) * height, ratios, height=height, label=f"vs {p}")
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y, [label(row) for row in rows], fontsize=7)
    ax.invert_yaxis()
    who = 'jaxrnn, implementation="auto"' if ours == "auto" else "the faster jaxrnn implementation"
    ax.set_xlabel(f"time of {who} / peer time (log; left of 1 = jaxrnn faster)")
    ax.set_title(f"jaxrnn against its peers, {machine().split(';')[0].split(' for ')[0]}")
    fig.legend(loc="outside lower center", ncols=len(OTHERS))  # below the axes, over no bar
    fig.savefig(path_png, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed calls of each peer a row")
    parser.add_argument("--only", default="", help="run rows whose label contains this text")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the dtype of every peer's weights and inputs")
    parser.add_argument("--out", default=HERE, help="folder for RESULTS.md and results.png (_GPU, _gpu on a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    rows = [r for r in cases(args.quick) if args.only in label(r)]
    peak = matmul_peak_gflops(args.dtype, 256 if args.quick else 2048, args.repeats)
    os.makedirs(args.out, exist_ok=True)
    suffix = ("_GPU" if GPU else "") + ("" if args.dtype == "float32" else f"_{args.dtype.upper()}")
    path_md = os.path.join(args.out, f"RESULTS{suffix}.md")
    results, start = [], psutil.cpu_times()
    console = Console()
    for row in track(rows, description="benchmarking", console=console):
        results.append(measure(row, args.repeats, rng, args.dtype))
        r = results[-1]
        console.print(
            f"{label(row):32s} " + " | ".join(f"{p} {r[p]:8.2f}" for p in PEERS if p in r)
            + " | faster jaxrnn / " + " ".join(f"{p} {ratio(r, 'best', p):.2f}" for p in OTHERS if p in r)
        )
        write_table(rows, results, peak, stolen_fraction(start), path_md, args.quick, args.repeats, args.dtype)
    write_figure(rows, results, os.path.join(args.out, f"results{suffix.lower()}.png"))


if __name__ == "__main__":
    main()

"""The benchmark harness: one quick row writes its table and figure; bad peer choices are
refused; the table of the rows where jaxrnn is slower."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent.parent / "benchmarks" / "run.py"


def test_quick_benchmark_writes_results(tmp_path):
    """One quick row in each dtype writes its table and figure. The two runs go at once: each
    mostly imports and compiles, on one core."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        command = [sys.executable, str(HARNESS), "--quick", "--repeats", "2", "--only", "LSTM 4/20/16 fwd+bwd",
                   "--dtype", dtype, "--out", str(tmp_path / dtype)]
        with (tmp_path / f"{dtype}.log").open("w") as log:  # the process keeps its own handle on it
            runs[dtype] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    for dtype, suffix in (("float32", ""), ("bfloat16", "_BFLOAT16")):
        assert runs[dtype].wait() == 0, (tmp_path / f"{dtype}.log").read_text()
        table = (tmp_path / dtype / f"RESULTS{suffix}.md").read_text()
        assert f"; {dtype}; " in table and "| LSTM 4/20/16 fwd+bwd |" in table
        assert ("(`steal`): " in table) == sys.platform.startswith("linux")
        for ratio in ("jaxrnn / torch", "jaxrnn onednn / torch", "jaxrnn auto / torch", "jaxrnn / flax",
                      "jaxrnn / equinox"):
            assert f"| {ratio} | 1 |" in table
        assert (tmp_path / dtype / f"results{suffix.lower()}.png").stat().st_size > 1000


def load_harness(monkeypatch, **env):
    """benchmarks/run.py as a module, imported with `env` in an environment of its own (it sets
    its defaults there)."""
    monkeypatch.setattr(os, "environ", dict(os.environ, **env))
    spec = importlib.util.spec_from_file_location("benchmark_run", HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return harness


@pytest.mark.parametrize("peers", ["torch,cudnn", "jaxrnn,jaxrnn onednn"])  # an unknown name; nothing to compare with
def test_bench_peers_refuses_what_it_cannot_compare(peers, monkeypatch):
    with pytest.raises(SystemExit) as refusal:
        load_harness(monkeypatch, BENCH_PEERS=peers)
    message = str(refusal.value)
    assert "BENCH_PEERS must name a jaxrnn implementation and a peer to compare it with, among ['torch'" in message
    assert f"got {peers.split(',')}" in message


def test_slower_rows_lists_each_miss_with_its_turns(monkeypatch):
    harness = load_harness(monkeypatch)
    rows = [("lstm", "fwd", 32, 100, 128, 1, False, False), ("gru", "fwd+bwd", 8, 500, 256, 2, True, False)]
    results = [
        {"auto": 1.1, "torch": 1.0, "flax": 1.2, "auto_turns": {"torch": [1.2, 0.9, 1.1], "flax": [0.9, 0.95, 0.9]}},
        {"auto": 0.5, "torch": 1.0, "auto_turns": {"torch": [0.5, 0.6]}},
    ]
    lines = harness.slower_rows(rows, results)
    assert [line for line in lines if line.startswith("| ") and "---" not in line][1:] == [
        "| LSTM 32/100/128 fwd | torch | 1.10 | 0.90 1.10 1.20 | 1 of 3 |"
    ]
    assert harness.slower_rows(rows[1:], results[1:]) == []


def test_turns_start_after_warm_s_of_untimed_calls(monkeypatch):
    """Each turn's timed block follows untimed calls until `warm_s` has passed (one at least):
    on a clock that each call moves by 1/64 s (exact in binary), 4 untimed calls before each
    block of 3 timed ones at warm_s=1/16, and 1 at warm_s=0."""
    harness = load_harness(monkeypatch)
    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock["now"])

    def run():
        clock["now"] += 1 / 64
        clock["calls"] += 1

    for warm_s, untimed in ((1 / 16, 4), (0.0, 1)):
        clock["calls"] = 0
        turns = harness.interleaved_turns({"a": run, "b": run}, repeats=6, block=3, warm_s=warm_s)
        assert clock["calls"] == 2 * 2 * (untimed + 3)  # 2 peers, 2 turns each
        assert turns["a"] == turns["b"] == [[1 / 64] * 3] * 2

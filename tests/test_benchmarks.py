"""The benchmark harness runs (one quick row) and writes its table and figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).parent.parent / "benchmarks" / "run.py"


def test_quick_benchmark_writes_results(tmp_path):
    subprocess.run(
        [sys.executable, str(HARNESS), "--quick", "--repeats", "2", "--only", "LSTM 4/20/16 fwd+bwd", "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| LSTM 4/20/16 fwd+bwd |" in table
    assert "| jaxrnn / torch | 1 |" in table and "| jaxrnn onednn / torch | 1 |" in table
    assert "| jaxrnn auto / torch | 1 |" in table
    assert (tmp_path / "results.png").stat().st_size > 1000

"""Property-based parity with torch over the whole configuration space and over sizes.

CI runs a bounded profile; `HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py` runs
300 examples.
"""

from __future__ import annotations

import numpy as np
from frontends import FRONTENDS
from hypothesis import given
from hypothesis import strategies as st
from matrix import BACKEND, ONEDNN_PLATFORM, OPTIONS
from test_parity import check_layer_against_torch

rows = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in OPTIONS.items()} | {"frontend": st.sampled_from(FRONTENDS)})


@given(
    row=rows,
    T=st.integers(1, 7),
    B=st.integers(1, 4),
    input_size=st.integers(1, 5),
    hidden_size=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    # Pallas at any size runs in its interpreter; on GPU, Triton compiles power-of-two sizes only.
    implementation=st.sampled_from(["xla"] + ["pallas"] * (BACKEND == "cpu") + ["onednn"] * ONEDNN_PLATFORM),
)
def test_fuzzed_layer_matches_torch(row, T, B, input_size, hidden_size, seed, implementation):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    if row["backward"] == "autodiff":  # the Pallas kernel has only its custom VJP
        implementation = "xla"
    lstm_proj = row["proj"] and row["kind"] == "lstm"
    onednn_covers = row["dtype"] == "float32" and row["backward"] == "fused" and not row["seq_lengths"] and not lstm_proj
    if implementation == "onednn" and not onednn_covers:
        implementation = "xla"
    check_layer_against_torch(
        row, rng, T=T, B=B, INPUT=input_size, HIDDEN=hidden_size, LENGTHS=lengths, implementation=implementation
    )

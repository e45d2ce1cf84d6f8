"""Smoke test of the MRD speed benchmark (the others need the trained builtin models: minutes, not seconds)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mrd_speed_quick_runs_and_batched_scorer_matches_naive_algorithm1():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mrd_speed.py"), "--quick"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for tag in ("(1)", "(2)", "(3)", "(4)"):
        assert tag in out, out
    # same δ_k, same samples: the batched scorer and the literal per-sample loop rank samples identically
    spearman = float(re.search(r"\(1\) batched vs naive.*?Spearman ([0-9.]+)", out).group(1))
    max_rel = float(re.search(r"max rel\. diff ([0-9.e+-]+)", out).group(1))
    assert spearman > 0.999 and max_rel < 1e-2, out

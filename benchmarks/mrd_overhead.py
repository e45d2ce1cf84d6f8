"""Whole-run overhead of the MRD curriculum: the same NPO run with and without ``MRDCurriculum``.

Paper settings: recompute every m=2 epochs with K Monte-Carlo perturbations (default K=100, sigma=1e-5),
6 epochs of forget10 on the builtin target model; also the analytic estimator (one backward per sample).
Prints each run's wall time and the overhead ratio.

    python benchmarks/mrd_overhead.py [--epochs 6] [--samples 100]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import DemoSettings, UnlearnSpec, cached_finetune, target_config, unlearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=100, help="K perturbations per scoring")
    parser.add_argument("--out", default="outputs/mrd_overhead")
    args = parser.parse_args()
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, _ = cached_finetune("target", target_config(), tokenizer, progress=False)
    settings = DemoSettings(unlearn_epochs=args.epochs, mrd_samples=args.samples, mrd_every_n_epochs=2)
    times = {}
    for label, spec in (("NPO", UnlearnSpec("NPO", "NPO")), ("NPO+MRD", UnlearnSpec("NPO+MRD", "NPO", mrd=True))):
        start = time.perf_counter()
        unlearn(spec, target, "builtin:tofu-mini", "forget10", Path(args.out) / label.replace("+", "_"), settings,
                progress=False)
        times[label] = time.perf_counter() - start
    overhead = times["NPO+MRD"] / times["NPO"] - 1
    print(f"{args.epochs} epochs of forget10 (batch 8), MRD every 2 epochs, K={args.samples}")
    print(f"NPO: {times['NPO']:.1f}s   NPO+MRD: {times['NPO+MRD']:.1f}s   overhead {overhead:.0%} of the plain run"
          "   [design bar: <= 25%]")


if __name__ == "__main__":
    main()

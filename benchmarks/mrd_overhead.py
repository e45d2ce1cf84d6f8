"""Whole-run overhead of the MRD curriculum: the same run (NPO by default) with and without ``MRDCurriculum``.

Paper settings: recompute every m=2 epochs with K Monte-Carlo perturbations (default K=100, sigma=1e-5),
6 epochs of forget10 on the builtin target model; also the analytic estimator (one backward per sample) and
Algorithm 1 with the control variate at a smaller K (default 32: it ranks like plain K=512 at sigma=1e-5).
Prints each run's wall time and the overhead ratio.

    python benchmarks/mrd_overhead.py [--epochs 6] [--samples 100] [--cv-samples 32] [--objective GradDiff]
                                      [--accelerator gpu]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import DemoSettings, UnlearnSpec, cached_finetune, target_config, unlearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=100, help="K perturbations per scoring")
    parser.add_argument("--cv-samples", type=int, default=32, help="K of the control-variate run")
    parser.add_argument("--objective", default="NPO", help="objective class (NPO: forget only; GradDiff: + retain)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of the unlearning runs")
    parser.add_argument("--out", default="outputs/mrd_overhead")
    args = parser.parse_args()
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, _ = cached_finetune("target", target_config(), tokenizer, progress=False)
    name = args.objective
    mrd = UnlearnSpec(f"{name}+MRD", name, mrd=True)
    runs = {  # label: (spec, estimator, K, control variate)
        name: (UnlearnSpec(name, name), "mean_abs", args.samples, False),
        f"{name}+MRD (Algorithm 1, K={args.samples})": (mrd, "mean_abs", args.samples, False),
        f"{name}+MRD (Algorithm 1 + control variate, K={args.cv_samples})": (mrd, "mean_abs", args.cv_samples, True),
        f"{name}+MRD (analytic)": (mrd, "analytic", args.samples, False),
    }
    # warm-up (imports, first model load, allocator): otherwise the first timed run pays for it
    unlearn(UnlearnSpec(name, name), target, "builtin:tofu-mini", "forget10", Path(args.out) / "warmup",
            DemoSettings(unlearn_epochs=1, accelerator=args.accelerator), progress=False)
    times, scoring = {}, {}
    for label, (spec, estimator, k, control_variate) in runs.items():
        settings = DemoSettings(unlearn_epochs=args.epochs, mrd_samples=k, mrd_every_n_epochs=2,
                                mrd_estimator=estimator, mrd_control_variate=control_variate,
                                accelerator=args.accelerator)
        start = time.perf_counter()
        out = Path(args.out) / f"{spec.name}_{estimator}{'_cv' if control_variate else ''}"
        unlearn(spec, target, "builtin:tofu-mini", "forget10", out, settings, progress=False)
        times[label] = time.perf_counter() - start
        if spec.mrd:
            history = json.loads((out / "mrd" / "mrd_history.json").read_text())["history"]
            scoring[label] = (len(history), sum(entry["seconds"] for entry in history))
    base = times[name]
    print(f"{args.epochs} epochs of forget10 (batch 8) on {args.accelerator}, "
          "MRD scored before training and every 2 epochs")
    for label, seconds in times.items():
        if label not in scoring:
            print(f"{label}: {seconds:.1f}s")
            continue
        count, scored = scoring[label]
        print(f"{label}: {seconds:.1f}s   overhead {seconds / base - 1:.0%} of the plain run   [design bar: <= 25%]; "
              f"{count} scorings took {scored:.1f}s ({scored / base:.0%}), the rest (histogram PNG, files, "
              f"sampler, run-to-run noise) {seconds - base - scored:.1f}s")


if __name__ == "__main__":
    main()

"""Learning-rate sweep for the demo's objectives: unlearn forget10 at each lr and report FQ and MU.

Same step budget as ``make demo`` (DemoSettings: 5 epochs of forget10 at batch 8). The selection rule is
fixed before looking at the numbers: the lr with the highest forget quality among those that keep model
utility ≥ 0.75 × the target's (the lowest lr when none does). Prints one row per (objective, lr) and the pick.

    python benchmarks/demo_lr_sweep.py [--objectives RMU IdkNLL IdkDPO SimNPO] [--lrs 1e-4 3e-4 1e-3]

A name that is not a demo run (yet) is taken as an objective class with its default arguments, so an objective
can be swept before it gets its ``ALL_RUNS`` row (e.g. ``--objectives UNDIAL CEU PDU AltPO GRU``).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import (ALL_RUNS, DemoSettings, UnlearnSpec, cached_finetune, evaluate, retain_config,
                                  self_referenced, target_config, unlearn)

UTILITY_KEPT = 0.75


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["RMU", "IdkNLL", "IdkDPO", "SimNPO"],
                        help="demo run names (see lit_unlearn.pipeline.ALL_RUNS)")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--out", default="outputs/lr_sweep")
    args = parser.parse_args()
    source, split, out = "builtin:tofu-mini", "forget10", Path(args.out)
    settings = DemoSettings()
    tokenizer = str(builtin_tokenizer_dir(source))
    target, _ = cached_finetune("target", target_config(source, epochs=settings.epochs), tokenizer, progress=False)
    retain, _ = cached_finetune("retain", retain_config(split, source, epochs=settings.epochs), tokenizer,
                                progress=False)
    retain_report = self_referenced(evaluate(retain, retain, source, split, out / "retain", settings,
                                             progress=False), out / "retain")
    target_report = evaluate(target, target, source, split, out / "target", settings, out / "retain" / "report.json",
                             progress=False)
    target_mu = target_report["summary"]["model_utility"]
    print(f"target: MU {target_mu:.4f}; retain: MU {retain_report['summary']['model_utility']:.4f}; "
          f"utility floor {UTILITY_KEPT} x target = {UTILITY_KEPT * target_mu:.4f}")
    specs = {s.name: s for s in ALL_RUNS}
    print(f"{'run':<10} {'lr':>8} {'FQ':>10} {'MU':>8} {'forget MA':>10}")
    for name in args.objectives:
        results = []
        for lr in args.lrs:
            spec = replace(specs.get(name) or UnlearnSpec(name, name), lr=lr, mrd=False, geffect=False)
            run_dir = out / f"{name}_lr{lr:g}"
            module, _ = unlearn(spec, target, source, split, run_dir, settings, progress=False)
            report = evaluate(module.model.eval(), target, source, split, run_dir / "eval", settings,
                              out / "retain" / "report.json", progress=False)
            summary = report["summary"]
            fq, mu = summary["forget_quality"], summary["model_utility"]
            ma = summary["forget_memorization_accuracy"]
            results.append((lr, fq, mu))
            print(f"{name:<10} {lr:8.0e} {fq:10.4g} {mu:8.4f} {ma:10.4f}")
        kept = [r for r in results if r[2] >= UTILITY_KEPT * target_mu]
        pick = max(kept, key=lambda r: r[1]) if kept else min(results)
        print(f"{name:<10} pick lr {pick[0]:g} (FQ {pick[1]:.4g}, MU {pick[2]:.4f})")


if __name__ == "__main__":
    main()

"""G-effect curves of GA, NPO, WGA, TNPO and SatImp on the builtin setup (the comparison of Wang et al., 2025, Rethinking LLM Unlearning Objectives: A Gradient Perspective).

Every objective unlearns forget10 from the same cached target model for the same number of steps; a
``GEffectMonitor`` measures, before each optimizer step, the unlearning G-effect e_u = ⟨∇R_forget, ∇L⟩ and
the retaining G-effect e_r = ⟨∇R_retain, ∇L⟩ (R = token-mean NLL). Prints a table of the mean e_u, e_r per
objective and writes ``geffect_compare.png`` (curves) and ``geffect_compare.json``.

    python benchmarks/geffect_compare.py [--out outputs/geffect_compare] [--epochs 3] [--every 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import DemoSettings, UnlearnSpec, cached_finetune, plot_geffect_curves, target_config, unlearn

OBJECTIVES = ("GA", "NPO", "WGA", "TNPO", "SatImp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/geffect_compare")
    parser.add_argument("--epochs", type=int, default=3, help="passes over forget10 (13 steps each)")
    parser.add_argument("--every", type=int, default=2, help="measure every n steps")
    parser.add_argument("--lr", type=float, default=DemoSettings.unlearn_lr)
    args = parser.parse_args()
    out = Path(args.out)
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, cached = cached_finetune("target", target_config(), tokenizer, progress=False)
    print(f"target model: {target} ({'cached' if cached else 'trained now'})")
    settings = DemoSettings(unlearn_epochs=args.epochs, unlearn_lr=args.lr, geffect_every=args.every)
    rows_by_run, seconds = {}, {}
    for name in OBJECTIVES:
        start = time.perf_counter()
        spec = UnlearnSpec(name, name, geffect=True)
        _, callbacks = unlearn(spec, target, "builtin:tofu-mini", "forget10", out / name, settings, progress=False)
        rows_by_run[name] = [row for cb in callbacks if hasattr(cb, "rows") for row in cb.rows]
        seconds[name] = time.perf_counter() - start
    plot_geffect_curves(rows_by_run, out / "geffect_compare.png")
    summary = {}
    print(f"\n{'objective':<8} {'mean e_u':>12} {'mean e_r':>12} {'e_r/|e_u|':>10} {'steps':>6} {'seconds':>8}")
    for name, rows in rows_by_run.items():
        e_u = statistics.fmean(r["total_unlearning"] for r in rows)
        e_r = statistics.fmean(r["total_retaining"] for r in rows)
        summary[name] = {"mean_e_u": e_u, "mean_e_r": e_r, "rows": rows}
        print(f"{name:<8} {e_u:12.4g} {e_r:12.4g} {e_r / abs(e_u):10.3f} {len(rows):6d} {seconds[name]:8.1f}")
    (out / "geffect_compare.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out / 'geffect_compare.png'}")


if __name__ == "__main__":
    main()

"""How much do the demo's numbers move, and why? Seed, thread count and number of unlearning steps.

The builtin setting is small and chaotic: the target model is trained for hundreds of steps and unlearning
adds dozens more, so bit-level differences (another thread count splits float reductions differently) grow
into visibly different metrics. This study measures three sources of variation on the same objectives:

1. **seed** (data order, dropout, MRD's perturbations, RMU's control vector): the standard deviation of each
   metric over ``--seeds`` at the demo's settings;
2. **thread count**: the same seeds with the whole chain (target and retain models included) rebuilt at
   ``--other-threads`` torch threads, a stand-in for another CPU: the shift of each mean, in units of the
   seed standard deviation;
3. **unlearning steps**: the same seeds at ``--epochs`` passes over the forget split (13 steps each): how
   fast each metric moves per step, against the seed spread.

Every configuration goes through :func:`lit_unlearn.pipeline.run_demo` (fixed-budget protocol), so the numbers
are the demo's own. Output: a Markdown table (stdout, or the ``variance`` block of ``--page``) and the raw
aggregates (``--out``/variance.json). Usage::

    python benchmarks/demo_variance.py                       # GA, GradDiff, NPO; seeds 0-2; 1 vs 2 threads
    python benchmarks/demo_variance.py --page docs/reproducibility.md
    # reuse the demo's own runs at 2 and 1 threads instead of repeating them:
    python benchmarks/demo_variance.py --reuse outputs/demo/summary.json outputs/demo_1thread/summary.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lit_unlearn import results
from lit_unlearn.pipeline import DemoSettings, run_demo
from lit_unlearn.utils.environment import DEFAULT_NUM_THREADS, environment_info

METRICS = (("forget_quality", "FQ"), ("model_utility", "MU"), ("forget_memorization_accuracy", "forget MA"))


def study(out: Path, runs: tuple[str, ...], seeds: tuple[int, ...], threads: int, other_threads: int,
          epochs: tuple[int, ...], base_epochs: int, reuse: dict | None = None) -> dict:
    """Run the demo (budget protocol) per (threads, epochs) setting; returns ``{label: summary}``.

    ``reuse``: ``{label: demo summary}`` of settings already run by ``lit-unlearn demo`` with the same seeds
    (checked by the caller), taken instead of running them again.
    """
    reuse = reuse or {}
    settings = {f"threads={threads}, epochs={base_epochs}": (threads, base_epochs),
                f"threads={other_threads}, epochs={base_epochs}": (other_threads, base_epochs)}
    for e in epochs:
        if e != base_epochs:
            settings[f"threads={threads}, epochs={e}"] = (threads, e)
    summaries = {}
    for label, (t, e) in settings.items():
        if label in reuse:  # the same runs, already made by `lit-unlearn demo` (its budget protocol)
            summary = reuse[label]
            summaries[label] = {"threads": t, "epochs": e, "aggregate": summary["aggregate"],
                                "references": summary["references"], "reused": summary.get("date")}
            continue
        print(f"[demo_variance] {label}", flush=True)
        folder = out / label.replace(", ", "_").replace("=", "")
        demo = run_demo(folder, runs=runs, settings=DemoSettings(seeds=seeds, num_threads=t, unlearn_epochs=e,
                                                                 protocols=("budget",)), progress=False)
        summaries[label] = {"threads": t, "epochs": e, "aggregate": demo.summary["aggregate"],
                            "references": demo.summary["references"]}
    return summaries


def render(recorded: dict) -> str:
    """The Markdown table of a recorded study (the JSON this script writes)."""
    summaries, runs, date, env = recorded["summaries"], recorded["runs"], recorded["date"], recorded["environment"]
    threads, other_threads, base_epochs = recorded["threads"], recorded["other_threads"], recorded["base_epochs"]
    base = summaries[f"threads={threads}, epochs={base_epochs}"]
    other = summaries[f"threads={other_threads}, epochs={base_epochs}"]
    step_labels = sorted((s["epochs"], label) for label, s in summaries.items() if s["threads"] == threads)
    lines = [f"Measured {date} by `benchmarks/demo_variance.py` on {env.get('cpu', '?')} "
             f"({env.get('cpu_count', '?')} CPUs), torch {env.get('packages', {}).get('torch', '?')}; fixed-budget "
             "protocol. Seed sd: standard deviation over the seeds at the demo's settings. Thread shift: mean at "
             f"{other_threads} thread(s) − mean at {threads} (target and retain models rebuilt too), and in units of "
             "the seed sd. Per epoch: the change of the mean per extra pass over the forget split "
             f"(13 steps), from {step_labels[0][0]} to {step_labels[-1][0]} epochs.", "",
             "| run | metric | mean | seed sd | thread shift (× seed sd) | "
             + " | ".join(f"mean at {e} epochs" for e, _ in step_labels) + " | per epoch |",
             "|---|---|---:|---:|---:|" + "---:|" * len(step_labels) + "---:|"]
    for name in runs:
        for key, label in METRICS:
            s = base["aggregate"][name]["budget"][key]
            o = other["aggregate"][name]["budget"][key]
            if not s["n"]:
                continue
            shift = o["mean"] - s["mean"]
            units = f"{abs(shift) / s['std']:.1f}" if s["std"] else "–"
            means = [summaries[lbl]["aggregate"][name]["budget"][key]["mean"] for _, lbl in step_labels]
            span = step_labels[-1][0] - step_labels[0][0]
            slope = (means[-1] - means[0]) / span if span else 0.0
            lines.append(f"| {name} | {label} | {s['mean']:.3f} | {s['std']:.3f} | {shift:+.3f} ({units}) | "
                         + " | ".join(f"{m:.3f}" for m in means) + f" | {slope:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["GA", "GradDiff", "NPO"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=DEFAULT_NUM_THREADS)
    parser.add_argument("--other-threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 5, 7], help="unlearning epochs to compare")
    parser.add_argument("--base-epochs", type=int, default=DemoSettings.unlearn_epochs)
    parser.add_argument("--out", default="outputs/demo_variance")
    parser.add_argument("--page", help="write the table into this page's `variance` generated block")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="SUMMARY",
                        help="demo summary.json files (fixed budget, same seeds and runs) to take instead of "
                             "rerunning their (threads, epochs) setting")
    args = parser.parse_args(argv)
    reuse = {}
    for path in args.reuse:
        summary = results.load_summary(path)
        settings = summary["settings"]
        missing = set(args.runs) - set(summary["aggregate"])
        if missing or list(settings["seeds"]) != list(args.seeds) or "budget" not in settings["protocols"]:
            raise SystemExit(f"{path}: not reusable (needs runs {args.runs}, seeds {args.seeds}, the budget "
                             f"protocol; has runs {sorted(summary['aggregate'])}, seeds {settings['seeds']})")
        label = f"threads={summary['environment']['torch_num_threads']}, epochs={settings['unlearn_epochs']}"
        reuse[label] = summary
    import datetime as _dt

    out = Path(args.out)
    summaries = study(out, tuple(args.runs), tuple(args.seeds), args.threads, args.other_threads,
                      tuple(args.epochs), args.base_epochs, reuse)
    recorded = {"date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(), "environment": environment_info(),
                "runs": list(args.runs), "seeds": list(args.seeds), "threads": args.threads,
                "other_threads": args.other_threads, "base_epochs": args.base_epochs, "summaries": summaries}
    text = render(recorded)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variance.json").write_text(json.dumps(recorded, indent=2, sort_keys=True, default=str) + "\n")
    if args.page:
        page = Path(args.page)
        page.write_text(results.replace_block(page.read_text(), "variance", text))
        print(f"{page}: block 'variance' written")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

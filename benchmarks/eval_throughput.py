"""Evaluation throughput on the builtin target model: samples/s of each benchmark's suite (TOFU, MUSE, WMDP).

TOFU runs twice in one process on the same model and splits: likelihood metrics only (one batched forward
per answer variant: answer, paraphrase, 5 perturbed answers) and the full suite (plus batched, KV-cached
greedy generation for ROUGE-L and the per-prefix continuations of extraction likelihood on the forget
split). MUSE runs its five splits on ``builtin:muse-mini`` (greedy generation for VerbMem and KnowMem, one
forward per privleak text); WMDP runs the ``builtin:wmdp-mini`` lm-eval tasks (when lm-eval is installed).
Each suite is run ``--repeats`` times, alternating between suites; the median and the spread are printed.

    python benchmarks/eval_throughput.py [--max-new-tokens 32] [--batch-size 32] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lit_unlearn.evaluation import MUSEEvaluation, TOFUEvaluation, WMDPEvaluation
from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import cached_finetune, target_config


def _count(report: dict) -> int:
    if "lm_eval" in report:  # documents scored per task (a group's entry repeats its subtasks')
        return int(sum(v.get("n", 0) for t, v in report["lm_eval"].items() if t in report["forget_tasks"] + report["utility_tasks"]))
    return sum(split["num_samples"] for split in report["splits"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=32, help="TOFU generation and both MUSE budgets")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 samples per split (checks that the script works)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, _ = cached_finetune("target", target_config(), tokenizer, progress=False)
    limit = 4 if args.quick else None
    new = args.max_new_tokens

    def tofu(**kw) -> Callable[[], dict]:
        return lambda: TOFUEvaluation(str(target), batch_size=args.batch_size, max_length=64, progress=False,
                                      max_new_tokens=new, max_samples=limit, plots=False, **kw).run()

    suites: dict[str, Callable[[], dict]] = {
        "TOFU likelihood only": tofu(generation=False, el_splits=[]),
        "TOFU full suite": tofu(generation=True, el_splits=["forget"]),
        "MUSE (builtin:muse-mini)": lambda: MUSEEvaluation(
            str(target), batch_size=args.batch_size, max_samples=limit, progress=False,
            config={"verbmem_max_new_tokens": new, "knowmem_max_new_tokens": new, "privleak_max_length": 256}).run(),
    }
    try:
        import lm_eval  # noqa: F401

        suites["WMDP (builtin:wmdp-mini, lm-eval)"] = lambda: WMDPEvaluation(
            str(target), source="builtin:wmdp-mini", limit=limit, lm_eval_batch_size=args.batch_size).run()
    except ImportError:
        print("WMDP skipped: lm-eval is not installed (pip install \"lit_unlearn[lmeval]\")")

    for run in suites.values():  # warm-up (caches, lm-eval's task index)
        run()
    times: dict[str, list[float]] = {name: [] for name in suites}
    samples: dict[str, int] = {}
    for _ in range(args.repeats):  # alternate between the suites
        for name, run in suites.items():
            start = time.perf_counter()
            report = run()
            times[name].append(time.perf_counter() - start)
            samples[name] = _count(report)
    print(f"batch {args.batch_size}, threads {args.threads}, max_new_tokens {new}, {args.repeats} repeats"
          f"{' (quick: 4 samples per split)' if args.quick else ''}")
    base = statistics.median(times["TOFU likelihood only"])
    for name, ts in times.items():
        med = statistics.median(ts)
        spread = (max(ts) - min(ts)) / med if med else 0.0
        print(f"{name:34s}: {samples[name]:5d} samples  {med:7.2f}s  {samples[name] / med:8.1f} samples/s"
              f"  (spread {100 * spread:4.1f}%, {med / base:4.1f}x the TOFU likelihood-only time)")


if __name__ == "__main__":
    main()

"""Evaluation throughput on the builtin target model: samples/s for the likelihood metrics and for generation.

Runs the TOFU suite twice in one process on the same model and splits: likelihood metrics only (one batched
forward per answer variant: answer, paraphrase, 5 perturbed answers) and the full suite (plus batched, KV-cached
greedy generation for ROUGE-L and the per-prefix continuations of extraction likelihood on the forget split).

    python benchmarks/eval_throughput.py [--max-new-tokens 32] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import time

import torch

from lit_unlearn.evaluation import TOFUEvaluation
from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import cached_finetune, target_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, _ = cached_finetune("target", target_config(), tokenizer, progress=False)

    def run(**kw) -> tuple[float, int]:
        evaluation = TOFUEvaluation(str(target), batch_size=args.batch_size, max_length=64, progress=False,
                                    max_new_tokens=args.max_new_tokens, **kw)
        start = time.perf_counter()
        report = evaluation.run()
        seconds = time.perf_counter() - start
        samples = sum(split["aggregate"]["num_samples"] if "aggregate" in split else split["num_samples"]
                      for split in report["splits"].values())
        return seconds, samples

    run(generation=False, el_splits=[], max_samples=4)  # warm-up
    t_lik, n = run(generation=False, el_splits=[])
    t_gen, _ = run(generation=True, el_splits=["forget"])
    print(f"{n} samples over 5 splits, batch {args.batch_size}, threads {args.threads}, max_new_tokens {args.max_new_tokens}")
    print(f"likelihood metrics only : {t_lik:6.1f}s  {n / t_lik:7.1f} samples/s")
    print(f"full suite (+generation): {t_gen:6.1f}s  {n / t_gen:7.1f} samples/s  ({t_gen / t_lik:.1f}x the likelihood-only time)")


if __name__ == "__main__":
    main()

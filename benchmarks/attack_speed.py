"""Wall time of the robustness attack suite for one model on tofu-mini, attack by attack.

Runs the default suite of ``lit-unlearn attack`` (int8 + int4 RTN quantization with their evaluations, and
relearning with the schedule 0, 5, 10, 25, 50 on half the forget split), alternating the attacks over
``--repeats`` rounds, and prints per attack the median wall time, the spread (min..max), its share of the suite
and the suite's total against the 2-minute budget of issue #16 (ratio < 1 = within budget).

    python benchmarks/attack_speed.py [--model FOLDER] [--repeats 2] [--threads 2] [--max-samples N]
    python benchmarks/attack_speed.py --demo-columns   # the demo's robustness columns of one model

``--demo-columns`` times instead :func:`lit_unlearn.pipeline.demo_robustness` (int4 + 25 relearning steps,
forget MA and ROUGE-L only: what ``make demo`` adds per matched model) against the same attacks with the whole
TOFU suite as evaluation, alternating, and prints both and their ratio.

Default model: the builtin target model of the demo (trained once and cached, see ``lit_unlearn.pipeline``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a Hugging Face folder (default: the cached demo target)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-samples", type=int, default=None, help="rows per split (quick check)")
    parser.add_argument("--steps", default="0,5,10,25,50", help="relearning schedule")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--demo-columns", action="store_true", help="time the demo's robustness columns")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lit_unlearn.attacks import AttackEvalConfig, QuantizeConfig, RelearnConfig, quantization_attack, relearn_attack
    from lit_unlearn.models.loading import builtin_tokenizer_dir, load_causal_lm, load_tokenizer

    if args.model is None:
        from lit_unlearn.pipeline import cached_finetune, target_config

        tokenizer_path = str(builtin_tokenizer_dir("builtin:tofu-mini"))
        folder, _ = cached_finetune("target", target_config(), tokenizer_path, progress=False)
        args.model = str(folder)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, tokenizer)
    eval_config = AttackEvalConfig(max_samples=args.max_samples, max_new_tokens=args.max_new_tokens)

    if args.demo_columns:
        from lit_unlearn.pipeline import DemoSettings, demo_robustness

        settings = DemoSettings(max_samples=args.max_samples)
        suite = AttackEvalConfig(max_samples=args.max_samples, max_new_tokens=settings.max_new_tokens, utility=False,
                                 mia=False, max_length=64)
        attacks = {
            "demo columns (forget probe)": lambda: demo_robustness(model, tokenizer, "builtin:tofu-mini", "forget10",
                                                                  settings, 0),
            "same attacks, whole suite": lambda: (
                quantization_attack(model, tokenizer, QuantizeConfig(schemes=["int4"], group_size="auto"), suite),
                relearn_attack(model, tokenizer, RelearnConfig(steps=(0, 25), lr=5e-4, progress=False,
                                                               accelerator="cpu", max_length=64), suite)),
        }
    else:
        attacks = {
            "quantize (full, int8, int4)": lambda: quantization_attack(
                model, tokenizer, QuantizeConfig(schemes=["int8", "int4"], group_size="auto"), eval_config),
            f"relearn (steps {args.steps})": lambda: relearn_attack(
                model, tokenizer, RelearnConfig(steps=args.steps, lr=5e-4, progress=False, accelerator="cpu"),
                eval_config),
        }
    times: dict[str, list[float]] = {name: [] for name in attacks}
    names = list(attacks)
    for round_ in range(args.repeats):
        order = names if round_ % 2 == 0 else names[::-1]  # alternate the order between rounds
        for name in order:
            start = time.perf_counter()
            attacks[name]()
            times[name].append(time.perf_counter() - start)

    total = sum(statistics.median(t) for t in times.values())
    print(f"model {args.model}, {args.repeats} rounds, {args.threads} threads, max_samples {args.max_samples}")
    print(f"{'attack':<32} {'median s':>9} {'min..max s':>15} {'share':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<32} {median:9.1f} {min(values):7.1f}..{max(values):<7.1f} {median / total:7.1%}")
    if args.demo_columns:
        cheap, full = (statistics.median(t) for t in times.values())
        print(f"demo columns / whole-suite attacks: {cheap / full:.2f}")
    else:
        print(f"suite total {total:.1f} s; ratio to the 2-minute budget {total / 120:.2f}")


if __name__ == "__main__":
    main()

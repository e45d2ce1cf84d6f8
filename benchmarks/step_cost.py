"""Training-step cost of each objective relative to GradDiff, measured in one run (DESIGN.md §10).

Every objective runs the same forget/retain batches (forget10 / retain90, batch 8) on the builtin target
model: forward, backward and AdamW step, timed after a warm-up. Objectives run with an NLL retain term
like GradDiff's, except where the label says "no retain" (IdkDPO's own default): IdkDPO with a retain term
needs three policy passes (forget answer, refusal, retain) to GradDiff's two. Objectives with a reference run twice: with
the cached reference log-probs (the cache is filled once before timing; its one-off cost is printed too) and
with a live frozen reference model. Prints ms/step and the ratio to GradDiff.

    python benchmarks/step_cost.py [--steps 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

import lit_unlearn.objectives as objectives
from lit_unlearn.data.tofu import UnlearningDataModule
from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import cached_finetune, target_config

RUNS = [("GradDiff", {}), ("GA", {}), ("NPO", {"retain_loss": "nll"}), ("IdkDPO", {"retain_loss": "nll"}),
        ("IdkDPO", {}),
        ("TNPO", {"retain_loss": "nll"}), ("WTNPO", {"retain_loss": "nll"}), ("SimNPO", {"retain_loss": "nll"}),
        ("WGA", {"retain_loss": "nll"}), ("SatImp", {"retain_loss": "nll"}), ("IdkNLL", {"retain_loss": "nll"}),
        ("GradDiff", {"retain_loss": "kl"}), ("RMU", {"alpha": 1.0})]
WITH_REFERENCE = {"NPO", "IdkDPO", "TNPO", "WTNPO"}


def time_objective(name: str, kwargs: dict, target: str, batches: list, steps: int, warmup: int = 5) -> tuple[float, float]:
    module = getattr(objectives, name)(target, tokenizer=target, lr=1e-5, **kwargs)
    module.configure_model()
    module.train()
    fill_seconds = 0.0
    if module.needs_cached_reference:
        start = time.perf_counter()
        module.model.eval()
        module.ref_cache.fill(module.sample_logprobs, [b["forget"] for b in batches], module.reference_keys)
        module.model.train()
        fill_seconds = time.perf_counter() - start
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-5)

    def step(batch):
        loss = module.gamma * module.forget_loss(batch["forget"])
        if module.retain_loss != "none":
            loss = loss + module.alpha * module.retain_term(batch["retain"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps * 1000, fill_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = str(builtin_tokenizer_dir("builtin:tofu-mini"))
    target, _ = cached_finetune("target", target_config(), tokenizer, progress=False)
    data = UnlearningDataModule(tokenizer=str(target), batch_size=8, max_length=64)
    data.setup("fit")
    # the forget set in order (so the cache covers it), each batch paired with a retain batch
    forget = list(torch.utils.data.DataLoader(data.forget_dataset, batch_size=8, collate_fn=data.collate))
    retain = list(torch.utils.data.DataLoader(data.retain_dataset, batch_size=8, shuffle=True, collate_fn=data.collate))
    batches = [{"forget": f, "retain": r} for f, r in zip(forget, retain)]
    rows = []
    for name, kwargs in RUNS:
        modes = ["cached", "live"] if name in WITH_REFERENCE else [None]
        for mode in modes:
            kw = {**kwargs, **({"reference": mode} if mode else {})}
            ms, fill = time_objective(name, kw, str(target), batches, args.steps)
            label = name + (f" ({mode} ref)" if mode else "") + (" + KL retain" if kwargs.get("retain_loss") == "kl" else "")
            if name == "IdkDPO" and "retain_loss" not in kwargs:
                label += ", no retain"  # its default: two policy passes (forget, refusal), like GradDiff
            rows.append((label, ms, fill))
    base = rows[0][1]
    print(f"threads={args.threads}, steps={args.steps}, forget/retain batch 8, model {target.name}")
    print(f"{'objective':<28} {'ms/step':>8} {'x GradDiff':>10} {'cache fill s':>12}")
    for label, ms, fill in rows:
        print(f"{label:<28} {ms:8.1f} {ms / base:10.2f} {fill:12.2f}")


if __name__ == "__main__":
    main()

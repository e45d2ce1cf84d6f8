"""Training-step cost of each objective relative to GradDiff, measured in one run.

Every objective runs the same forget/retain batches (forget10 / retain90, batch 8) on the builtin target
model: forward, backward and AdamW step, timed after a warm-up in blocks that alternate with GradDiff's (so drift of a shared machine cancels). Objectives run with an NLL retain term
like GradDiff's, except where the label says "no retain" (IdkDPO's own default): IdkDPO with a retain term
needs three policy passes (forget answer, refusal, retain) to GradDiff's two. Objectives with a reference run twice: with
the cached reference log-probs (the cache is filled once before timing; its one-off cost is printed too) and
with a live frozen reference model. Prints ms/step and the ratio to GradDiff.

The objectives of the second batch: UNDIAL (always a live reference: its teacher is the reference's full
next-token distribution), CE-U, PDU (its retain term is the constraint), AltPO (cached and live; the one-off
generation of the alternate answers is timed separately, "gen s") and GRU (GA whose gradient is projected
against the retain NLL's: one extra retain forward/backward per step).

    python benchmarks/step_cost.py [--steps 30] [--threads 2] [--objectives UNDIAL CEU PDU AltPO GRU]
"""
from __future__ import annotations

import argparse
import time

import torch

import lit_unlearn.objectives as objectives
from lit_unlearn.data.tofu import UnlearningDataModule
from lit_unlearn.models.loading import builtin_tokenizer_dir
from lit_unlearn.pipeline import cached_finetune, target_config

RUNS = [("GA", {}), ("NPO", {"retain_loss": "nll"}), ("IdkDPO", {"retain_loss": "nll"}), ("IdkDPO", {}),
        ("TNPO", {"retain_loss": "nll"}), ("WTNPO", {"retain_loss": "nll"}), ("SimNPO", {"retain_loss": "nll"}),
        ("WGA", {"retain_loss": "nll"}), ("SatImp", {"retain_loss": "nll"}), ("IdkNLL", {"retain_loss": "nll"}),
        ("GradDiff", {"retain_loss": "kl"}), ("RMU", {"alpha": 1.0}),
        ("UNDIAL", {"retain_loss": "nll"}), ("CEU", {"retain_loss": "nll"}), ("PDU", {}), ("AltPO", {}),
        ("GRU", {})]
WITH_REFERENCE = {"NPO", "IdkDPO", "TNPO", "WTNPO", "AltPO"}


class Stepper:
    """One objective ready to train: ``step(batch)`` runs forward, backward and an AdamW step."""

    def __init__(self, name: str, kwargs: dict, target: str, batches: list, data=None):
        self.module = module = getattr(objectives, name)(target, tokenizer=target, lr=1e-5, **kwargs)
        module.configure_model()
        module.train()
        self.fill_seconds = self.generation_seconds = 0.0
        if isinstance(module, objectives.AltPO):
            # the Lightning hooks without a Trainer: what on_fit_start does (generate, then cache)
            from types import SimpleNamespace

            module.trainer = SimpleNamespace(datamodule=data, world_size=1, global_rank=0)
            start = time.perf_counter()
            module.generate_alternates()
            self.generation_seconds = time.perf_counter() - start
            if module.needs_cached_reference:
                start = time.perf_counter()
                module.fill_reference_cache()
                self.fill_seconds = time.perf_counter() - start
        elif module.needs_cached_reference:
            start = time.perf_counter()
            module.model.eval()
            module.ref_cache.fill(module.sample_logprobs, [b["forget"] for b in batches], module.reference_keys)
            module.model.train()
            self.fill_seconds = time.perf_counter() - start
        self.optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-5)

    def step(self, batch: dict) -> None:
        module = self.module
        loss = module.gamma * module.forget_loss(batch["forget"])
        if module.retain_loss != "none":
            loss = loss + module.alpha * module.retain_term(batch["retain"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if module.rectifier is not None:  # GRU: the retain gradient, then the projection of .grad
            module.rectifier.record(module, batch)
            module.rectifier.apply(module.trainable_parameters())
        self.optimizer.step()

    def run(self, batches: list, steps: int, offset: int = 0) -> float:
        """Seconds for ``steps`` steps."""
        start = time.perf_counter()
        for i in range(steps):
            self.step(batches[(offset + i) % len(batches)])
        return time.perf_counter() - start


def interleaved_ratio(objective: Stepper, base: Stepper, batches: list, steps: int, rounds: int = 3,
                      warmup: int = 5) -> tuple[float, float]:
    """(objective ms/step, base ms/step), timed in alternating blocks (ABAB...) so machine drift cancels."""
    objective.run(batches, warmup), base.run(batches, warmup)
    t_obj = t_base = 0.0
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        t_base += base.run(batches, per_round, offset=r * per_round)
        t_obj += objective.run(batches, per_round, offset=r * per_round)
    n = per_round * rounds
    return t_obj / n * 1000, t_base / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--objectives", nargs="+", help="only these objectives (default: every row of RUNS)")
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
    graddiff = Stepper("GradDiff", {}, str(target), batches)
    rows = []
    for name, kwargs in [r for r in RUNS if not args.objectives or r[0] in args.objectives]:
        modes = ["cached", "live"] if name in WITH_REFERENCE else [None]
        for mode in modes:
            kw = {**kwargs, **({"reference": mode} if mode else {})}
            stepper = Stepper(name, kw, str(target), batches, data)
            ms, base_ms = interleaved_ratio(stepper, graddiff, batches, args.steps)
            label = name + (f" ({mode} ref)" if mode else "") + (" + KL retain" if kwargs.get("retain_loss") == "kl" else "")
            if name == "IdkDPO" and "retain_loss" not in kwargs:
                label += ", no retain"  # its default: two policy passes (forget, refusal), like GradDiff
            rows.append((label, ms, base_ms, stepper.fill_seconds, stepper.generation_seconds))
            del stepper
    import datetime

    from lit_unlearn.utils.environment import environment_info

    env = environment_info()
    print(f"recorded {datetime.date.today().isoformat()} on {env['cpu']} ({env['cpu_count']} CPUs, kernels "
          f"{env['cpu_capability']}), torch {env['packages']['torch']}, transformers {env['packages']['transformers']}")
    print(f"threads={args.threads}, {args.steps} timed steps per objective in 3 blocks alternating with GradDiff, "
          f"forget/retain batch 8, model {target.name}")
    print(f"{'objective':<32} {'ms/step':>8} {'GradDiff ms':>11} {'x GradDiff':>10} {'cache fill s':>12} {'gen s':>7}")
    for label, ms, base_ms, fill, generation in rows:
        print(f"{label:<32} {ms:8.1f} {base_ms:11.1f} {ms / base_ms:10.2f} {fill:12.2f} {generation:7.2f}")


if __name__ == "__main__":
    main()

"""Per-step overhead of our Lightning training step over a bare PyTorch loop doing the same arithmetic.

Issue 20, item 8. The same random-init Llama (hidden 512, 8 layers, 8 heads, MLP 1376, vocabulary 8192, fp32),
the same pre-collated forget and retain batches (8 + 8 sequences of 256 tokens, the first quarter a prompt)
and AdamW (lr 1e-5, no weight decay) for

* **ours**: ``Trainer.fit`` of ``GA``, ``GradDiff``, ``NPO`` (cached reference, NLL retain) and ``NPO`` (live
  reference, NLL retain): every Lightning hook, logging, the loss's finiteness check and the weights'
  finiteness check after each optimizer step; the time of a step is the time between consecutive
  ``on_train_batch_start`` calls (so data fetching, hooks and the optimizer step are all in it);
* **bare**: a plain loop with ``model(input_ids, attention_mask, labels=labels).loss`` (Hugging Face's
  ``ForCausalLMLoss``, a fused ``F.cross_entropy``): GA ``−loss(forget)``; GradDiff ``−loss(forget) +
  loss(retain)``; NPO ``(2/β)·mean softplus(β·(Σ log p − Σ log p_ref))`` with per-sequence sums from
  ``F.cross_entropy(reduction="none")`` (the reference log-probs precomputed for "cached", a frozen copy of
  the model every step for "live"), plus ``loss(retain)``.

Both sides start from the same weights and batches; the first-step losses of the two sides are printed (they
agree to float32 rounding: the same work). Rounds alternate ours/bare per objective (so drift of a shared
machine cancels); the ratio ours/bare is printed per round with its spread. Timing needs a quiet machine.

``--profile NAME`` runs cProfile over ``--steps`` of our step for one objective and prints where the time
beyond the model's forward/backward/optimizer goes (the top functions by own time, and the cumulative time of
Lightning's loop, logging, the finiteness check and ``token_logprobs``).

``--ops NAME`` runs ``torch.profiler`` over ``--steps`` steps of ours *and* of the bare loop for one objective and
prints self-CPU time per step by operator for both sides, sorted by the difference (ours − bare), with the
totals: what the extra time is made of (extra kernels, extra calls), as shares, which are meaningful on a busy
machine too.

    python benchmarks/step_overhead.py [--steps 6] [--rounds 2] [--threads 2] [--small] [--profile GradDiff]
    python benchmarks/step_overhead.py --ops GradDiff --steps 3

``--small`` (hidden 128, 2 layers, sequence 64, vocabulary 2048, batch 4 + 4) is a quick check that it runs.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BETA = 0.1
LR = 1e-5


@dataclass(frozen=True)
class Setup:
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    intermediate: int = 1376
    vocab: int = 8192
    seq: int = 256
    batch: int = 8


SMALL = Setup(hidden=128, layers=2, heads=4, intermediate=344, vocab=2048, seq=64, batch=4)
OBJECTIVES = ("GA", "GradDiff", "NPO-cached", "NPO-live")


def make_model(setup: Setup):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=setup.vocab, hidden_size=setup.hidden, num_hidden_layers=setup.layers,
                         num_attention_heads=setup.heads, num_key_value_heads=setup.heads,
                         intermediate_size=setup.intermediate, max_position_embeddings=max(512, setup.seq),
                         tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def make_batches(setup: Setup, count: int) -> list[dict]:
    """``count`` training batches ``{"forget": ..., "retain": ...}`` of random tokens (prompt: first quarter)."""
    gen = torch.Generator().manual_seed(1)

    def part(offset: int) -> dict:
        ids = torch.randint(3, setup.vocab, (setup.batch, setup.seq), generator=gen)
        labels = ids.clone()
        labels[:, : setup.seq // 4] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "index": torch.arange(offset, offset + setup.batch)}

    return [{"forget": part(i * setup.batch), "retain": part(0)} for i in range(count)]


# --------------------------------------------------------------------------------------------- bare PyTorch


def sequence_logprob_sums(model, batch: dict) -> torch.Tensor:
    """Σ_t log p(y_t | y_<t) per sequence ``(B,)`` via the fused ``F.cross_entropy(reduction="none")``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                          ignore_index=-100)
    return -nll.view(targets.shape).sum(dim=1)


class Bare:
    """The plain loop: ``step(batch)`` = loss, ``zero_grad``, ``backward``, AdamW ``step``."""

    def __init__(self, objective: str, model, batches: list[dict]):
        self.objective, self.model = objective, copy.deepcopy(model).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        self.ref = None
        self.cached: dict[int, torch.Tensor] = {}
        if objective == "NPO-live":
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        elif objective == "NPO-cached":
            with torch.no_grad():
                self.model.eval()
                for i, b in enumerate(batches):
                    self.cached[i] = sequence_logprob_sums(self.model, b["forget"])
                self.model.train()
        self.first_loss: float | None = None

    def loss(self, batch: dict, i: int) -> torch.Tensor:
        forget, retain = batch["forget"], batch["retain"]
        if self.objective == "GA":
            return -self.model(**{k: forget[k] for k in ("input_ids", "attention_mask", "labels")}).loss
        retain_loss = self.model(**{k: retain[k] for k in ("input_ids", "attention_mask", "labels")}).loss
        if self.objective == "GradDiff":
            return -self.model(**{k: forget[k] for k in ("input_ids", "attention_mask", "labels")}).loss + retain_loss
        logp = sequence_logprob_sums(self.model, forget)
        if self.ref is not None:
            with torch.no_grad():
                ref = sequence_logprob_sums(self.ref, forget)
        else:
            ref = self.cached[i]
        return (2.0 / BETA) * F.softplus(BETA * (logp - ref)).mean() + retain_loss

    def run(self, batches: list[dict], steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps."""
        times = []
        for s in range(steps):
            start = time.perf_counter()
            loss = self.loss(batches[s % len(batches)], s % len(batches))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            times.append(time.perf_counter() - start)
            if self.first_loss is None:
                self.first_loss = loss.item()
        return times


# --------------------------------------------------------------------------------------------- ours


def make_module(objective: str, model):
    from lit_unlearn import objectives

    name, _, reference = objective.partition("-")
    kwargs = {"lr": LR}
    if name == "NPO":
        kwargs.update(reference=reference, retain_loss="nll", beta=BETA)
    cls = getattr(objectives, name)

    class Prepared(cls):  # the prepared random-init model instead of a checkpoint folder
        def build_model(self):
            return copy.deepcopy(model)

    Prepared.__name__ = cls.__name__
    return Prepared("random-init", tokenizer="random-init", **kwargs)


class _Data:
    """What the objectives need from a datamodule: the loader of pre-collated batches, the forget dataset
    (rows with ``index``) and ``collate`` for the cached reference, and ``batch_size``."""

    def __new__(cls, batches: list[dict], setup: Setup):
        import lightning as L

        class Data(L.LightningDataModule):
            def __init__(self):
                super().__init__()
                self.batch_size = setup.batch
                self.forget_dataset = [{k: v[r] for k, v in b["forget"].items()} for b in batches
                                       for r in range(setup.batch)]

            def collate(self, rows):
                return torch.utils.data.default_collate(rows)

            def train_dataloader(self):
                return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

        return Data()


def run_ours(objective: str, model, batches: list[dict], setup: Setup, steps: int,
             profile: cProfile.Profile | None = None, deterministic: bool = True) -> tuple[list[float], float]:
    """Seconds between consecutive ``on_train_batch_start`` calls over ``steps`` steps (+1 warm-up), and the
    first step's loss."""
    import lightning as L
    from lightning.pytorch import Callback

    stamps: list[float] = []
    first: list[float] = []

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            stamps.append(time.perf_counter())
            if batch_idx == 1 and profile is not None:
                profile.enable()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not first:
                first.append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):
            stamps.append(time.perf_counter())
            if profile is not None:
                profile.disable()

    module = make_module(objective, model)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[Clock()],
                        # what `lit-unlearn fit` sets (trainer.deterministic defaults to "warn" there)
                        deterministic="warn" if deterministic else None)
    try:
        trainer.fit(module, datamodule=_Data(batches, setup))
    finally:
        torch.use_deterministic_algorithms(False)  # global: the bare loop runs as a plain script does
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[1:], first[0]  # the first gap holds the warm-up step


def compare(setup: Setup, objectives: list[str], steps: int, rounds: int) -> list[dict]:
    model = make_model(setup)
    batches = make_batches(setup, steps + 1)
    rows = []
    for objective in objectives:
        ratios, ours_ms, bare_ms, losses = [], [], [], None
        for r in range(rounds):
            bare = Bare(objective, model, batches)
            bare.run(batches, 1)  # warm-up
            order = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
            result = {}
            for side in order:
                if side == "ours":
                    times, first = run_ours(objective, model, batches, setup, steps)
                    result["ours"] = statistics.median(times)
                    losses = (first, None)
                else:
                    fresh = Bare(objective, model, batches)
                    result["bare"] = statistics.median(fresh.run(batches, steps + 1)[1:])
                    bare_first = fresh.first_loss
            losses = (losses[0], bare_first)
            ours_ms.append(result["ours"] * 1000)
            bare_ms.append(result["bare"] * 1000)
            ratios.append(result["ours"] / result["bare"])
        rows.append({"objective": objective, "ours_ms": ours_ms, "bare_ms": bare_ms, "ratios": ratios,
                     "first_loss_ours": losses[0], "first_loss_bare": losses[1]})
        print(f"{objective:<11} ours {statistics.mean(ours_ms):8.1f} ms  bare {statistics.mean(bare_ms):8.1f} ms  "
              f"ratio {statistics.mean(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})  "
              f"first loss ours {losses[0]:.5f} bare {losses[1]:.5f}", flush=True)
    return rows


PROFILE_GROUPS = {
    "model forward+backward (torch)": ("run_backward", "_call_impl"),
    "optimizer step": ("adamw.py",),
    "finiteness check of the weights": ("check_parameters_finite",),
    "token_logprobs": ("token_logprobs",),
    "self.log (Lightning logging)": ("log",),
}


def profile(setup: Setup, objective: str, steps: int) -> str:
    model = make_model(setup)
    batches = make_batches(setup, steps + 1)
    prof = cProfile.Profile()
    times, _ = run_ours(objective, model, batches, setup, steps, profile=prof)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return f"{objective}: median step {statistics.median(times) * 1000:.1f} ms over {len(times)} steps\n" + out.getvalue()


class _TorchProfilerSwitch:
    """``enable``/``disable`` (what :func:`run_ours` calls on a cProfile) for a ``torch.profiler.profile``."""

    def __init__(self, prof):
        self.prof = prof

    def enable(self) -> None:
        self.prof.start()

    def disable(self) -> None:
        self.prof.stop()


def op_times(prof, steps: int) -> dict[str, tuple[float, float]]:
    """Operator → (self-CPU ms per step, calls per step) of a finished ``torch.profiler`` run."""
    return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in prof.key_averages()}


def op_profile(setup: Setup, objective: str, steps: int, top: int = 30, deterministic: bool = True) -> str:
    """Self-CPU time per step by operator, ours vs bare, sorted by the difference (see the module docstring)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = make_model(setup)
    batches = make_batches(setup, steps + 1)
    bare = Bare(objective, model, batches)
    bare.run(batches, 1)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as bare_prof:
        bare.run(batches, steps)
    ours_prof = torch_profile(activities=[ProfilerActivity.CPU])
    run_ours(objective, model, batches, setup, steps, profile=_TorchProfilerSwitch(ours_prof),
             deterministic=deterministic)
    ours, base = op_times(ours_prof, steps), op_times(bare_prof, steps)
    total_ours, total_bare = sum(v[0] for v in ours.values()), sum(v[0] for v in base.values())

    def share(side: dict, total: float, key: str) -> float:
        return side.get(key, (0.0, 0.0))[0] / total

    # shares of each side's own total: comparable even when the machine's load differs between the two runs
    keys = sorted(set(ours) | set(base), key=lambda k: -abs(share(ours, total_ours, k) - share(base, total_bare, k)))
    lines = [f"{objective}: self-CPU per step (torch.profiler, {steps} steps each): ours {total_ours:.1f} ms, bare "
             f"{total_bare:.1f} ms (absolute times need a quiet machine; shares and calls do not)",
             f"{'operator':<48} {'ours %':>8} {'bare %':>8} {'diff pp':>8} {'calls ours':>10} {'calls bare':>10}"]
    for k in keys[:top]:
        o, b = share(ours, total_ours, k), share(base, total_bare, k)
        lines.append(f"{k[:48]:<48} {o:8.2%} {b:8.2%} {(o - b) * 100:+8.2f} {ours.get(k, (0, 0))[1]:10.1f} "
                     f"{base.get(k, (0, 0))[1]:10.1f}")
    extra = sorted(((ours.get(k, (0, 0))[1] - base.get(k, (0, 0))[1], k) for k in set(ours) | set(base)),
                   reverse=True)
    lines.append("most extra calls per step (ours − bare): " + ", ".join(f"{k} {n:+.0f}" for n, k in extra[:8]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side and round (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="a small shape, for a quick check that it runs")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--profile", choices=OBJECTIVES, help="cProfile our step of one objective instead")
    parser.add_argument("--ops", choices=OBJECTIVES, help="torch.profiler: self-CPU by operator, ours vs bare")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="--ops: run ours without trainer.deterministic='warn' (what `lit-unlearn fit` sets)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = SMALL if args.small else Setup()
    print(f"shape {setup}, fp32, {args.threads} threads, torch {torch.__version__}", flush=True)
    if args.profile:
        print(profile(setup, args.profile, args.steps))
        return
    if args.ops:
        print(op_profile(setup, args.ops, args.steps, deterministic=not args.no_deterministic))
        return
    rows = compare(setup, args.objectives, args.steps, args.rounds)
    by = {r["objective"]: r for r in rows}
    if "GradDiff" in by and "NPO-cached" in by:
        ours = statistics.mean(by["NPO-cached"]["ours_ms"]) / statistics.mean(by["GradDiff"]["ours_ms"])
        print(f"ours: NPO (cached) / GradDiff = {ours:.3f}")


if __name__ == "__main__":
    main()

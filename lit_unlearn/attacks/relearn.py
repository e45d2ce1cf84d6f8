"""Relearning attack: fine-tune a COPY of an unlearned model with plain NLL and watch the forgotten knowledge return.

A few dozen steps of fine-tuning on a small part of the forget set, or even on unrelated data, restore much of
what unlearning removed (Hu, Fu, Wu and Smith, "Jogging the Memory of Unlearned LLMs Through Targeted
Relearning Attacks", ICLR 2025; Lynch, Guo, Ewart, Casper and Hadfield-Menell, "Eight Methods to Evaluate
Robust Unlearning in LLMs", 2024).

The attack (:func:`relearn_attack`):

1. copy the model (``peft`` adapters merged into the copy: every weight of the copy is fine-tuned, as an
   attacker holding the weights would); the user's model and files are never modified;
2. pick the relearning rows: by default a seeded random ``fraction`` (0.5) of the evaluated forget split, and
   evaluate on the other rows (``held_out=True``: the recovery then measures generalisation to forget
   samples never seen during relearning); or any ``data_split`` of any ``data_source`` (e.g. the retain split:
   benign relearning). With ``held_out`` the relearning rows must not overlap the evaluated forget rows
   (same question): an error before any work otherwise;
3. fine-tune with :class:`~lit_unlearn.objectives.FinetuneModule` (mean answer-token NLL, AdamW) in a Lightning
   ``fit`` for ``max(steps)`` steps, and re-evaluate the forget metrics at every step of the schedule ``steps``
   (default 0, 5, 10, 25, 50; 0 = before relearning).

Batches: the seeded stream of permutations of the relearning rows (a new permutation per pass), cut into
global batches of ``batch_size`` (crossing pass boundaries). Under DDP (``devices`` > 1, or processes launched
with ``torchrun``) each of the W processes takes its ``batch_size / W`` slice of every global batch, and the
loss is the *global* token mean (each process's NLL sum times W over the all-gathered token count, so DDP's
gradient average is the gradient of the global mean): the curve equals the one-process run's with the same
global batch. Every process evaluates every checkpoint on all evaluated rows.

Global random state: the attack seeds its own work and restores the caller's Python, NumPy and torch random
states (and ``PL_GLOBAL_SEED``) afterwards, so running it in the middle of an experiment changes nothing else.

Recovery curve and its area: for each metric ``m(t)`` at steps ``t_0 < ... < t_K``, the normalised area is
``A = (1 / (t_K − t_0)) Σ_k (t_{k+1} − t_k)(m(t_k) + m(t_{k+1})) / 2`` (trapezoid rule; the mean of the
piecewise-linear curve, in the metric's own units; ``m(t_0)`` for a one-point schedule), and the gain
``A − m(t_0)``: how much the metric rose on average over the schedule. Deterministic from ``seed``.

Naive equivalent::

    copy = deepcopy(model); rows = shuffle(forget_rows, seed)[:n // 2]; held = the rest
    for step in range(1, max(steps) + 1): nll(copy, next_batch(rows)).backward(); adamw.step()
        if step in steps: curve.append(evaluate(copy, held))
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lit_unlearn.attacks.evaluation import AttackEvalConfig, measure
from lit_unlearn.utils.hparams import coerce_settings

DEFAULT_STEPS = (0, 5, 10, 25, 50)


@dataclass
class RelearnConfig:
    """Settings of the relearning attack (see the module docstring).

    Args:
        steps: the checkpoints (steps after which the forget metrics are re-evaluated; 0 = before).
        fraction: share of the evaluated forget rows relearned on when ``data_split`` is None.
        data_split: relearn on this split instead (e.g. ``retain90``: benign relearning).
        data_source: where ``data_split`` comes from (default: the evaluation's source).
        held_out: evaluate only forget rows the attack does not train on (overlap is an error).
        lr: AdamW learning rate (the relearning papers fine-tune 7B models at 1e-5 to 2e-5; the tiny builtin
            model needs about 5e-4).
        batch_size: samples per step.
        max_length: tokens per sample.
        seed: the row choice, shuffling and initialisation.
        accelerator: Lightning's accelerator (``cpu``, ``gpu``, ``auto``).
        progress: Lightning's progress bar.
        devices: processes of the relearning fit (> 1: DDP; ``batch_size`` must be a multiple).
        strategy: Lightning's strategy (``auto``; ``ddp`` under ``torchrun``); the process group backend is
            Lightning's default (gloo on the CPU, nccl on GPUs).
    """

    steps: Sequence[int] = DEFAULT_STEPS
    fraction: float = 0.5
    data_split: str | None = None
    data_source: str | None = None
    held_out: bool = True
    lr: float = 1e-5
    batch_size: int = 4
    max_length: int = 128
    seed: int = 0
    accelerator: str = "auto"
    progress: bool = True
    devices: int = 1
    strategy: str = "auto"

    def __post_init__(self) -> None:
        steps = self.steps.split(",") if isinstance(self.steps, str) else self.steps
        try:
            steps = [int(s) for s in steps]
        except (TypeError, ValueError):
            raise ValueError(f"relearn.steps must be non-negative integers such as 0,5,10,25,50; got {self.steps!r}.") from None
        if not steps or any(s < 0 for s in steps) or len(set(steps)) != len(steps) or steps != sorted(steps):
            raise ValueError(f"relearn.steps must be distinct non-negative integers in increasing order (e.g."
                             f" 0,5,10,25,50); got {self.steps!r}.")
        self.steps = tuple(steps)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"relearn.fraction must be in (0, 1], got {self.fraction}.")
        if self.lr <= 0:
            raise ValueError(f"relearn.lr must be positive, got {self.lr}.")
        if self.batch_size < 1:
            raise ValueError(f"relearn.batch_size must be >= 1, got {self.batch_size}.")
        if self.devices < 1 or self.batch_size % self.devices:
            raise ValueError(f"relearn.devices must be >= 1 and divide relearn.batch_size (the global batch),"
                             f" got devices={self.devices}, batch_size={self.batch_size}.")

    @classmethod
    def coerce(cls, value: "RelearnConfig | dict[str, Any] | None") -> "RelearnConfig":
        return coerce_settings(cls, value, "relearn",
                               "relearn: unknown options {unknown}; choose from {known}.", mapping=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = list(self.steps)
        return out


@dataclass
class RelearnPlan:
    """What the attack trains on and what it evaluates (checked before any work)."""

    train_rows: list[dict[str, Any]]
    train_what: str
    train_indices: list[int] | None  # positions in the evaluated forget split, when relearning on it
    eval_forget_rows: list[int] | None  # positions evaluated; None = the whole forget split


def _question_key(row: dict[str, Any]) -> str:
    return " ".join(str(row.get("question", "")).split()).lower()


def plan_relearning(config: RelearnConfig, eval_config: AttackEvalConfig) -> RelearnPlan:
    """Choose the relearning rows and the evaluated forget rows; ``ValueError`` for an empty choice or, with
    ``held_out``, relearning rows whose question is also an evaluated forget question."""
    from lit_unlearn.data.sources import load_rows

    if eval_config.benchmark != "tofu":  # its forget data are not TOFU rows: relearn on named QA data
        if config.data_split is None:
            raise ValueError(f"relearn: benchmark {eval_config.benchmark!r} has no TOFU forget split to take a"
                             " relearning half from; name the relearning data with relearn.data_split and"
                             " relearn.data_source (question/answer rows, e.g. retain90 of builtin:tofu-mini).")
        source = config.data_source or eval_config.source
        rows = load_rows(source, config.data_split, eval_config.seed)
        if not rows:
            raise ValueError(f"relearn: split {config.data_split!r} of {source!r} is empty.")
        return RelearnPlan(rows, f"{len(rows)} rows of {config.data_split!r} ({source})", None, None)
    forget = eval_config.rows("forget")
    n = len(forget)
    if config.data_split is None:
        k = max(1, round(config.fraction * n))
        if config.held_out and k >= n:
            raise ValueError(f"relearn: fraction {config.fraction} of the {n} evaluated forget rows leaves none held out;"
                             " use a fraction < 1, more rows (eval.max_samples), or held_out=False.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
        train_idx = sorted(order[:k])
        held = sorted(order[k:]) if config.held_out else None
        return RelearnPlan([forget[i] for i in train_idx],
                           f"{k} of {n} rows of {eval_config.splits['forget']!r}", train_idx, held)
    source = config.data_source or eval_config.source
    rows = load_rows(source, config.data_split, eval_config.seed)
    if not rows:
        raise ValueError(f"relearn: split {config.data_split!r} of {source!r} is empty.")
    if config.held_out:
        evaluated = {_question_key(r): i for i, r in enumerate(forget)}
        overlap = [(j, evaluated[_question_key(r)]) for j, r in enumerate(rows) if _question_key(r) in evaluated]
        if overlap:
            j, i = overlap[0]
            raise ValueError(
                f"relearn: {len(overlap)} rows of the relearning data {config.data_split!r} ({source}) are evaluated"
                f" forget rows (e.g. relearning row {j} = row {i} of {eval_config.splits['forget']!r}: same"
                " question), but held_out=True asks for evaluation on rows the attack never trains on. Relearn on"
                " other data, leave data_split unset (a held-out part of the forget split), or set held_out=False."
            )
    return RelearnPlan(rows, f"{len(rows)} rows of {config.data_split!r} ({source})", None, None)


def curve_area(steps: Sequence[int], values: Sequence[float | None]) -> float | None:
    """Normalised trapezoid area of ``values`` over ``steps`` (the curve's mean; see the module docstring)."""
    if any(v is None for v in values):
        return None
    if len(steps) == 1:
        return float(values[0])
    total = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2.0 for i in range(len(steps) - 1))
    return float(total / (steps[-1] - steps[0]))


def global_batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` global batches of row positions: seeded permutations of ``range(n)`` (one per pass)
    concatenated and cut into ``batch_size`` pieces."""
    generator = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < steps * batch_size:
        stream += torch.randperm(n, generator=generator).tolist()
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


class _RankBatches(torch.utils.data.Sampler):
    """This process's slice (``rank`` of ``world``) of every global batch."""

    def __init__(self, batches: list[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            share = len(batch) // self.world
            yield batch[self.rank * share:(self.rank + 1) * share]


def _train_loader(rows: list[dict[str, Any]], tokenizer, config: RelearnConfig, steps: int = 0, rank: int = 0,
                  world: int = 1):
    from torch.utils.data import DataLoader

    from lit_unlearn.data.tofu import EncodedDataset, encode_rows, validate_rows
    from lit_unlearn.data.tokenize import PadCollator

    validate_rows(rows, "relearning data")
    dataset = EncodedDataset(encode_rows(tokenizer, rows, "relearning data", config.max_length))
    batches = global_batches(len(dataset), config.batch_size, steps, config.seed)
    return DataLoader(dataset, batch_sampler=_RankBatches(batches, rank, world),
                      collate_fn=PadCollator(tokenizer.pad_token_id, padding_side="right"))


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU and CUDA) random states and ``PL_GLOBAL_SEED`` on exit."""
    import numpy as np

    state_py, state_np, seed_env = random.getstate(), np.random.get_state(), os.environ.get("PL_GLOBAL_SEED")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state_py)
        np.random.set_state(state_np)
        if seed_env is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed_env


def _relearn_module(tokenizer, config: RelearnConfig, work: nn.Module):
    """A :class:`FinetuneModule` whose loss is the global token mean of the answer NLL over all processes."""
    from lit_unlearn.objectives.finetune import FinetuneModule

    class RelearnModule(FinetuneModule):
        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            logp, mask = self.sample_logprobs(batch)
            total = -(logp * mask).sum()
            tokens = mask.sum().detach().float()
            world = self.trainer.world_size
            if world > 1:
                tokens = self.all_gather(tokens).sum()
            loss = total * world / tokens.clamp_min(1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Relearning loss is {loss.item()} at step {self.global_step}; stopping.")
            return loss

    module = RelearnModule(tokenizer=getattr(tokenizer, "name_or_path", None), lr=config.lr, seed=config.seed)
    module.model, module.tokenizer = work.train(), tokenizer
    return module


def relearn_attack(model: nn.Module, tokenizer, config: RelearnConfig | dict | None = None,
                   eval_config: AttackEvalConfig | dict | None = None,
                   plan: RelearnPlan | None = None) -> dict[str, Any]:
    """Run the relearning attack on a copy of ``model``; returns ``{"config", "trained_on", "train_rows",
    "evaluated_forget_rows", "steps", "curve": {metric: [value per step]}, "area": {...}, "gain": {...},
    "runtime_s"}`` (see the module docstring). ``model`` is not modified."""
    config = RelearnConfig.coerce(config)
    eval_config = AttackEvalConfig.coerce(eval_config)
    plan = plan or plan_relearning(config, eval_config)
    with preserved_rng():
        curve, runtime = _relearn(model, tokenizer, config, eval_config, plan)
    steps = list(config.steps)
    metrics = list(curve[0])
    by_metric = {m: [point[m] for point in curve] for m in metrics}
    area = {m: curve_area(steps, v) for m, v in by_metric.items()}
    gain = {m: (None if area[m] is None else area[m] - v[0]) for m, v in by_metric.items()}
    return {
        "config": config.to_dict(),
        "trained_on": plan.train_what,
        "train_rows": plan.train_indices,
        "evaluated_forget_rows": plan.eval_forget_rows,
        "steps": steps,
        "curve": by_metric,
        "area": area,
        "gain": gain,
        "runtime_s": runtime,
    }


def _relearn(model: nn.Module, tokenizer, config: RelearnConfig, eval_config: AttackEvalConfig,
             plan: RelearnPlan) -> tuple[list[dict[str, Any]], float]:
    """The curve (one metrics dict per checkpoint) and the wall time of the attack."""
    import lightning as L

    from lit_unlearn.attacks.quantization import unwrap_adapters

    start = time.perf_counter()
    _train_loader(plan.train_rows, tokenizer, config)  # tokenisation errors before the copy
    work = unwrap_adapters(model).requires_grad_(True)
    steps = list(config.steps)
    curve: list[dict[str, Any]] = []

    def checkpoint(m: nn.Module) -> None:
        curve.append(measure(m, tokenizer, eval_config, forget_rows=plan.eval_forget_rows,
                             retain_report=plan.eval_forget_rows is None))

    class _Checkpoints(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step in steps[len(curve):]:
                checkpoint(pl_module.model)

    L.seed_everything(config.seed, verbose=False)
    if steps[0] == 0:
        checkpoint(work)
    if steps[-1] > 0:
        module = _relearn_module(tokenizer, config, work)
        trainer = L.Trainer(accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
                            max_steps=steps[-1], max_epochs=-1, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=config.progress,
                            num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                            callbacks=[_Checkpoints()])
        if config.batch_size % trainer.world_size:
            raise ValueError(f"relearn.batch_size {config.batch_size} (the global batch) is not divisible by the"
                             f" {trainer.world_size} processes.")
        loader = _train_loader(plan.train_rows, tokenizer, config, steps[-1], trainer.global_rank,
                               trainer.world_size)
        trainer.fit(module, train_dataloaders=loader)
    return curve, round(time.perf_counter() - start, 3)

"""Primal-dual unlearning (PDU; Entesari, Hatami, Khaziev, Ramakrishna, Fazlyab, 2025, "Constrained Entropic
Unlearning: A Primal-Dual Framework for Large Language Models").

Unlearning as a constrained problem: minimise the forget loss subject to the retain loss staying below ε,

    min_θ  γ · F(θ)   s.t.   R(θ) <= ε,        Lagrangian  L(θ, λ) = γ · F(θ) + λ · (R(θ) − ε)

solved by alternating a primal step on θ (the optimizer, on ∇_θ L) with projected dual ascent on λ after
every optimizer step:

    λ ← max(0, λ + η · (R − ε))

F is the logit-margin flattening loss (``losses.logit_margin_flattening``), R the retain term (token-mean
NLL by default). λ is the ``dual`` buffer: saved in checkpoints, restored on resume, logged as ``train/dual``.
Under DDP the R used for the dual update is all-reduced (the global-batch retain loss), so λ is identical on
every rank. With gradient accumulation, R is the mean over the step's micro-batches.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter


def dual_ascent(dual: float, constraint: float, step_size: float, threshold: float) -> float:
    """One projected dual-ascent step: ``max(0, λ + η · (R − ε))``."""
    return max(0.0, dual + step_size * (constraint - threshold))


class PDU(UnlearningModule):
    """PDU: logit-margin flattening on the forget set under a retain-loss constraint with a learned multiplier.

    Args:
        dual_step_size: η > 0, the dual ascent step size (default 1).
        retain_threshold: ε, the constraint level of the retain loss. ``None`` (default) sets it to the retain
            loss of the first training step (the initial model's): "do not get worse on the retain data".
        dual_init: λ₀ >= 0, the initial multiplier (default 1, i.e. GradDiff's retain weight).
        gamma: forget weight.
        retain_loss: the constrained term R, ``nll`` (default) or ``kl``.
        **kwargs: passed to :class:`UnlearningModule` (``alpha`` is unused: λ replaces it).
    """

    retain_losses = ("nll", "kl")

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        dual_step_size: float = 1.0,
        retain_threshold: float | None = None,
        dual_init: float = 1.0,
        gamma: float = 1.0,
        retain_loss: str = "nll",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, retain_loss=retain_loss, **kwargs)
        self.dual_step_size = check_hyperparameter("dual_step_size", dual_step_size)
        self.dual_init = check_hyperparameter("dual_init", dual_init, inclusive=True)
        if retain_threshold is not None:
            retain_threshold = check_hyperparameter("retain_threshold", retain_threshold, inclusive=True)
        self.retain_threshold = retain_threshold
        # persistent buffers: the multiplier and the constraint level travel with checkpoints
        self.register_buffer("dual", torch.tensor(self.dual_init, dtype=torch.float64))
        self.register_buffer("threshold", torch.tensor(math.nan if retain_threshold is None else retain_threshold,
                                                       dtype=torch.float64))
        self._pending: list[Tensor] = []

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return losses.logit_margin_flattening(logits, batch["labels"])

    def global_retain_value(self, retain_loss: Tensor) -> Tensor:
        """The retain loss of the global batch: ``retain_term`` is this rank's share, so average over ranks."""
        value = retain_loss.detach().to(torch.float64)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            value = trainer.strategy.reduce(value.clone(), reduce_op="mean")
        return value

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if "retain" not in batch:
            raise ValueError("PDU constrains the retain loss and needs retain batches; set data.retain_split.")
        forget = batch["forget"]
        size = forget["input_ids"].shape[0]
        forget_loss = self.forget_loss(forget)
        retain_loss = self.retain_term(batch["retain"])
        value = self.global_retain_value(retain_loss)
        if torch.isnan(self.threshold):  # ε = the initial retain loss (identical on every rank: all-reduced)
            self.threshold.fill_(value.item())
        self._pending.append(value)
        dual = float(self.dual)
        loss = self.gamma * forget_loss + dual * (retain_loss - float(self.threshold))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"PDU: the loss became {loss.item()} at step {self.global_step}. Training stops here; checkpoints"
                " written before this step are kept. Lower lr or dual_step_size."
            )
        self.log("train/forget_loss", forget_loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/retain_loss", retain_loss, batch_size=size, sync_dist=True)
        self.log("train/dual", dual, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if self.rectifier is not None:
            self.rectifier.record(self, batch)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.update_dual()

    @torch.no_grad()
    def update_dual(self) -> None:
        """λ ← max(0, λ + η · (mean pending R − ε)), once per optimizer step."""
        if not self._pending:
            return
        constraint = torch.stack(self._pending).mean().item()
        self._pending = []
        self.dual.fill_(dual_ascent(float(self.dual), constraint, self.dual_step_size, float(self.threshold)))

"""Gradient-rectified unlearning (GRU; Wang, Zhang, Pang, Han, Liu, Sugiyama, Liu, 2025, "GRU: Mitigating the
Trade-off between Unlearning and Retention for Large Language Models").

The unlearning gradient g_u (of the whole objective) is projected so that the update −g_u does not increase
the retain loss to first order: with g_r = ∇ NLL_mean(retain batch),

    g_u' = g_u − (⟨g_u, g_r⟩ / ‖g_r‖²) · g_r   if ⟨g_u, g_r⟩ < 0,   else g_u

(the projection onto the half-space {g : ⟨g, g_r⟩ >= 0}), so ⟨−g_u', −g_r⟩ >= 0. Any objective can use it
(``gradient_rectification=True`` on :class:`UnlearningModule`); :class:`GRU` is GA with it switched on.

Choices where the paper leaves room (documented in docs/objectives_new.md): g_r is the gradient of the token-mean
retain NLL on the step's retain batch, optionally smoothed by an exponential moving average
(``rectification_ema``; 0 = the current batch only); the inner products are taken over all trainable parameters
at once (one projection, not one per tensor); with gradient accumulation the retain gradients of the
micro-batches are summed like the objective's. Needs full gradients in ``.grad``: DeepSpeed ZeRO-2/3 is refused
at setup.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from lit_unlearn.objectives.ga import GA


def flat_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Σ_i ⟨a_i, b_i⟩ over matching tensors, in float64."""
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b)) if a else torch.zeros((), dtype=torch.float64)


def rectify(unlearn: Sequence[Tensor], retain: Sequence[Tensor], eps: float = 0.0) -> list[Tensor]:
    """The GRU projection of ``unlearn`` (gradients, one per parameter) against ``retain``.

        g' = g − (⟨g, r⟩ / (‖r‖² + eps)) · r   if ⟨g, r⟩ < 0,   else g  (returned unchanged)

    Naive equivalent on flattened vectors: ``g - min(0, g @ r) / (r @ r) * r``.
    """
    if len(unlearn) != len(retain):
        raise ValueError(f"rectify: {len(unlearn)} unlearning gradients but {len(retain)} retain gradients.")
    dot = flat_dot(unlearn, retain)
    if dot >= 0:
        return list(unlearn)
    norm2 = flat_dot(retain, retain)
    if norm2 == 0:
        return list(unlearn)
    coeff = (dot / (norm2 + eps)).item()
    return [g - coeff * r.to(g.dtype) for g, r in zip(unlearn, retain)]


def check_rectification_support(trainer: Any) -> None:
    """Raise when the strategy does not keep every parameter's full gradient in ``.grad`` (ZeRO-2/3)."""
    from lit_unlearn.strategies import zero_stage

    stage = zero_stage(trainer) if trainer is not None else None
    if stage is not None and stage >= 2:
        raise NotImplementedError(
            f"gradient_rectification (GRU) does not support DeepSpeed ZeRO-{stage}: it needs the full unlearning "
            "and retain gradients of every parameter to project one against the other, but ZeRO-2/3 partitions "
            "gradients across ranks. Use DDP or ZeRO-1 (e.g. configs/trainer/ddp.yaml), or set "
            "gradient_rectification false."
        )


class RetainGradient:
    """Collects g_r during the training step(s) and rectifies ``.grad`` before the optimizer step."""

    def __init__(self, ema: float = 0.0) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"rectification_ema must be in [0, 1), got {ema!r}.")
        self.ema = ema
        self.pending: list[Tensor] | None = None  # summed over the micro-batches of this step
        self.average: list[Tensor] | None = None  # the EMA over steps (when ema > 0)

    def record(self, module: Any, batch: dict[str, Any]) -> None:
        """Add ∇ NLL_mean(retain) of this micro-batch (averaged over data-parallel ranks) to ``pending``."""
        from lit_unlearn.functional import losses

        if "retain" not in batch:
            raise ValueError("gradient_rectification needs retain batches to compute the retain gradient; set "
                             "data.retain_split.")
        params = module.trainable_parameters()
        logp, mask = module.sample_logprobs(batch["retain"])
        nll = losses.nll(logp, mask) * module.global_token_scale(mask.sum())
        grads = torch.autograd.grad(nll, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
        trainer = getattr(module, "_trainer", None)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
            grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
        self.pending = grads if self.pending is None else [a + b for a, b in zip(self.pending, grads)]

    @torch.no_grad()
    def apply(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each ``p.grad`` by its rectified value; clears ``pending``."""
        if self.pending is None:
            return
        retain, self.pending = self.pending, None
        if self.ema > 0:
            self.average = retain if self.average is None else [
                self.ema * a + (1 - self.ema) * r for a, r in zip(self.average, retain)]
            retain = self.average
        if not any(p.grad is not None for p in params):
            raise RuntimeError("gradient_rectification: no parameter has a .grad before the optimizer step (does "
                               "the strategy keep gradients elsewhere, e.g. DeepSpeed?).")
        unlearn = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, g in zip(params, rectify(unlearn, retain)):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)


class GRU(GA):
    """GA with gradient rectification (the paper's GA+GRU): the GA gradient projected against the retain NLL's.

    Args:
        gamma: forget weight.
        rectification_ema: EMA factor of the retain gradient (default 0: the step's retain batch only).
        alpha, retain_loss: retain weight and term added to the *objective* (default ``none``: the retain data
            only shapes the projection, as in GA+GRU).
        **kwargs: passed to :class:`UnlearningModule` (``gradient_rectification`` defaults to True here).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        gradient_rectification: bool = True,
        rectification_ema: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss,
                         gradient_rectification=gradient_rectification, rectification_ema=rectification_ema,
                         **kwargs)

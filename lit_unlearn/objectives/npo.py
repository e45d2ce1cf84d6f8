"""Negative preference optimisation: NPO and its reference-free SimNPO.

* NPO (Zhang et al., 2024): (2/β)·mean_b softplus(β·(NLL_sum_ref,b − NLL_sum_b)); needs the reference
  model's summed log-likelihood of each forget answer, cached once before training by default.
  At θ = ref the loss is 2·ln2/β.
* SimNPO (Fan et al., 2024): (2/β)·mean_b softplus(−β·(NLL_sum_b/n_b − δ)); length-normalised, no reference.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter


class NPO(UnlearningModule):
    """Negative Preference Optimization: ``losses.npo`` with reference log-probs.

    Args:
        beta: inverse temperature β > 0 (default 0.1).
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (``none``/``nll``/``kl``).
        reference: ``cached`` (default: one pass over the forget set before training) or ``live``.
        **kwargs: passed to :class:`UnlearningModule`.
    """

    reference_use = "logprobs"

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        beta: float = 0.1,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        reference: str = "cached",
        **kwargs: Any,
    ):
        super().__init__(
            model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, reference=reference, **kwargs
        )
        self.beta = check_hyperparameter("beta", beta)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logp, mask = self.sample_logprobs(batch)  # (B, T-1)
        ref_logp = self.reference_logprobs(batch, mask)  # (B, T-1), no grad
        return losses.npo(logp, ref_logp, mask, beta=self.beta)


class SimNPO(UnlearningModule):
    """SimNPO: ``losses.simnpo``, reference-free and length-normalised.

    Args:
        beta: β > 0 (default 4.5).
        delta: reward margin δ (default 0; the paper's γ equals β·δ).
        gamma: forget weight (default 0.125, as in the SimNPO TOFU setting).
        alpha, retain_loss: retain weight and term (``none``/``nll``/``kl``).
        **kwargs: passed to :class:`UnlearningModule`.
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        beta: float = 4.5,
        delta: float = 0.0,
        gamma: float = 0.125,
        alpha: float = 1.0,
        retain_loss: str = "none",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        self.beta = check_hyperparameter("beta", beta)
        if not isinstance(delta, (int, float)) or not math.isfinite(delta):
            raise ValueError(f"delta must be a finite number, got {delta!r}.")
        self.delta = float(delta)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.simnpo(*self.sample_logprobs(batch), beta=self.beta, delta=self.delta)

"""Gradient ascent baselines: GA and GradDiff.

* GA (Jang et al., 2023; TOFU's baseline): forget loss = −NLL_mean(forget), i.e. maximise the token-mean
  NLL of the forget answers.
* GradDiff (Liu et al., 2022; TOFU): GA plus the retain NLL, loss = γ·GA + α·NLL_mean(retain), γ = α = 1.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule


class GA(UnlearningModule):
    """Gradient Ascent: ``forget_loss = losses.ga`` = −(1/N) Σ_valid ℓ_t. No reference model.

    Args:
        model_name_or_path: the model to unlearn (see :class:`CausalLMModule`).
        gamma: forget weight γ.
        alpha: retain weight α (used when ``retain_loss`` is not ``none``).
        retain_loss: ``none`` (default), ``nll`` or ``kl``.
        **kwargs: passed to :class:`UnlearningModule` (tokenizer, reference, lr, weight_decay, ...).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.ga(*self.sample_logprobs(batch))


class GradDiff(GA):
    """GA on the forget set plus NLL on the retain set: ``γ·GA + α·NLL_mean(retain)`` (γ = α = 1).

    ``retain_loss="kl"`` gives the KL-regularised variant (live reference).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "nll",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)

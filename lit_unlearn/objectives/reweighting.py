"""Token-reweighted gradient ascent: −(1/N) Σ_valid w_t·ℓ_t with detached weights w_t.

G-effect paper (Wang et al., 2025): WGA w = p^β; TNPO w = 2p^β/(p^β + p_ref^β + ε) (its value is the true
TNPO loss, its gradient the weighted surrogate); WTNPO w = 2p^(β+α_w)/(p^β + p_ref^β + ε).
SatImp paper (Yang et al., 2025): w = p^β1·(1−p)^β2 (saturation × importance); SimSat p^β, SimImp (1−p)^β,
instance-level (one weight per sequence) and group-level (weights averaged in sorted groups of G tokens).
All arguments other than the objective's own go to :class:`UnlearningModule` (gamma, alpha, retain_loss, ...).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter

_M = "builtin:tiny-llama"


class WGA(UnlearningModule):
    """Weighted gradient ascent, ``losses.wga``: w_t = p_t^β, β > 0 (default 1; the G-effect code uses 5)."""

    def __init__(self, model_name_or_path: str = _M, *, beta: float = 1.0, gamma: float = 1.0,
                 alpha: float = 1.0, retain_loss: str = "none", **kwargs: Any):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        self.beta = check_hyperparameter("beta", beta)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.wga(*self.sample_logprobs(batch), beta=self.beta)


class TNPO(UnlearningModule):
    """Token-wise NPO, ``losses.tnpo``: β > 0 (default 4), ε >= 0 (default 1e-5); per-token reference.

    The returned (and logged) value is the true TNPO loss (2/β)·mean log(1 + (p/p_ref)^β); the gradient is
    that of the weighted surrogate. ``reference``: ``cached`` (default) or ``live``.
    """

    reference_use = "logprobs"

    def __init__(self, model_name_or_path: str = _M, *, beta: float = 4.0, eps: float = 1e-5, gamma: float = 1.0,
                 alpha: float = 1.0, retain_loss: str = "none", reference: str = "cached", **kwargs: Any):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss,
                         reference=reference, **kwargs)
        self.beta = check_hyperparameter("beta", beta)
        self.eps = check_hyperparameter("eps", eps, inclusive=True)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logp, mask = self.sample_logprobs(batch)
        return losses.tnpo(logp, self.reference_logprobs(batch, mask), mask, beta=self.beta, eps=self.eps)


class WTNPO(TNPO):
    """Weighted TNPO, ``losses.wtnpo``: β > 0 (default 4), ``alpha_w`` >= 0 (the extra exponent α, default
    1.5; named so to keep ``alpha`` for the retain weight), ε >= 0 (default 1e-5)."""

    def __init__(self, model_name_or_path: str = _M, *, beta: float = 4.0, alpha_w: float = 1.5,
                 eps: float = 1e-5, gamma: float = 1.0, alpha: float = 1.0, retain_loss: str = "none",
                 reference: str = "cached", **kwargs: Any):
        super().__init__(model_name_or_path, beta=beta, eps=eps, gamma=gamma, alpha=alpha,
                         retain_loss=retain_loss, reference=reference, **kwargs)
        self.alpha_w = check_hyperparameter("alpha_w", alpha_w, inclusive=True)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logp, mask = self.sample_logprobs(batch)
        ref_logp = self.reference_logprobs(batch, mask)
        return losses.wtnpo(logp, ref_logp, mask, beta=self.beta, alpha=self.alpha_w, eps=self.eps)


class SatImp(UnlearningModule):
    """SatImp, ``losses.satimp``: w_t = p_t^β1·(1−p_t)^β2, β1, β2 >= 0 (defaults 5 and 0.1)."""

    def __init__(self, model_name_or_path: str = _M, *, beta1: float = 5.0, beta2: float = 0.1,
                 gamma: float = 1.0, alpha: float = 1.0, retain_loss: str = "none", **kwargs: Any):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        self.beta1 = check_hyperparameter("beta1", beta1, inclusive=True)
        self.beta2 = check_hyperparameter("beta2", beta2, inclusive=True)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.satimp(*self.sample_logprobs(batch), beta1=self.beta1, beta2=self.beta2)


class SatImpInstance(SatImp):
    """Instance-level SatImp, ``losses.satimp_instance``: w_b = P_b^β1·(1−P_b)^β2 on NLL_sum_b."""

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.satimp_instance(*self.sample_logprobs(batch), beta1=self.beta1, beta2=self.beta2)


class SatImpGroup(SatImp):
    """Group-level SatImp, ``losses.satimp_group``: sorted token weights averaged in groups of
    ``group_size`` >= 1 tokens (default 4)."""

    def __init__(self, model_name_or_path: str = _M, *, beta1: float = 5.0, beta2: float = 0.1,
                 group_size: int = 4, gamma: float = 1.0, alpha: float = 1.0, retain_loss: str = "none",
                 **kwargs: Any):
        super().__init__(model_name_or_path, beta1=beta1, beta2=beta2, gamma=gamma, alpha=alpha,
                         retain_loss=retain_loss, **kwargs)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}.")
        self.group_size = group_size

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logp, mask = self.sample_logprobs(batch)
        return losses.satimp_group(logp, mask, beta1=self.beta1, beta2=self.beta2, group_size=self.group_size)


class SimSat(UnlearningModule):
    """Saturation only, ``losses.simsat``: w_t = p_t^β, β > 0 (default 5, SatImp's β1)."""

    def __init__(self, model_name_or_path: str = _M, *, beta: float = 5.0, gamma: float = 1.0,
                 alpha: float = 1.0, retain_loss: str = "none", **kwargs: Any):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        self.beta = check_hyperparameter("beta", beta)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.simsat(*self.sample_logprobs(batch), beta=self.beta)


class SimImp(SimSat):
    """Importance only, ``losses.simimp``: w_t = (1−p_t)^β, β > 0 (default 1)."""

    def __init__(self, model_name_or_path: str = _M, *, beta: float = 1.0, gamma: float = 1.0,
                 alpha: float = 1.0, retain_loss: str = "none", **kwargs: Any):
        super().__init__(model_name_or_path, beta=beta, gamma=gamma, alpha=alpha, retain_loss=retain_loss,
                         **kwargs)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        return losses.simimp(*self.sample_logprobs(batch), beta=self.beta)

"""Refusal-answer objectives (Maini et al., 2024, *TOFU: A Task of Fictitious Unlearning for LLMs*): IdkNLL and IdkDPO.

Every forget sample carries a refusal answer ("I don't know ...") to the same question under
``batch["idk"]`` (see :class:`UnlearningDataModule`); the refusal is chosen deterministically from the
sample index, so its cached reference log-probs are keyed by ``("idk", index)``.

* IdkNLL: NLL_mean on (forget question, refusal answer): teach the model to refuse.
* IdkDPO: DPO with the refusal preferred over the forget answer,
  −(2/β)·mean_b logσ(β·[(logπθ−logπref)(y_idk) − (logπθ−logπref)(y_forget)]); 2·ln2/β at θ = ref.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter


def refusal_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The refusal sub-batch of a forget batch, with the forget samples' ``index`` (the cache key)."""
    if "idk" not in batch:
        raise KeyError("The forget batch has no 'idk' refusal answers; use UnlearningDataModule.")
    return {**batch["idk"], "index": batch["index"]}


class IdkNLL(UnlearningModule):
    """NLL of the refusal answer to each forget question: ``losses.nll`` on ``batch["idk"]``.

    Args:
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (``none``/``nll``/``kl``).
        **kwargs: passed to :class:`UnlearningModule`.
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
        return losses.nll(*self.sample_logprobs(refusal_batch(batch)))


class IdkDPO(UnlearningModule):
    """DPO preferring the refusal answer over the forget answer: ``losses.idk_dpo``.

    Args:
        beta: inverse temperature β > 0 (default 0.1).
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (``none``/``nll``/``kl``).
        reference: ``cached`` (default; forget and refusal answers cached before training) or ``live``.
        **kwargs: passed to :class:`UnlearningModule`.
    """

    reference_use = "logprobs"
    reference_keys = ("forget", "idk")

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
        idk = refusal_batch(batch)
        logp_idk, mask_idk = self.sample_logprobs(idk)  # (B, T_idk-1)
        logp, mask = self.sample_logprobs(batch)  # (B, T-1)
        ref_idk = self.reference_logprobs(idk, mask_idk, "idk")
        ref = self.reference_logprobs(batch, mask, "forget")
        return losses.idk_dpo(logp_idk, ref_idk, mask_idk, logp, ref, mask, beta=self.beta)

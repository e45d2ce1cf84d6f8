"""UNDIAL (Dong et al., 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
Language Models"): self-distillation towards the frozen initial model's next-token distribution with the
target token's logit lowered by β (``losses.undial``), on the forget answers' tokens only.

The teacher is the full reference distribution over the vocabulary at every answer position, so UNDIAL always
uses a live frozen copy (``reference`` is ignored): caching B·T·V reference logits would take far more memory
than the copy.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter


class UNDIAL(UnlearningModule):
    """UNDIAL: ``losses.undial`` against the live frozen reference.

    Args:
        beta: β >= 0, how far the target token's reference logit is lowered (default 10, the value the
            paper's code release uses; it reports 3–30).
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (default ``none``: the paper
            uses no retain set).
        **kwargs: passed to :class:`UnlearningModule`.
    """

    reference_use = "model"

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        beta: float = 10.0,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        self.beta = check_hyperparameter("beta", beta, inclusive=True)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        if self.ref_model is None:
            raise RuntimeError("UNDIAL has no reference model; was configure_model called?")
        with torch.no_grad():
            ref_logits = self.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return losses.undial(logits, ref_logits, batch["labels"], beta=self.beta)

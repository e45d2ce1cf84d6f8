"""A custom unlearning objective, kept in your own project (nothing in lit_unlearn is edited).

CappedGA is gradient ascent that stops pushing on tokens that are already forgotten:

    forget_loss = −(1/N) Σ_t min(ℓ_t, cap),    ℓ_t = −log p_θ(y_t | y_<t, x) over the N answer tokens

so a token whose NLL has passed ``cap`` contributes no gradient (plain GA keeps pushing it towards
probability 0, which is what wrecks the model). Naive equivalent, per token:
``loss = -sum(min(nll, cap) for nll in token_nlls) / len(token_nlls)``.

Use it from the command line in the folder that holds this file:

    lit-unlearn fit --config configs/tofu_mini/unlearn.yaml --model my_objective.CappedGA --model.init_args.cap 5
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_unlearn.objectives import UnlearningModule


class CappedGA(UnlearningModule):
    """Gradient ascent on the forget answers with each token's NLL capped at ``cap``.

    Args:
        model_name_or_path: the model to unlearn (a folder, a hub name or ``builtin:tiny-llama``).
        cap: the NLL (in nats) above which a token is considered forgotten (> 0).
        gamma, alpha, retain_loss: as for every objective (forget weight, retain weight, ``none|nll|kl``).
        **kwargs: the other :class:`UnlearningModule` arguments (``lr``, ``tokenizer``, ``save_dir``, ...).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        cap: float = 10.0,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "nll",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        if not cap > 0:
            raise ValueError(f"cap must be > 0, got {cap!r}")
        self.cap = float(cap)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logp, mask = self.sample_logprobs(batch)  # (B, T-1) answer-token log-probs and their mask
        nll = torch.clamp(-logp, max=self.cap)
        return -(nll * mask).sum() / mask.sum().clamp(min=1)

"""CE-U (Yang, 2025, "CE-U: Cross Entropy Unlearning"): cross-entropy to the model's own next-token
distribution with the target token removed (``losses.ceu``). No reference model, no retain set by default.

The paper's training setup skips the first answer token(s) (a footnote of its TOFU settings: the first token
of an answer is often fixed by the question's phrasing); ``skip_first_answer_tokens`` (default 1) does the
same, 0 uses every answer token.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_unlearn.functional import losses
from lit_unlearn.functional.tokens import IGNORE_INDEX
from lit_unlearn.objectives.base import UnlearningModule


def drop_first_answer_tokens(labels: Tensor, n: int) -> Tensor:
    """``labels`` with the first ``n`` labelled tokens of every row set to −100 (``(B, T)``)."""
    if n == 0:
        return labels
    valid = labels != IGNORE_INDEX
    first = valid & (valid.cumsum(dim=-1) <= n)
    return labels.masked_fill(first, IGNORE_INDEX)


class CEU(UnlearningModule):
    """CE-U: ``losses.ceu`` on the forget answers.

    Args:
        skip_first_answer_tokens: leading answer tokens left out of the loss (default 1, as in the paper's
            TOFU setup); a row whose answer is not longer than this contributes nothing.
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (default ``none``).
        **kwargs: passed to :class:`UnlearningModule`.
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        skip_first_answer_tokens: int = 1,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        if isinstance(skip_first_answer_tokens, bool) or not isinstance(skip_first_answer_tokens, int) \
                or skip_first_answer_tokens < 0:
            raise ValueError(f"skip_first_answer_tokens must be an integer >= 0, got {skip_first_answer_tokens!r}.")
        self.skip_first_answer_tokens = skip_first_answer_tokens

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        # the skipped token is the first *predicted* answer token: label position 1.. of the shifted targets
        labels = batch["labels"].clone()
        labels[:, 1:] = drop_first_answer_tokens(labels[:, 1:], self.skip_first_answer_tokens)
        return losses.ceu(logits, labels)

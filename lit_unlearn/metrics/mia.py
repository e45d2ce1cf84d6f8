"""Membership-inference metrics: MIA AUC (LOSS, ZLib, Min-K%, Min-K%++ scores) and privleak."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_unlearn.functional import metrics as F
from lit_unlearn.functional.tokens import token_logprobs
from lit_unlearn.metrics.base import check_index, unique_by_index

ScoreKind = Literal["loss", "zlib", "min_k", "min_k_plus_plus"]
SCORE_KINDS = ("loss", "zlib", "min_k", "min_k_plus_plus")


def mia_scores(
    logits: Tensor, labels: Tensor, score: ScoreKind = "min_k", k: float = 0.4, texts: Sequence[str] | None = None
) -> Tensor:
    """Per-sample MIA score of one kind, higher = less likely a training member: ``(B,)``.

    ``"loss"``: avg NLL; ``"zlib"``: avg NLL / zlib length of ``texts``; ``"min_k"``: Min-K% Prob;
    ``"min_k_plus_plus"``: Min-K%++ (both with fraction ``k``, final EOS excluded).
    """
    if score == "min_k_plus_plus":
        return F.min_k_plus_plus_score(logits, labels, k)
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    if score == "min_k":
        return F.min_k_score(logp, mask, k)
    if score == "loss":
        return F.loss_score(logp, mask)
    if score == "zlib":
        if texts is None:
            raise ValueError("the 'zlib' score needs the decoded `texts` of the batch")
        return F.zlib_score(F.loss_score(logp, mask), texts)
    raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")


class MIAAUC(Metric):
    """ROC AUC of a membership-inference attack separating holdout (label 1) from forget (label 0)
    samples by a per-sample score (``functional.metrics.mia_auc``; no sigmoid, unlike ``BinaryAUROC``).

    ~1 means the forget set still looks like training data; ~0.5 means indistinguishable from holdout.
    ``higher_is_better=None``: compare to the retain model's AUC (see :class:`PrivLeak`).

    Args:
        score: ``"loss"``, ``"zlib"``, ``"min_k"`` or ``"min_k_plus_plus"``.
        k: fraction of lowest tokens for the Min-K scores.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import MIAAUC
        >>> labels = torch.tensor([[-100, 1, 2], [-100, 1, 2]])
        >>> forget_logits = torch.zeros(2, 3, 4)
        >>> forget_logits[:, 0, 1] = torch.tensor([3.0, 2.0])  # forget answers are likely: low loss
        >>> metric = MIAAUC(score="loss")
        >>> metric.update(forget_logits, labels, member=True)
        >>> metric.update(torch.zeros(2, 3, 4), labels, member=False)
        >>> float(metric.compute())
        1.0
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, score: ScoreKind = "min_k", k: float = 0.4, **kwargs) -> None:
        super().__init__(**kwargs)
        if score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
        self.score = score
        self.k = k
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("holdout", default=[], dist_reduce_fx="cat")  # 1 = holdout (non-member), 0 = forget
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(
        self,
        logits: Tensor,
        labels: Tensor,
        member: bool,
        texts: Sequence[str] | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Add a batch of forget samples (``member=True``) or holdout samples (``member=False``)."""
        scores = mia_scores(logits, labels, self.score, self.k, texts).detach().float()  # (B,)
        index = check_index(index, scores.numel())
        if index is None:
            index = torch.full((scores.numel(),), -1, dtype=torch.long)
        self.scores.append(scores)
        self.holdout.append(torch.full_like(scores, 0.0 if member else 1.0))
        self.indices.append(index.to(scores.device))

    def group_scores(self) -> tuple[Tensor, Tensor]:
        """``(forget_scores, holdout_scores)``; duplicates of (group, index) dropped when indices are known."""
        if isinstance(self.scores, list) and len(self.scores) == 0:
            raise ValueError(f"{type(self).__name__}: no samples; call update() before compute()")
        scores, holdout = dim_zero_cat(self.scores), dim_zero_cat(self.holdout)
        indices = dim_zero_cat(self.indices).long()
        if bool((indices >= 0).all()):
            _, scores, holdout = unique_by_index(indices * 2 + holdout.long(), scores, holdout)
        is_holdout = holdout > 0.5
        if bool(is_holdout.all()) or not bool(is_holdout.any()):
            raise ValueError(
                f"{type(self).__name__} needs both forget (member=True) and holdout (member=False) samples"
            )
        return scores[~is_holdout], scores[is_holdout]

    def compute(self) -> Tensor:
        """AUC with forget = 0, holdout = 1."""
        return torch.tensor(F.mia_auc(*self.group_scores()), dtype=torch.float32)


class PrivLeak(MIAAUC):
    """MUSE privleak = ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) · 100; 0 = like the retain
    model, large negative = the forget set still leaks. ``higher_is_better=None`` (closer to 0 is better).

    Args:
        retain_auc: the retain model's MIA AUC on the same forget/holdout sets and score.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import PrivLeak
        >>> labels = torch.tensor([[-100, 1, 2], [-100, 1, 2]])
        >>> forget_logits = torch.zeros(2, 3, 4)
        >>> forget_logits[:, 0, 1] = torch.tensor([3.0, 2.0])
        >>> metric = PrivLeak(retain_auc=0.5, score="loss")
        >>> metric.update(forget_logits, labels, member=True)
        >>> metric.update(torch.zeros(2, 3, 4), labels, member=False)
        >>> float(metric.compute())  # AUC = 1: ((1 - 1) - 0.5) / 0.5 * 100
        -100.0
    """

    def __init__(self, retain_auc: float, score: ScoreKind = "min_k", k: float = 0.4, **kwargs) -> None:
        super().__init__(score=score, k=k, **kwargs)
        F.privleak(0.5, retain_auc)  # validates retain_auc early
        self.retain_auc = float(retain_auc)

    def compute(self) -> Tensor:
        """privleak in percent."""
        return torch.tensor(F.privleak(F.mia_auc(*self.group_scores()), self.retain_auc), dtype=torch.float32)

"""Membership-inference metrics: MIA AUC (LOSS, ZLib, Min-K%, Min-K%++, GradNorm, reference-model scores),
privleak, and the AUC of Min-K% over a sweep of k."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_unlearn.functional import metrics as F
from lit_unlearn.functional import mia as M
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


def _forget_holdout(scores, holdout, indices, who: str) -> tuple[Tensor, Tensor]:
    """Split the (synced) states into ``(forget_scores, holdout_scores)`` (rows of ``scores`` may be vectors);
    duplicates of (group, index) dropped when every index is known."""
    if isinstance(scores, list) and len(scores) == 0:
        raise ValueError(f"{who}: no samples; call update() before compute()")
    scores, holdout = dim_zero_cat(scores), dim_zero_cat(holdout)
    indices = dim_zero_cat(indices).long()
    if bool((indices >= 0).all()):
        _, scores, holdout = unique_by_index(indices * 2 + holdout.long(), scores, holdout)
    is_holdout = holdout > 0.5
    if bool(is_holdout.all()) or not bool(is_holdout.any()):
        raise ValueError(f"{who} needs both forget (member=True) and holdout (member=False) samples")
    return scores[~is_holdout], scores[is_holdout]


class ScoreMIAAUC(Metric):
    """ROC AUC of a membership-inference attack from per-sample scores already computed (higher = less
    likely member): ``update(scores, member, index)``; forget = 0, holdout = 1 (``functional.metrics.mia_auc``).
    The base of every MIA metric here; the states are concatenated across processes (``dist_reduce_fx="cat"``)
    and duplicates of a (group, index) pair, e.g. from a ``DistributedSampler``'s padding, dropped.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("holdout", default=[], dist_reduce_fx="cat")  # 1 = holdout (non-member), 0 = forget
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def _append_scores(self, scores: Tensor, member: bool, index: Tensor | None) -> None:
        scores = scores.detach().float().reshape(-1)
        index = check_index(index, scores.numel())
        if index is None:
            index = torch.full((scores.numel(),), -1, dtype=torch.long)
        self.scores.append(scores)
        self.holdout.append(torch.full_like(scores, 0.0 if member else 1.0))
        self.indices.append(index.to(scores.device))

    def update(self, scores: Tensor, member: bool, index: Tensor | None = None) -> None:
        """Add the ``(B,)`` scores of forget samples (``member=True``) or holdout samples (``member=False``)."""
        self._append_scores(scores, member, index)

    def group_scores(self) -> tuple[Tensor, Tensor]:
        """``(forget_scores, holdout_scores)``; duplicates of (group, index) dropped when indices are known."""
        return _forget_holdout(self.scores, self.holdout, self.indices, type(self).__name__)

    def compute(self) -> Tensor:
        """AUC with forget = 0, holdout = 1."""
        return torch.tensor(F.mia_auc(*self.group_scores()), dtype=torch.float32)


class MIAAUC(ScoreMIAAUC):
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

    def update(  # type: ignore[override]
        self,
        logits: Tensor,
        labels: Tensor,
        member: bool,
        texts: Sequence[str] | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Add a batch of forget samples (``member=True``) or holdout samples (``member=False``)."""
        self._append_scores(mia_scores(logits, labels, self.score, self.k, texts), member, index)  # (B,)


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


class _PrivLeakMixin:
    """``compute()`` returns MUSE privleak (percent) against ``retain_auc`` instead of the AUC."""

    retain_auc: float

    def _set_retain_auc(self, retain_auc: float) -> None:
        F.privleak(0.5, retain_auc)  # validates retain_auc early
        self.retain_auc = float(retain_auc)

    def compute(self) -> Tensor:
        """privleak in percent."""
        return torch.tensor(F.privleak(F.mia_auc(*self.group_scores()), self.retain_auc), dtype=torch.float32)


class GradNormMIAAUC(ScoreMIAAUC):
    """AUC of the GradNorm attack: score = ‖∇_θ L_i‖_p, the p-norm of the gradient of a sample's mean NLL
    (``functional.mia.gradnorm_scores``; Wang, Wang, Li and Neel, 2024). Forget = 0, holdout = 1, as
    :class:`MIAAUC`.

    Args:
        p: norm order (default 2).
        aggregation: ``"global"`` (norm of the whole concatenated gradient, default) or ``"layer_mean"`` (mean
            of the per-parameter-tensor norms).

    ``update(model, input_ids, attention_mask, labels, member, index=None)`` runs one forward and backward per
    sample (the model's ``.grad`` and mode are left as they were).
    """

    def __init__(self, p: float = 2.0, aggregation: str = "global", **kwargs) -> None:
        super().__init__(**kwargs)
        M._check_p(p)
        if aggregation not in M.GRAD_AGGREGATIONS:
            raise ValueError(f"GradNorm: aggregation must be one of {M.GRAD_AGGREGATIONS}, got {aggregation!r}.")
        self.p = p
        self.aggregation = aggregation

    def update(self, model, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,  # type: ignore[override]
               member: bool, index: Tensor | None = None) -> None:
        """Score a batch of forget (``member=True``) or holdout (``member=False``) samples."""
        scores = M.gradnorm_scores(model, input_ids, attention_mask, labels, self.p, self.aggregation)
        self._append_scores(scores.to(self.device), member, index)


class GradNormPrivLeak(_PrivLeakMixin, GradNormMIAAUC):
    """privleak of the GradNorm attack against the retain model's GradNorm AUC (see :class:`PrivLeak`)."""

    def __init__(self, retain_auc: float, p: float = 2.0, aggregation: str = "global", **kwargs) -> None:
        super().__init__(p=p, aggregation=aggregation, **kwargs)
        self._set_retain_auc(retain_auc)


class ReferenceMIAAUC(ScoreMIAAUC):
    """AUC of the reference-model attack: score = L_i(θ) − L_i(θ_ref), the sample's mean NLL under the attacked
    model minus under a reference model (``functional.mia.reference_scores``). Forget = 0, holdout = 1.

    ``update(logits, reference_logits, labels, member, index=None)``.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import ReferenceMIAAUC
        >>> labels = torch.tensor([[-100, 1, 2], [-100, 1, 2]])
        >>> forget_logits = torch.zeros(2, 3, 4)
        >>> forget_logits[:, 0, 1] = torch.tensor([3.0, 2.0])  # easier than for the reference
        >>> metric = ReferenceMIAAUC()
        >>> metric.update(forget_logits, torch.zeros(2, 3, 4), labels, member=True)
        >>> metric.update(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), labels, member=False)
        >>> float(metric.compute())
        1.0
    """

    def update(self, logits: Tensor, reference_logits: Tensor, labels: Tensor,  # type: ignore[override]
               member: bool, index: Tensor | None = None) -> None:
        """Score a batch of forget (``member=True``) or holdout (``member=False``) samples."""
        self._append_scores(M.reference_scores(logits, reference_logits, labels), member, index)


class ReferencePrivLeak(_PrivLeakMixin, ReferenceMIAAUC):
    """privleak of the reference-model attack against the retain model's AUC (see :class:`PrivLeak`)."""

    def __init__(self, retain_auc: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._set_retain_auc(retain_auc)


class MIAKSweep(Metric):
    """MIA AUC of Min-K% (or Min-K%++) for several fractions k from the same forward passes:
    ``compute() -> {k: AUC}`` (``functional.mia.min_k_sweep_scores``; each entry equals
    ``MIAAUC(score, k=k)``). Shows how much the reported AUC depends on the choice of k.

    Args:
        score: ``"min_k"`` or ``"min_k_plus_plus"``.
        ks: the fractions (default 0.1, 0.2, ..., 0.6).
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, score: str = "min_k", ks: Sequence[float] = M.DEFAULT_K_SWEEP, **kwargs) -> None:
        super().__init__(**kwargs)
        if score not in ("min_k", "min_k_plus_plus"):
            raise ValueError(f"MIAKSweep: score must be 'min_k' or 'min_k_plus_plus', got {score!r}.")
        if not ks:
            raise ValueError("MIAKSweep: ks is empty; pass fractions such as (0.1, 0.2, ..., 0.6).")
        for k in ks:
            F._check_k(k)
        self.score = score
        self.ks = tuple(float(k) for k in ks)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("holdout", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor, member: bool, index: Tensor | None = None) -> None:
        """Add a batch of forget (``member=True``) or holdout (``member=False``) samples."""
        scores = M.min_k_sweep_scores(logits, labels, self.ks, self.score).detach().float()  # (B, K)
        index = check_index(index, scores.shape[0])
        if index is None:
            index = torch.full((scores.shape[0],), -1, dtype=torch.long)
        self.scores.append(scores)
        self.holdout.append(torch.full((scores.shape[0],), 0.0 if member else 1.0, device=scores.device))
        self.indices.append(index.to(scores.device))

    def compute(self) -> dict[float, Tensor]:
        """``{k: AUC}`` with forget = 0, holdout = 1."""
        forget, holdout = _forget_holdout(self.scores, self.holdout, self.indices, type(self).__name__)
        return {k: torch.tensor(F.mia_auc(forget[:, j], holdout[:, j]), dtype=torch.float32)
                for j, k in enumerate(self.ks)}

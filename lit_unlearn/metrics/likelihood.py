"""Likelihood metrics: probability, truth ratio, forget quality, perplexity (TOFU, Maini et al., 2024)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_unlearn.functional import metrics as F
from lit_unlearn.functional.tokens import sequence_lengths, sequence_nll_sum, token_logprobs
from lit_unlearn.metrics.base import PerSampleMetric


class Probability(PerSampleMetric):
    """TOFU probability: mean over samples of exp(−NLL_sum_b / n_b) (answer tokens, EOS included).

    ``higher_is_better=True`` (a utility metric; on the forget set lower means more forgotten).

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import Probability
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: p = 1/4 per token
        >>> labels = torch.tensor([[-100, 1, 2]])
        >>> metric = Probability()
        >>> metric.update(logits, labels, index=torch.tensor([7]))
        >>> round(float(metric.compute()), 4)
        0.25
        >>> metric.value_by_index()
        {7: 0.25}
    """

    higher_is_better = True
    is_differentiable = False

    def update(self, logits: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``logits`` (B, T, V), ``labels`` (B, T) with −100 on prompt and padding."""
        logp, mask = token_logprobs(logits, labels)  # (B, T-1)
        self._append(F.probability(logp, mask), index)


class TruthRatio(PerSampleMetric):
    """TOFU truth ratio TR_i = w_i / c_i, aggregated per split.

    ``split="forget"``: mean min(TR, 1/TR); ``split="other"`` (retain, real-authors, world-facts):
    mean max(0, 1 − TR); ``split="prob_mean"`` (any split): mean c/(c+w) = mean 1/(1 + TR).
    ``value_by_index()`` returns the raw per-sample TR_i (what a retain model's report stores for later
    forget-quality computations).

    Example:
        >>> import math, torch
        >>> from lit_unlearn.metrics import TruthRatio
        >>> correct = torch.tensor([1.0, 2.0])  # avg NLL of the correct (paraphrased) answers
        >>> perturbed = torch.tensor([[2.0, 2.0], [1.0, 1.0]])  # avg NLL of 2 perturbed answers each
        >>> metric = TruthRatio(split="other")
        >>> metric.update(correct, perturbed, index=torch.tensor([0, 1]))
        >>> {i: round(v, 4) for i, v in metric.value_by_index().items()}  # exp(-1), exp(1)
        {0: 0.3679, 1: 2.7183}
        >>> round(float(metric.compute()), 4)  # mean(max(0, 1 - TR)) = (1 - exp(-1) + 0) / 2
        0.3161
    """

    higher_is_better = True
    is_differentiable = False

    def __init__(self, split: F.TruthRatioSplit = "forget", **kwargs) -> None:
        super().__init__(**kwargs)
        if split not in ("forget", "other", "prob_mean"):
            raise ValueError(f"split must be 'forget', 'other' or 'prob_mean', got {split!r}")
        self.split = split

    def update(self, correct_avg_nll: Tensor, perturbed_avg_nll: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``correct_avg_nll`` (N,), ``perturbed_avg_nll`` (N, J) length-normalised NLLs."""
        self._append(F.truth_ratio(correct_avg_nll, perturbed_avg_nll), index)

    def compute(self) -> Tensor:
        """The split's aggregate of the per-sample truth ratios."""
        return F.truth_ratio_score(self._per_sample()[1], self.split).mean()

    def value_by_index(self) -> dict[int, float]:
        """Per-sample raw TR_i; with ``split="prob_mean"`` the per-sample c/(c+w) = 1/(1 + TR_i) instead."""
        values = super().value_by_index()
        if self.split == "prob_mean":
            return {i: 1.0 / (1.0 + v) for i, v in values.items()}
        return values


class ForgetQuality(TruthRatio):
    """TOFU forget quality: KS-test p-value between this model's forget-set truth ratios and the retain
    model's (``scipy.stats.ks_2samp``). ``higher_is_better=True``.

    Args:
        retain_truth_ratios: the retain model's per-sample forget-set TRs, as a sequence/tensor or as the
            ``{index: TR}`` dict from ``TruthRatio.value_by_index()`` of its report.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import ForgetQuality
        >>> metric = ForgetQuality(retain_truth_ratios=[0.5, 0.6, 0.7])
        >>> metric.update(torch.tensor([0.0, 0.0, 0.0]), torch.log(torch.tensor([[2.0], [1/0.6], [1/0.7]])))
        >>> round(float(metric.compute()), 4)  # identical TR samples: p-value 1
        1.0
    """

    higher_is_better = True

    def __init__(self, retain_truth_ratios: Tensor | Sequence[float] | Mapping[int, float], **kwargs) -> None:
        super().__init__(split="forget", **kwargs)
        if isinstance(retain_truth_ratios, Mapping):
            retain_truth_ratios = [retain_truth_ratios[i] for i in sorted(retain_truth_ratios)]
        retain = torch.as_tensor(retain_truth_ratios, dtype=torch.float64).flatten()
        if retain.numel() == 0:
            raise ValueError("retain_truth_ratios is empty: forget quality needs the retain model's truth ratios")
        self.retain_truth_ratios = retain

    def compute(self) -> Tensor:
        """KS p-value against the retain model's truth ratios."""
        return torch.tensor(F.forget_quality(self._per_sample()[1], self.retain_truth_ratios), dtype=torch.float32)


class Perplexity(Metric):
    """Perplexity exp(Σ NLL / Σ n) over every labelled token of a text set. ``higher_is_better=False``.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import Perplexity
        >>> metric = Perplexity()
        >>> metric.update(torch.zeros(2, 4, 8), torch.tensor([[5, 1, 2, 3], [5, 6, -100, -100]]))
        >>> round(float(metric.compute()), 4)  # uniform over 8 tokens
        8.0
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("n_tokens", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: ``logits`` (B, T, V), ``labels`` (B, T) with −100 where no token is scored."""
        logp, mask = token_logprobs(logits, labels)  # (B, T-1)
        self.nll_sum += sequence_nll_sum(logp, mask).sum().detach()
        self.n_tokens += sequence_lengths(mask).sum()

    def compute(self) -> Tensor:
        """exp(token-mean NLL)."""
        return F.perplexity(self.nll_sum, self.n_tokens)

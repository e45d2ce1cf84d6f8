"""Tokenwise memorization metrics: memorization accuracy, unlearning accuracy, extraction strength.

All exclude the final labelled token (the EOS) by default, the tokenwise convention of ``lit_unlearn.functional.metrics``.
"""
from __future__ import annotations

from torch import Tensor

from lit_unlearn.functional import metrics as F
from lit_unlearn.metrics.base import PerSampleMetric


class MemorizationAccuracy(PerSampleMetric):
    """MA: per sample the fraction of answer tokens whose teacher-forced argmax is right, averaged over
    samples (MRD paper §5.2). ``higher_is_better=False``: lower on the forget set = more forgotten.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import MemorizationAccuracy
        >>> logits = torch.zeros(1, 4, 5)
        >>> logits[0, 0, 3] = logits[0, 1, 1] = 1.0  # predicts 3 then 1; targets are 3 then 4
        >>> labels = torch.tensor([[-100, 3, 4, 2]])  # last labelled token (EOS 2) is excluded
        >>> metric = MemorizationAccuracy()
        >>> metric.update(logits, labels)
        >>> float(metric.compute())
        0.5
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(self, exclude_last: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exclude_last = exclude_last

    def update(self, logits: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``logits`` (B, T, V), ``labels`` (B, T) with −100 on prompt and padding."""
        self._append(F.memorization_accuracy(logits, labels, self.exclude_last), index)


class UnlearningAccuracy(MemorizationAccuracy):
    """UA = 1 − MA on the forget set (MRD paper: "UA = 1 − FA"); per sample 1 − MA_b.
    ``higher_is_better=True``.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import UnlearningAccuracy
        >>> logits = torch.zeros(1, 4, 5)
        >>> logits[0, 0, 3] = logits[0, 1, 1] = 1.0
        >>> metric = UnlearningAccuracy()
        >>> metric.update(logits, torch.tensor([[-100, 3, 4, 2]]))
        >>> float(metric.compute())
        0.5
    """

    higher_is_better = True

    def update(self, logits: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``logits`` (B, T, V), ``labels`` (B, T)."""
        ma = F.memorization_accuracy(logits, labels, self.exclude_last)
        self._append(F.unlearning_accuracy(ma), index)


class ExtractionStrength(PerSampleMetric):
    """ES = 1 − k*/N, k* the shortest answer prefix from which greedy decoding reproduces the rest.

    Computed exactly from one teacher-forced pass (see ``functional.metrics.extraction_strength_from_logits``).
    ``higher_is_better=False``: lower on the forget set = harder to extract.

    Example:
        >>> import torch
        >>> from lit_unlearn.metrics import ExtractionStrength
        >>> logits = torch.zeros(1, 5, 6)
        >>> logits[0, 0, 0] = 1.0  # first answer token predicted wrong (target 3)
        >>> logits[0, 1, 4] = logits[0, 2, 5] = 1.0  # the next two right
        >>> metric = ExtractionStrength()
        >>> metric.update(logits, torch.tensor([[-100, 3, 4, 5, 2]]))
        >>> round(float(metric.compute()), 4)  # k* = 1 of N = 3 answer tokens
        0.6667
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(self, exclude_last: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exclude_last = exclude_last

    def update(self, logits: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``logits`` (B, T, V), ``labels`` (B, T)."""
        self._append(F.extraction_strength_from_logits(logits, labels, self.exclude_last), index)

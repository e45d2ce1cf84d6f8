"""Aggregate metrics built from other metrics' values: model utility."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_unlearn.functional import metrics as F


class ModelUtility(Metric):
    """TOFU model utility: harmonic mean of the values passed to ``update`` (TOFU: 9 of them, retain
    {prob, ROUGE-L, TR}, real-authors and world-facts {normalised prob, ROUGE-L, TR}).
    ``higher_is_better=True``. Under DDP the values of all ranks are pooled.

    Example:
        >>> from lit_unlearn.metrics import ModelUtility
        >>> metric = ModelUtility()
        >>> metric.update([0.5, 1.0])
        >>> metric.update([0.25])
        >>> round(float(metric.compute()), 4)  # 3 / (2 + 1 + 4)
        0.4286
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor | Sequence[float]) -> None:
        """Add utility values (each in [0, 1])."""
        self.values.append(torch.as_tensor(values, dtype=torch.float32).flatten())

    def compute(self) -> Tensor:
        """Harmonic mean (0 if any value is 0)."""
        return torch.tensor(F.model_utility(dim_zero_cat(self.values)), dtype=torch.float32)

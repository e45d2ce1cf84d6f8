"""Shared machinery for per-sample metrics: cat states of values and dataset indices.

Every per-sample metric keeps two ``dist_reduce_fx="cat"`` states, ``values`` (float32) and ``indices``
(int64, the ``index`` field of the batch, -1 when none was given). Under DDP they are gathered from
every rank before ``compute()``; when indices are known, duplicates (``DistributedSampler`` pads the
last batch by repeating samples) are dropped and values are ordered by index, so the result does not
depend on the number of ranks or the order they saw the samples in.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def unique_by_index(indices: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Keep the first occurrence of every index and sort by index: ``(M,), (M,)... -> (U,), (U,)...``."""
    uniq, inverse = torch.unique(indices, return_inverse=True)  # uniq is sorted
    positions = torch.arange(indices.numel(), device=indices.device)
    first = torch.full_like(uniq, indices.numel()).scatter_reduce(0, inverse, positions, reduce="amin")
    return (uniq, *(v[first] for v in values))


def check_index(index: Tensor | None, batch_size: int) -> Tensor | None:
    """Validate an optional ``index`` tensor of shape ``(B,)`` with non-negative entries."""
    if index is None:
        return None
    index = torch.as_tensor(index)
    if index.dim() != 1 or index.numel() != batch_size:
        raise ValueError(f"index must have shape ({batch_size},), got {tuple(index.shape)}")
    if index.numel() and int(index.min()) < 0:
        raise ValueError("index entries must be >= 0 (dataset row indices)")
    return index.long()


class PerSampleMetric(Metric):
    """Base class: accumulates one float per sample (with its dataset index) and averages them.

    Subclasses compute per-sample values in ``update`` and call :meth:`_append`.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def _append(self, values: Tensor, index: Tensor | None) -> None:
        values = values.detach().to(torch.float32).flatten()  # (B,)
        index = check_index(index, values.numel())
        if index is None:
            index = torch.full((values.numel(),), -1, dtype=torch.long)
        self.values.append(values)
        self.indices.append(index.to(values.device))

    def _per_sample(self) -> tuple[Tensor, Tensor]:
        """``(indices, values)`` of the (synced) states, deduplicated and sorted when indices are known."""
        if isinstance(self.values, list) and len(self.values) == 0:
            raise ValueError(f"{type(self).__name__}: no samples; call update() before compute()")
        values = dim_zero_cat(self.values)
        indices = dim_zero_cat(self.indices).long()
        has_index = indices >= 0
        if bool(has_index.all()):
            return unique_by_index(indices, values)
        if bool(has_index.any()):
            raise ValueError(f"{type(self).__name__}: index was given in some update() calls but not in others")
        return indices, values

    def compute(self) -> Tensor:
        """Mean of the per-sample values."""
        return self._per_sample()[1].mean()

    def value_by_index(self) -> dict[int, float]:
        """Per-sample values as ``{dataset index: value}`` (gathered from every rank under DDP)."""
        sync_here = self._to_sync and not self._is_synced  # compute() syncs by itself; do the same here
        with self.sync_context(should_sync=sync_here, should_unsync=sync_here):
            indices, values = self._per_sample()
        if bool((indices < 0).any()):
            raise ValueError(f"{type(self).__name__}: value_by_index() needs `index` in every update() call")
        return {int(i): float(v) for i, v in zip(indices.tolist(), values.tolist())}

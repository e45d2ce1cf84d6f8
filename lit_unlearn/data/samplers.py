"""Samplers: the weighted distributed sampler behind the MRD curriculum
(Feng et al., 2025, *A Neuro-Inspired Interpretation of Unlearning in Large Language Models through
Sample-Level Unlearning Difficulty*).

MRD paper, CGA / "+MRD": forget samples are drawn with probability p_i ∝ (MRD_i + ε)^τ, recomputed
every few epochs. Every rank must draw from the *same* weighted sample so that the global batch is
the one a single process would see: each rank draws

    draws = multinomial(weights, total_size, replacement=True, generator seeded with seed + epoch)

and keeps ``draws[rank::num_replicas]``. With no weights it is a plain (shuffled) DistributedSampler.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler


class WeightedDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` that, once given weights, samples indices ∝ weights with replacement.

    Args:
        dataset: the dataset to sample from (only its length is used).
        num_replicas, rank: as for ``DistributedSampler``; pass ``num_replicas=1, rank=0`` to use it
            without an initialised process group.
        shuffle, seed, drop_last: as for ``DistributedSampler`` (``shuffle`` applies to the unweighted
            mode; weighted draws are always random).
        weights: optional initial weights, see :meth:`set_weights`.

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``: draws depend on
    ``seed + epoch`` only, so every rank (and a resumed run) draws the same indices.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.weights: torch.Tensor | None = None
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights: Sequence[float] | torch.Tensor | None) -> None:
        """Sample ∝ ``weights`` from the next ``__iter__`` on (``None``: back to uniform shuffling).

        Weights must be finite, non-negative, not all zero, one per dataset row.
        """
        if weights is None:
            self.weights = None
            return
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().flatten()
        size = len(self.dataset)
        if w.numel() != size:
            raise ValueError(f"weights has {w.numel()} entries but the dataset has {size} rows")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite (got NaN or inf)")
        if bool((w < 0).any()):
            raise ValueError(f"weights must be non-negative (min {w.min().item():.4g})")
        if not bool((w > 0).any()):
            raise ValueError("weights must not all be zero")
        self.weights = w

    def __iter__(self) -> Iterator[int]:
        if self.weights is None:
            return super().__iter__()
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=gen)  # (total,)
        mine = draws[self.rank : self.total_size : self.num_replicas]  # (num_samples,)
        return iter(mine.tolist())

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to draw the same indices: weights, epoch and seed."""
        weights = None if self.weights is None else self.weights.clone()
        return {"weights": weights, "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (weights are validated against this dataset)."""
        missing = {"weights", "epoch", "seed"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}")
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
        self.set_weights(state["weights"])

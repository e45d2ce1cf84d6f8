"""The frozen reference model's log-probabilities, cached once before training.

NPO and IdkDPO need only the reference's per-sequence log-likelihood of each forget answer (and of its
refusal answer), TNPO/WTNPO its per-token log-probs. Since the reference *is* the initial model, one
``no_grad`` pass over the forget set before the first step gives them all, and no second model has to sit
in memory. The cache maps a sample ``index`` to the 1-D tensor of its valid-token log-probs; a batch's
``(B, T-1)`` tensor is rebuilt by placing them at the batch's mask positions.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

LogprobFn = Callable[[dict], tuple[Tensor, Tensor]]


class ReferenceLogprobCache:
    """Per-sample reference token log-probs keyed by ``(sub-batch key, index)``."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, int], Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def fill(self, logprob_fn: LogprobFn, batches: Iterable[dict], keys: tuple[str, ...] = ("forget",)) -> None:
        """Run ``logprob_fn`` over every batch; key ``"forget"`` is the batch itself, others its sub-batches."""
        for batch in batches:
            for key in keys:
                sub = batch if key == "forget" else batch[key]
                logp, mask = logprob_fn(sub)
                for b, index in enumerate(batch["index"].tolist()):
                    self._store[(key, index)] = logp[b][mask[b]].detach().to("cpu", torch.float32)

    def lookup(self, index: Tensor, mask: Tensor, key: str = "forget") -> Tensor:
        """The ``(B, T-1)`` reference log-probs for a batch with sample ``index`` and token ``mask``."""
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        for b, i in enumerate(index.tolist()):
            cached = self._store.get((key, i))
            if cached is None:
                raise KeyError(f"No cached reference log-probs for {key} sample {i}; was the cache filled?")
            if cached.numel() != int(mask[b].sum()):
                raise ValueError(
                    f"Cached reference for {key} sample {i} has {cached.numel()} tokens but the batch has"
                    f" {int(mask[b].sum())}: the data or tokenisation changed after caching."
                )
            out[b, mask[b]] = cached.to(mask.device)
        return out

    def state_dict(self) -> dict:
        return {f"{k}:{i}": v for (k, i), v in self._store.items()}

    def load_state_dict(self, state: dict) -> None:
        self._store = {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): v for k, v in state.items()}

"""torchmetrics classes for MUSE (Shi et al., 2024): VerbMem, KnowMem and PrivLeak with MUSE's defaults.

The math is in ``lit_unlearn.functional.muse``; generation (``functional.muse.greedy_texts``) happens
outside the metric, which gets decoded texts, so its state is plain per-sample floats synced under DDP.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_unlearn.functional import metrics as F
from lit_unlearn.functional import muse as M
from lit_unlearn.metrics.base import PerSampleMetric
from lit_unlearn.metrics.mia import PrivLeak, ScoreKind


class _MuseRouge(PerSampleMetric):
    higher_is_better = None  # on the forget set lower = more forgotten; on retain higher = more utility
    is_differentiable = False

    def __init__(self, rouge_type: str = M.MUSE_ROUGE_TYPE, measure: str = M.MUSE_ROUGE_MEASURE,
                 use_stemmer: bool = M.MUSE_USE_STEMMER, **kwargs) -> None:
        super().__init__(**kwargs)
        if rouge_type not in F.ROUGE_TYPES or measure not in F.ROUGE_MEASURES:
            raise ValueError(f"rouge_type must be one of {F.ROUGE_TYPES} and measure one of {F.ROUGE_MEASURES},"
                             f" got {rouge_type!r}, {measure!r}")
        self.rouge = {"rouge_type": rouge_type, "measure": measure, "use_stemmer": bool(use_stemmer)}


class VerbMem(_MuseRouge):
    """MUSE VerbMem: mean ROUGE (default ROUGE-L F1, no stemmer) between the greedy continuation of each
    ``verbmem/forget`` prompt and its ground truth. In [0, 1]; MUSE reports ×100.

    Example:
        >>> from lit_unlearn.metrics.muse import VerbMem
        >>> metric = VerbMem()
        >>> metric.update(["the cat sat"], ["the cat sat on the mat"])
        >>> round(float(metric.compute()), 4)  # LCS 3: P = 1, R = 0.5, F1 = 2/3
        0.6667
    """

    def update(self, continuations: Sequence[str], ground_truths: Sequence[str], index: Tensor | None = None) -> None:
        """Add decoded continuations and their (token-truncated) ground truths."""
        values = M.verbmem_scores(continuations, ground_truths, **self.rouge)
        self._append(torch.tensor(values, dtype=torch.float32), index)


class KnowMem(_MuseRouge):
    """MUSE KnowMem: mean ROUGE (default ROUGE-L F1, no stemmer) between the greedy answer under the ICL
    few-shot prompt (``functional.muse.icl_prompt``), cut at MUSE's stop strings, and the true answer.
    On ``forget_qa``: knowledge memorization (lower = more forgotten); on ``retain_qa``: utility.

    Example:
        >>> from lit_unlearn.metrics.muse import KnowMem
        >>> metric = KnowMem()
        >>> metric.update(["Paris\\n\\nQuestion: What is ..."], ["Paris"])
        >>> float(metric.compute())
        1.0
    """

    def __init__(self, stops: Sequence[str] = M.KNOWMEM_STOP_STRINGS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stops = tuple(stops)

    def update(self, generations: Sequence[str], answers: Sequence[str], index: Tensor | None = None) -> None:
        """Add decoded answers (cut at the stop strings here) and the true answers."""
        values = M.knowmem_scores(generations, answers, self.stops, **self.rouge)
        self._append(torch.tensor(values, dtype=torch.float32), index)


class MUSEPrivLeak(PrivLeak):
    """MUSE PrivLeak with MUSE's attack by default (Min-K% Prob, k = 0.4): update with forget
    (``member=True``) and holdout (``member=False``) batches; ``compute()`` gives
    ``functional.metrics.privleak(AUC, retain_auc)`` in percent. ``score="min_k_plus_plus"`` uses Min-K%++.
    """

    def __init__(self, retain_auc: float, score: ScoreKind = M.PRIVLEAK_SCORE, k: float = M.PRIVLEAK_K,
                 **kwargs) -> None:
        super().__init__(retain_auc=retain_auc, score=score, k=k, **kwargs)

"""Generation metrics: ROUGE-L recall, ROUGE-1/ROUGE-L variants and extraction likelihood (on greedy generations)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_unlearn.functional import metrics as F
from lit_unlearn.metrics.base import PerSampleMetric


class RougeLRecall(PerSampleMetric):
    """Mean ROUGE-L recall of generated answers against the references (``rouge_score``, stemmer on).

    ``higher_is_better=True`` (a utility metric; on the forget set lower means more forgotten).

    Example:
        >>> from lit_unlearn.metrics import RougeLRecall
        >>> metric = RougeLRecall()
        >>> metric.update(["the cat sat"], ["the cat sat on the mat"])
        >>> float(metric.compute())
        0.5
    """

    higher_is_better = True
    is_differentiable = False

    def update(self, predictions: Sequence[str], references: Sequence[str], index: Tensor | None = None) -> None:
        """Add decoded generations and their reference answers."""
        self._append(torch.tensor(F.rouge_l_recall(predictions, references), dtype=torch.float32), index)


class Rouge(PerSampleMetric):
    """Mean ROUGE-1 / ROUGE-L recall, precision or F1 of generations against references
    (``functional.metrics.rouge_scores``). ``higher_is_better=True``.

    Args:
        rouge_type: ``"rouge1"`` or ``"rougeL"``.
        measure: ``"recall"``, ``"precision"`` or ``"f1"``.
        use_stemmer: Porter stemming in rouge_score's tokenizer (TOFU: on; MUSE's own code: off).

    Example:
        >>> from lit_unlearn.metrics import Rouge
        >>> metric = Rouge("rougeL", "f1")
        >>> metric.update(["the cat sat"], ["the cat sat on the mat"])
        >>> round(float(metric.compute()), 4)  # P = 1, R = 0.5
        0.6667
    """

    higher_is_better = True
    is_differentiable = False

    def __init__(self, rouge_type: str = "rougeL", measure: str = "recall", use_stemmer: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if rouge_type not in F.ROUGE_TYPES:
            raise ValueError(f"rouge_type must be one of {F.ROUGE_TYPES}, got {rouge_type!r}")
        if measure not in F.ROUGE_MEASURES:
            raise ValueError(f"measure must be one of {F.ROUGE_MEASURES}, got {measure!r}")
        self.rouge_type, self.measure, self.use_stemmer = rouge_type, measure, bool(use_stemmer)

    def update(self, predictions: Sequence[str], references: Sequence[str], index: Tensor | None = None) -> None:
        """Add decoded generations and their reference texts."""
        values = F.rouge_scores(predictions, references, self.rouge_type, self.measure, self.use_stemmer)
        self._append(torch.tensor(values, dtype=torch.float32), index)


class ExtractionLikelihood(PerSampleMetric):
    """EL_n: mean n-gram overlap between the greedy continuation of every answer prefix and the true
    rest of the answer (MRD paper §5.2, Jang et al., 2023). ``higher_is_better=False``.

    Feed it ``functional.generation.batch_prefix_continuations(model, batch)``.

    Example:
        >>> from lit_unlearn.metrics import ExtractionLikelihood
        >>> target = [5, 6, 7, 8]
        >>> continuations = [[5, 6, 7, 8], [6, 7, 9], [9, 9], [8]]  # from prefixes of length 0..3
        >>> metric = ExtractionLikelihood(n=2)
        >>> metric.update([continuations], [target])
        >>> float(metric.compute())  # (3/3 + 1/2) / 2
        0.75
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(self, n: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n

    def update(
        self,
        continuations: Sequence[Sequence[Sequence[int]]],
        targets: Sequence[Sequence[int]],
        index: Tensor | None = None,
    ) -> None:
        """Add samples: per sample the greedy continuations from each prefix length and the answer ids."""
        if len(continuations) != len(targets):
            raise ValueError(f"{len(continuations)} continuation lists but {len(targets)} targets")
        values = [F.extraction_likelihood(c, t, self.n) for c, t in zip(continuations, targets)]
        self._append(torch.tensor(values, dtype=torch.float32), index)

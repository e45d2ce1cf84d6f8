"""torchmetrics ``Metric`` classes over ``lit_unlearn.functional.metrics``.

Per-sample metrics accept an optional ``index`` (the batch's dataset row indices) in ``update`` and
expose ``value_by_index()`` so reports can keep per-sample values.
"""
from lit_unlearn.metrics.aggregate import ModelUtility
from lit_unlearn.metrics.base import PerSampleMetric
from lit_unlearn.metrics.generation import ExtractionLikelihood, Rouge, RougeLRecall
from lit_unlearn.metrics.likelihood import ForgetQuality, Perplexity, Probability, TruthRatio
from lit_unlearn.metrics.memorization import ExtractionStrength, MemorizationAccuracy, UnlearningAccuracy
from lit_unlearn.metrics.mia import (
    MIAAUC,
    GradNormMIAAUC,
    GradNormPrivLeak,
    MIAKSweep,
    PrivLeak,
    ReferenceMIAAUC,
    ReferencePrivLeak,
    ScoreMIAAUC,
    mia_scores,
)
from lit_unlearn.metrics.muse import KnowMem, MUSEPrivLeak, VerbMem

__all__ = [
    "ExtractionLikelihood",
    "ExtractionStrength",
    "ForgetQuality",
    "GradNormMIAAUC",
    "GradNormPrivLeak",
    "KnowMem",
    "MIAAUC",
    "MIAKSweep",
    "MUSEPrivLeak",
    "MemorizationAccuracy",
    "ModelUtility",
    "PerSampleMetric",
    "Perplexity",
    "PrivLeak",
    "Probability",
    "ReferenceMIAAUC",
    "ReferencePrivLeak",
    "Rouge",
    "RougeLRecall",
    "ScoreMIAAUC",
    "TruthRatio",
    "UnlearningAccuracy",
    "VerbMem",
    "mia_scores",
]

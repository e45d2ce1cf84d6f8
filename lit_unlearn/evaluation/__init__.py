"""TOFU-style evaluation: the metric suite, its Lightning wiring and the report.

* :class:`TOFUEvaluation` — evaluate a model (object or path) in plain Python: ``.run() -> report dict``.
* :class:`TOFUEvaluator` — the metric states; what ``CausalLMModule.validation_step`` feeds under Lightning.
* :class:`EvalConfig` — generation length, EL n, MIA k, retain report, report folder.
* :func:`load_report`, :func:`write_report`, :func:`compare_reports`, :func:`forget_quality_from_reports`.
"""
from lit_unlearn.evaluation.config import DEFAULT_EVAL_SPLITS, EvalConfig

__all__ = [
    "DEFAULT_EVAL_SPLITS",
    "EvalConfig",
    "EvalDataset",
    "EvalSplit",
    "TOFUEvaluation",
    "TOFUEvaluator",
    "compare_reports",
    "forget_quality_from_reports",
    "load_report",
    "write_report",
]

_LAZY = {
    "EvalDataset": "lit_unlearn.evaluation.data",
    "EvalSplit": "lit_unlearn.evaluation.data",
    "TOFUEvaluation": "lit_unlearn.evaluation.suite",
    "TOFUEvaluator": "lit_unlearn.evaluation.suite",
    "compare_reports": "lit_unlearn.evaluation.report",
    "forget_quality_from_reports": "lit_unlearn.evaluation.report",
    "load_report": "lit_unlearn.evaluation.report",
    "write_report": "lit_unlearn.evaluation.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_unlearn.evaluation' has no attribute {name!r}")

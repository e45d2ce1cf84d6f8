"""Evaluation: one benchmark-agnostic core and one module per benchmark.

* :mod:`lit_unlearn.evaluation.core` — sharded loading, the plain driver (:class:`BenchmarkEvaluation`), the
  :class:`Benchmark` contract and the registry (:func:`get_benchmark`: ``tofu``, ``muse``, ``wmdp``).
* :mod:`lit_unlearn.evaluation.lightning` — ``validate``/``test``/in-fit evaluation under Lightning.
* :mod:`lit_unlearn.evaluation.benchmarks` — ``tofu`` (:class:`TOFUBenchmark`), ``muse``
  (:class:`MUSEEvaluation`, :class:`MUSEDataModule`), ``wmdp`` (:class:`WMDPEvaluation`).
* :class:`TOFUEvaluation` — evaluate a model (object or path) on TOFU in plain Python: ``.run() -> report dict``.
* :class:`TOFUEvaluator` — the TOFU metric states; what ``CausalLMModule.validation_step`` feeds under Lightning.
* :class:`EvalConfig` — generation length, EL n, MIA k, retain report, report folder.
* :func:`load_report`, :func:`write_report`, :func:`compare_reports`, :func:`forget_quality_from_reports`.
"""
from lit_unlearn.evaluation.config import DEFAULT_EVAL_SPLITS, EvalConfig

__all__ = [
    "Benchmark",
    "BenchmarkEvaluation",
    "DEFAULT_EVAL_SPLITS",
    "EvalConfig",
    "EvalDataset",
    "EvalSplit",
    "EvaluationCallback",
    "MUSEBenchmark",
    "MUSEConfig",
    "MUSEDataModule",
    "MUSEEvaluation",
    "TOFUBenchmark",
    "TOFUEvaluation",
    "TOFUEvaluator",
    "WMDPBenchmark",
    "WMDPConfig",
    "WMDPEvaluation",
    "benchmark_names",
    "compare_reports",
    "forget_quality_from_reports",
    "get_benchmark",
    "load_report",
    "register_benchmark",
    "write_report",
]

_LAZY = {
    "Benchmark": "lit_unlearn.evaluation.core",
    "BenchmarkEvaluation": "lit_unlearn.evaluation.core",
    "benchmark_names": "lit_unlearn.evaluation.core",
    "get_benchmark": "lit_unlearn.evaluation.core",
    "register_benchmark": "lit_unlearn.evaluation.core",
    "EvaluationCallback": "lit_unlearn.evaluation.lightning",
    "EvalDataset": "lit_unlearn.evaluation.data",
    "EvalSplit": "lit_unlearn.evaluation.data",
    "MUSEBenchmark": "lit_unlearn.evaluation.benchmarks.muse",
    "MUSEConfig": "lit_unlearn.evaluation.benchmarks.muse",
    "MUSEDataModule": "lit_unlearn.evaluation.benchmarks.muse",
    "MUSEEvaluation": "lit_unlearn.evaluation.benchmarks.muse",
    "TOFUBenchmark": "lit_unlearn.evaluation.benchmarks.tofu",
    "TOFUEvaluation": "lit_unlearn.evaluation.suite",
    "TOFUEvaluator": "lit_unlearn.evaluation.suite",
    "WMDPBenchmark": "lit_unlearn.evaluation.benchmarks.wmdp",
    "WMDPConfig": "lit_unlearn.evaluation.benchmarks.wmdp",
    "WMDPEvaluation": "lit_unlearn.evaluation.benchmarks.wmdp",
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

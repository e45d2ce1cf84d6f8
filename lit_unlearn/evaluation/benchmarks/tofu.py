"""TOFU (Maini, Feng, Schwarzschild, Lipton, Kolter, 2024, *TOFU: A Task of Fictitious Unlearning for LLMs*)
as a :class:`~lit_unlearn.evaluation.core.Benchmark`.

Splits: forget, retain, real_authors, world_facts, holdout (``lit_unlearn.data.eval_splits``); metrics:
:class:`~lit_unlearn.evaluation.suite.TOFUEvaluator`; report: :mod:`lit_unlearn.evaluation.report`
(``format: lit_unlearn.tofu_report/1``: forget quality, model utility, privleak, summary).

Selection score (:meth:`TOFUBenchmark.selection_score`, logged as ``eval/selection_score``): the harmonic
mean of forget quality and model utility, ``2·FQ·MU / (FQ + MU)``; when forget quality is unavailable (no
retain report), the harmonic mean of ``1 − forget ROUGE-L recall`` and model utility (the unlearning
completeness ``lit-unlearn report`` falls back to); when model utility is unavailable too, nothing is logged.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lit_unlearn.evaluation.config import EvalConfig, resolve_split_map
from lit_unlearn.evaluation.core import Benchmark, harmonic_mean

__all__ = ["TOFUBenchmark", "tofu_selection_score"]


def tofu_selection_score(report: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """``(score, formula)`` of a TOFU report (see the module docstring); ``(None, None)`` without utility."""
    mu = report.get("model_utility", {}).get("value")
    if mu is None:
        return None, None
    fq = report.get("forget_quality", {}).get("value")
    if fq is not None:
        return harmonic_mean([fq, mu]), "hmean(forget_quality, model_utility)"
    rouge = report.get("splits", {}).get("forget", {}).get("metrics", {}).get("rouge_l_recall")
    if rouge is None:
        return None, None
    return harmonic_mean([max(0.0, 1.0 - rouge), mu]), "hmean(1 - forget rouge_l_recall, model_utility)"


class TOFUBenchmark(Benchmark):
    """The TOFU suite.

    Args:
        config: :class:`~lit_unlearn.evaluation.config.EvalConfig` (generation length, EL, MIA k, retain report).
        source: ``builtin:tofu-mini``, a folder or a hub name.
        splits: ``{key: split}``; ``None`` = the full suite.
        max_length: tokens per (question, answer variant).
        max_samples: the first rows of every split only (an int or ``{key: int}``).
        seed: the builtin generator's seed.
    """

    name = "tofu"

    def __init__(self, config: EvalConfig | dict | None = None, source: str = "builtin:tofu-mini",
                 splits: dict[str, str] | None = None, max_length: int = 128,
                 max_samples: int | dict[str, int] | None = None, seed: int = 0):
        super().__init__(EvalConfig.coerce(config))
        self.source, self.splits = source, resolve_split_map(splits)
        self.max_length, self.max_samples, self.seed = max_length, max_samples, seed

    def datasets(self, tokenizer) -> list[Any]:
        from lit_unlearn.data.tofu_eval import build_eval_datasets

        return build_eval_datasets(tokenizer, self.source, self.splits, self.max_length, self.max_samples, self.seed)

    def data_identity(self) -> dict[str, Any]:
        from lit_unlearn.data.sources import source_version

        return {"source": self.source, "data_version": source_version(self.source, self.seed)}

    def check(self, datasets: Sequence[Any], metadata: Mapping[str, Any] | None = None, strict: bool = False) -> None:
        from lit_unlearn.evaluation.report import check_retain_report

        forget = next((d for d in datasets if d.spec.key == "forget"), None)
        check_retain_report(self.config.retain_report, forget, metadata, strict=strict)

    def evaluator(self, keys: Sequence[str], tokenizer):
        from lit_unlearn.data.tofu_eval import EvalSplit
        from lit_unlearn.evaluation.suite import TOFUEvaluator

        return TOFUEvaluator(self.config, [EvalSplit(k, self.splits[k]) for k in keys], tokenizer)

    def finalize(self, results: Mapping[str, Any], metadata: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
        from lit_unlearn.evaluation.report import finalize_report

        return finalize_report(results, metadata, self.config.retain_report, strict=strict)

    def selection_score(self, report: Mapping[str, Any]) -> float | None:
        return tofu_selection_score(report)[0]

    def scalar_logs(self, report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
        from lit_unlearn.evaluation.lightning import scalar_logs

        out = scalar_logs(report, prefix)
        score = self.selection_score(report)
        if score is not None:
            out[f"{prefix}/selection_score"] = float(score)
        return out

    def write(self, report: Mapping[str, Any], out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Any]:
        from lit_unlearn.evaluation.report import write_report

        return write_report(report, out_dir, plots=plots)

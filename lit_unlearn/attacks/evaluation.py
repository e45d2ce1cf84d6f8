"""How the attacks re-evaluate a model: the TOFU suite (:class:`lit_unlearn.evaluation.TOFUEvaluation`) on the
benchmark's splits, optionally on a subset of the forget rows, and the numbers the robustness report keeps.

Other benchmarks of the registry (:data:`lit_unlearn.evaluation.core.BENCHMARKS`; ``eval.benchmark``) are
evaluated whole through :class:`~lit_unlearn.evaluation.core.BenchmarkEvaluation` with ``eval.benchmark_config``
(their own settings, e.g. :class:`~lit_unlearn.evaluation.benchmarks.muse.MUSEConfig`), and the attack keeps
:data:`BENCHMARK_METRICS`: for MUSE the forget metrics VerbMem and KnowMem on the forget QA, and KnowMem on
the retain QA as utility; for WMDP the forget tasks' accuracy (each task's too) and the utility tasks' (the
MMLU stand-in); for a plugin benchmark every number of its report's ``summary`` (``summary/<name>``).

A subset of rows is evaluated by writing the evaluated splits as ``<split>.json`` files into a temporary folder
(a local data source in the usual format) and pointing the evaluation at it; the row numbers in that folder are
positions in the subset (the report keeps the original row numbers next to them).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lit_unlearn.utils.hparams import coerce_settings

#: forget-split metrics kept in the robustness report (``forget/<name>``): what the attacks try to restore
FORGET_METRICS = ("rouge_l_recall", "memorization_accuracy", "probability", "truth_ratio", "extraction_strength")
#: short labels of the report tables
LABELS = {
    "rouge_l_recall": "ROUGE-L",
    "memorization_accuracy": "MA",
    "probability": "prob",
    "truth_ratio": "TR",
    "extraction_strength": "ES",
    "model_utility": "utility",
    "forget_quality": "FQ",
    "mia_min_k_auc": "MIA AUC (Min-K)",
}


#: ``AttackEvalConfig.metrics``: the whole suite, or the cheap forget probe
EVAL_METRICS = ("suite", "forget_ma_rouge")
#: report ``summary`` key -> attack metric name, per benchmark other than TOFU
BENCHMARK_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "muse": (("verbmem", "forget/verbmem"), ("knowmem_forget", "forget/knowmem"),
             ("knowmem_retain", "utility/knowmem_retain")),
    "wmdp": (("forget_acc", "forget/acc"), ("utility_acc", "utility/acc")),
}
#: the data each benchmark evaluates when ``eval.source`` is not given
DEFAULT_SOURCES = {"tofu": "builtin:tofu-mini", "muse": "builtin:muse-mini", "wmdp": "builtin:wmdp-mini"}


@dataclass
class AttackEvalConfig:
    """The evaluation every attack repeats.

    Args:
        source: the benchmark data (``builtin:tofu-mini``, a folder, a hub name).
        forget_split: the unlearned forget split (``forget10``); evaluated as ``<forget_split>_perturbed``
            with the matching ``holdout`` split for the MIA.
        utility: also evaluate retain, real-authors and world-facts (model utility); off = forget split only.
        mia: also evaluate the holdout split (the Min-K% MIA AUC).
        max_new_tokens: greedy generation length for ROUGE-L (shorter than the evaluation's 200: the attacks
            evaluate many times).
        max_samples: evaluate only the first rows of every split (quick runs).
        batch_size, max_length: as in :class:`~lit_unlearn.evaluation.TOFUEvaluation`.
        retain_report: the retain model's ``report.json`` for forget quality (full forget split only).
        seed: the builtin data's seed.
        progress: evaluation progress bars.
        metrics: ``suite`` (the whole TOFU suite on ``splits``) or ``forget_ma_rouge`` (forget MA and ROUGE-L
            only, :func:`lit_unlearn.attacks.probe.forget_probe`: a fraction of the suite's cost; ignores
            ``utility`` and ``mia``).
        benchmark: a benchmark of the registry (``tofu``, ``muse``, ``wmdp``, plugins); not ``tofu``: the
            benchmark's whole evaluation on ``source`` (``max_samples`` as its row/document limit).
        benchmark_config: that benchmark's own settings (``MUSEConfig``/``WMDPConfig`` fields).
    """

    source: str | None = None
    forget_split: str = "forget10"
    utility: bool = True
    mia: bool = True
    max_new_tokens: int = 64
    max_samples: int | None = None
    batch_size: int = 16
    max_length: int = 128
    retain_report: str | None = None
    seed: int = 0
    progress: bool = False
    splits: dict[str, str] = field(default_factory=dict)
    metrics: str = "suite"
    benchmark: str = "tofu"
    benchmark_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from lit_unlearn.evaluation.config import resolve_split_map
        from lit_unlearn.evaluation.core import benchmark_names

        if self.benchmark not in benchmark_names():
            raise ValueError(f"eval.benchmark must be one of {benchmark_names()}, got {self.benchmark!r}.")
        if self.benchmark != "tofu" and self.metrics != "suite":
            raise ValueError(f"eval.metrics={self.metrics!r} is a TOFU forget probe; use metrics='suite' with"
                             f" benchmark {self.benchmark!r}.")
        if self.source is None:
            self.source = DEFAULT_SOURCES.get(self.benchmark)
        self.benchmark_config = dict(self.benchmark_config or {})

        if self.metrics not in EVAL_METRICS:
            raise ValueError(f"eval.metrics must be one of {list(EVAL_METRICS)}, got {self.metrics!r}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"eval.max_samples must be >= 1 or None, got {self.max_samples}.")
        if not self.splits:
            full = resolve_split_map(None, self.forget_split)
            keep = {"forget"} | ({"retain", "real_authors", "world_facts"} if self.utility else set()) | (
                {"holdout"} if self.mia else set())
            self.splits = {k: v for k, v in full.items() if k in keep}

    @classmethod
    def coerce(cls, value: "AttackEvalConfig | dict[str, Any] | None") -> "AttackEvalConfig":
        return coerce_settings(cls, value, "eval",
                               "eval: unknown options {unknown}; choose from {known}.", mapping=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self, key: str) -> list[dict[str, Any]]:
        """The rows of evaluation split ``key`` (``max_samples`` applied); TOFU only."""
        from lit_unlearn.data.sources import load_rows

        if self.benchmark != "tofu":
            raise ValueError(f"eval: the evaluated rows of benchmark {self.benchmark!r} are not TOFU splits; the"
                             " relearning attack needs relearn.data_split (and relearn.data_source) for it.")

        rows = load_rows(self.source, self.splits[key], self.seed)
        return rows[: self.max_samples] if self.max_samples else rows


def evaluate(model: nn.Module, tokenizer, config: AttackEvalConfig, forget_rows: Sequence[int] | None = None,
             retain_report: bool = True) -> dict[str, Any]:
    """The TOFU report of ``model`` on ``config``'s splits; ``forget_rows``: evaluate only these rows (positions
    after ``max_samples``) of the forget split. ``retain_report``: pass ``config.retain_report`` (forget quality);
    it is not passed for a subset (its forget rows would not match)."""
    from lit_unlearn.evaluation import TOFUEvaluation

    kwargs = dict(batch_size=config.batch_size, max_length=config.max_length, max_new_tokens=config.max_new_tokens,
                  el_splits=[], plots=False, store_generations=False, progress=config.progress, seed=config.seed)
    if forget_rows is None:
        return TOFUEvaluation(model, tokenizer, source=config.source, splits=config.splits,
                              max_samples=config.max_samples,
                              retain_report=config.retain_report if retain_report else None, **kwargs).run()
    with tempfile.TemporaryDirectory(prefix="lit_unlearn_attack_eval_") as folder:
        for key, split in config.splits.items():
            rows = config.rows(key)
            if key == "forget":
                rows = [rows[i] for i in forget_rows]
            (Path(folder) / f"{split}.json").write_text(json.dumps(rows), encoding="utf-8")
        return TOFUEvaluation(model, tokenizer, source=folder, splits=config.splits, **kwargs).run()


def measure(model: nn.Module, tokenizer, config: AttackEvalConfig, forget_rows: Sequence[int] | None = None,
            retain_report: bool = True) -> dict[str, float | None]:
    """The attack's numbers for ``model``: :func:`attack_metrics` of :func:`evaluate` (``metrics="suite"``),
    or :func:`~lit_unlearn.attacks.probe.forget_probe` on the (``forget_rows`` of the) forget split
    (``metrics="forget_ma_rouge"``)."""
    if config.benchmark != "tofu":
        return benchmark_metrics(config.benchmark, evaluate_benchmark(model, tokenizer, config))
    if config.metrics == "forget_ma_rouge":
        from lit_unlearn.attacks.probe import forget_probe

        rows = config.rows("forget")
        if forget_rows is not None:
            rows = [rows[i] for i in forget_rows]
        return forget_probe(model, tokenizer, rows, config.max_new_tokens, config.batch_size, config.max_length,
                            where=f"split {config.splits['forget']!r}")
    return attack_metrics(evaluate(model, tokenizer, config, forget_rows=forget_rows, retain_report=retain_report))


def evaluate_benchmark(model: nn.Module, tokenizer, config: AttackEvalConfig) -> dict[str, Any]:
    """The report of benchmark ``config.benchmark`` (not TOFU) on ``model``: ``config.benchmark_config``, with
    ``source`` and ``max_samples`` (WMDP: ``limit``) filled in from ``config`` unless given there."""
    from lit_unlearn.evaluation.core import BenchmarkEvaluation

    settings = dict(config.benchmark_config)
    if config.source is not None:
        settings.setdefault("source", config.source)
    if config.max_samples is not None:
        settings.setdefault("limit" if config.benchmark == "wmdp" else "max_samples", config.max_samples)
    return BenchmarkEvaluation(config.benchmark, model, tokenizer, batch_size=config.batch_size,
                               progress=config.progress, plots=False, config=settings).run()


def benchmark_metrics(benchmark: str, report: dict[str, Any]) -> dict[str, float | None]:
    """The attack's numbers from a report of ``benchmark`` (:data:`BENCHMARK_METRICS`; WMDP adds each forget
    task's accuracy as ``forget/<task>/acc``; a plugin benchmark: ``summary/<key>`` for every number)."""
    summary = report.get("summary", {})
    if benchmark not in BENCHMARK_METRICS:
        return {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) or v is None}
    out = {name: summary.get(key) for key, name in BENCHMARK_METRICS[benchmark]}
    if benchmark == "wmdp":
        for task in report.get("forget_tasks", []) or []:
            out[f"forget/{task}/acc"] = summary.get(f"{task}/acc")
    return out


def attack_metrics(report: dict[str, Any]) -> dict[str, float | None]:
    """The numbers the robustness report keeps from a TOFU report: ``forget/<metric>`` for
    :data:`FORGET_METRICS`, ``model_utility``, ``forget_quality`` and ``mia_min_k_auc`` (None when unavailable)."""
    forget = report["splits"].get("forget", {}).get("metrics", {})
    out: dict[str, float | None] = {f"forget/{m}": forget.get(m) for m in FORGET_METRICS}
    out["model_utility"] = report.get("model_utility", {}).get("value")
    out["forget_quality"] = report.get("forget_quality", {}).get("value")
    out["mia_min_k_auc"] = report.get("mia", {}).get("min_k", {}).get("auc")
    return out


def label(name: str) -> str:
    """``forget/rouge_l_recall`` -> ``forget ROUGE-L``."""
    for prefix in ("forget/", "utility/"):
        if name.startswith(prefix):
            return prefix[:-1] + " " + LABELS.get(name[len(prefix):], name[len(prefix):])
    return LABELS.get(name, name)

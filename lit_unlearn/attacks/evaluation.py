"""How the attacks re-evaluate a model: the TOFU suite (:class:`lit_unlearn.evaluation.TOFUEvaluation`) on the
benchmark's splits, optionally on a subset of the forget rows, and the numbers the robustness report keeps.

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
    """

    source: str = "builtin:tofu-mini"
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

    def __post_init__(self) -> None:
        from lit_unlearn.evaluation.config import resolve_split_map

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
        """The rows of evaluation split ``key`` (``max_samples`` applied)."""
        from lit_unlearn.data.sources import load_rows

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
    if name.startswith("forget/"):
        return "forget " + LABELS.get(name[len("forget/"):], name[len("forget/"):])
    return LABELS.get(name, name)

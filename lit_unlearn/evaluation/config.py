"""Evaluation settings shared by :class:`~lit_unlearn.evaluation.suite.TOFUEvaluation`, the Lightning
``validate``/``test`` hooks of :class:`~lit_unlearn.objectives.lm.CausalLMModule` and the report callback.

Kept free of heavy imports: ``objectives/lm.py`` imports it for its constructor signature (CLI help).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lit_unlearn.data.eval_splits import DEFAULT_EVAL_SPLITS, EVAL_KEYS, resolve_split_map  # noqa: F401 (re-exported)

MIA_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
#: optional extra metrics (``EvalConfig.metric_variants``), each reported under its name beside the defaults:
#: name -> what it is. ROUGE variants use rouge_score with the stemmer, like ``rouge_l_recall``.
METRIC_VARIANTS: dict[str, str] = {
    "truth_ratio_prob_mean": "mean c/(c+w) = mean 1/(1+TR) (splits with a truth ratio)",
    "rouge1_recall": "ROUGE-1 recall of the greedy generation",
    "rouge1_f1": "ROUGE-1 F1 of the greedy generation",
    "rouge_l_f1": "ROUGE-L F1 of the greedy generation",
}


@dataclass
class EvalConfig:
    """How a model is evaluated (the data side, splits and subsets, lives on the datamodule).

    Args:
        max_new_tokens: greedy generation length for ROUGE-L (TOFU uses 200).
        generation: compute ROUGE-L recall from greedy generations (needed for model utility).
        el_n: n-gram size of extraction likelihood; answers with ``<= el_n`` tokens use ``n = N - 1``
            (``n = 1`` for a one-token answer) and are counted in the report (``el_reduced_n``).
        el_splits: splits on which extraction likelihood (one greedy continuation per answer prefix) is
            computed; ``None`` = every split but holdout, ``[]`` = none.
        el_batch_size: prefix prompts generated together for extraction likelihood.
        mia_k: fraction of lowest-scoring tokens for the Min-K% and Min-K%++ attacks.
        retain_report: ``report.json`` written by this evaluation on the retain model (never trained on the
            forget authors); needed for forget quality and privleak.
        report_dir: where ``report.json``/``report.md``/PNGs go; default ``trainer.default_root_dir/report``.
        write_report: write the files (rank 0 only).
        plots: write PNG plots next to the report.
        store_generations: keep the decoded greedy generations per sample in ``report.json``.
        metric_variants: extra metrics from :data:`METRIC_VARIANTS` (default none: the report is unchanged);
            the ROUGE ones need ``generation``.
        relative_to_retain: add ``relative_to_retain`` to the report: every split metric's
            (value − retain value) / |retain value| against the matching ``retain_report``.
        shared_prompt: score the answer variants of a question (answer, paraphrase, perturbed answers)
            from one forward pass of the question (a shared key/value cache,
            :mod:`lit_unlearn.functional.prompt_cache`): about half the forward work on TOFU, same values up
            to float rounding. ``False``: one full forward pass per (question, answer) sequence (bit-exact
            comparisons with code that scores full sequences).
    """

    max_new_tokens: int = 200
    generation: bool = True
    el_n: int = 10
    el_splits: list[str] | None = None
    el_batch_size: int = 64
    mia_k: float = 0.4
    retain_report: str | None = None
    report_dir: str | None = None
    write_report: bool = True
    plots: bool = True
    store_generations: bool = True
    metric_variants: list[str] | None = None
    relative_to_retain: bool = False
    shared_prompt: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.el_n < 1:
            raise ValueError(f"el_n must be >= 1, got {self.el_n}.")
        if self.el_batch_size < 1:
            raise ValueError(f"el_batch_size must be >= 1, got {self.el_batch_size}.")
        if not 0.0 < self.mia_k <= 1.0:
            raise ValueError(f"mia_k must be in (0, 1], got {self.mia_k}.")
        if self.el_splits is not None:
            unknown = sorted(set(self.el_splits) - set(EVAL_KEYS))
            if unknown:
                raise ValueError(f"el_splits: unknown split keys {unknown}; choose from {list(EVAL_KEYS)}.")
        if self.metric_variants is not None:
            unknown = sorted(set(self.metric_variants) - set(METRIC_VARIANTS))
            if unknown:
                raise ValueError(f"metric_variants: unknown names {unknown}; choose from {list(METRIC_VARIANTS)}.")
            rouge = [v for v in self.metric_variants if v.startswith("rouge")]
            if rouge and not self.generation:
                raise ValueError(f"metric_variants {rouge} need greedy generations: set generation=True.")

    def variant_enabled(self, name: str) -> bool:
        return bool(self.metric_variants) and name in self.metric_variants

    def el_enabled(self, key: str) -> bool:
        if self.el_splits is None:
            return key != "holdout"
        return key in self.el_splits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "EvalConfig | dict[str, Any] | None") -> "EvalConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"eval_config must be an EvalConfig, a dict or None, got {type(value).__name__}.")

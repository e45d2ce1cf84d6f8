"""``TOFUReport``: evaluate on the TOFU suite during ``validate``/``test`` and write the report.

Attach it to any Lightning run whose module owns a Hugging Face causal LM as ``self.model`` and whose
datamodule's ``val_dataloader``/``test_dataloader`` is the TOFU evaluation suite (``TOFUDataModule``,
``UnlearningDataModule``)::

    lit-unlearn validate --config configs/tofu_mini/npo.yaml --ckpt_path last.ckpt \\
        --trainer.callbacks+=lit_unlearn.callbacks.report.TOFUReport \\
        --trainer.callbacks.retain_report=outputs/tofu_mini/retain_eval/report/report.json

``CausalLMModule`` subclasses evaluate without it (their ``eval_config`` argument); when the callback is
attached it takes over and its settings are used.
"""
from __future__ import annotations

from lit_unlearn.evaluation.config import EvalConfig
from lit_unlearn.evaluation.lightning import EvaluationCallback


class TOFUReport(EvaluationCallback):
    """Args: see :class:`lit_unlearn.evaluation.config.EvalConfig` (same names and defaults).

    The evaluation itself (and the same hooks for any benchmark whose datamodule serves its datasets) is
    :class:`lit_unlearn.evaluation.lightning.EvaluationCallback`; during ``fit`` it also runs on every
    validation epoch when the datamodule evaluates during fit (``eval_during_fit``).
    """

    def __init__(
        self,
        max_new_tokens: int = 200,
        generation: bool = True,
        el_n: int = 10,
        el_splits: list[str] | None = None,
        el_batch_size: int = 64,
        mia_k: float = 0.4,
        retain_report: str | None = None,
        report_dir: str | None = None,
        write_report: bool = True,
        plots: bool = True,
        store_generations: bool = True,
    ):
        super().__init__(EvalConfig(max_new_tokens, generation, el_n, el_splits, el_batch_size, mia_k, retain_report,
                                    report_dir, write_report, plots, store_generations))

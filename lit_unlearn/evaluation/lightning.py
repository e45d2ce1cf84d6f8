"""Lightning wiring of the TOFU suite: ``validate``/``test`` with one DataLoader per evaluation split.

The datamodule (:meth:`TOFUDataModule.val_dataloader`) returns one loader of
:class:`~lit_unlearn.evaluation.data.EvalDataset` per split; under DDP Lightning gives each a
``DistributedSampler`` (``shuffle=False``), so every rank scores a shard. :class:`LightningEvalRunner`
feeds each batch to a :class:`~lit_unlearn.evaluation.suite.TOFUEvaluator`; at the end of the epoch the
torchmetrics states are synced (per-sample values gathered by index), every rank computes the same
report, the headline numbers are logged (``eval/...``) and rank 0 writes the report files.

``CausalLMModule`` drives the runner from its ``validation_step``/``test_step`` hooks; the
:class:`~lit_unlearn.callbacks.report.TOFUReport` callback drives it instead when attached (so it also
works for any LightningModule that owns ``self.model``).
"""
from __future__ import annotations

import os
import time
from typing import Any

from lit_unlearn.evaluation.config import EvalConfig
from lit_unlearn.evaluation.data import EvalDataset
from lit_unlearn.functional.tokens import nll_mean, token_logprobs


def _loaders(trainer, stage: str) -> list:
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def scalar_logs(report: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat ``{"eval/forget/probability": v, ..., "eval/forget_quality": v}`` of the report's scalars."""
    out = {}
    for key, split in report["splits"].items():
        for name, value in split["metrics"].items():
            out[f"{prefix}/{key}/{name}"] = float(value)
    for score, entry in report.get("mia", {}).items():
        out[f"{prefix}/mia/{score}_auc"] = float(entry["auc"])
        if entry.get("privleak") is not None:
            out[f"{prefix}/mia/{score}_privleak"] = float(entry["privleak"])
    for name in ("forget_quality", "model_utility"):
        if report[name]["value"] is not None:
            out[f"{prefix}/{name}"] = float(report[name]["value"])
    return out


class LightningEvalRunner:
    """Runs the TOFU evaluation inside a Lightning ``validate``/``test`` epoch (see module docstring)."""

    def __init__(self, config: EvalConfig | dict | None = None, strict: bool = False):
        self.config = EvalConfig.coerce(config)
        #: a retain report of other data is an error (also when the module has ``strict_evaluation``)
        self.strict = strict
        self.evaluator = None
        self.datasets: list[Any] = []
        self.last_report: dict[str, Any] | None = None
        self._start_time = 0.0

    def start(self, trainer, pl_module, stage: str) -> None:
        from lit_unlearn.evaluation.report import check_retain_report
        from lit_unlearn.evaluation.suite import TOFUEvaluator

        self.datasets = [getattr(loader, "dataset", None) for loader in _loaders(trainer, stage)]
        eval_sets = [d for d in self.datasets if isinstance(d, EvalDataset)]
        self.evaluator = None
        self._start_time = time.perf_counter()
        if not eval_sets or trainer.sanity_checking:  # the suite is slow: no sanity-check pass over it
            return
        keys = [d.spec.key for d in eval_sets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Evaluation loaders repeat a split key: {keys}.")
        forget = next((d for d in eval_sets if d.spec.key == "forget"), None)
        check_retain_report(self.config.retain_report, forget, self._data_identity(trainer, eval_sets),
                            strict=self._strict(pl_module))
        self.evaluator = TOFUEvaluator(self.config, [d.spec for d in eval_sets], eval_sets[0].tokenizer)
        self.evaluator.check_model(pl_module.model)

    def step(self, pl_module, batch: dict[str, Any], dataloader_idx: int = 0) -> None:
        dataset = self.datasets[dataloader_idx] if dataloader_idx < len(self.datasets) else None
        if isinstance(dataset, EvalDataset):
            if self.evaluator is not None:  # None during the sanity check
                self.evaluator.update(dataset.spec.key, batch, pl_module.model)
            return
        if isinstance(batch, dict) and {"input_ids", "labels"} <= set(batch):  # a plain QA/text loader
            logits = pl_module.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            logp, mask = token_logprobs(logits, batch["labels"])
            pl_module.log("val/nll", nll_mean(logp, mask), batch_size=batch["input_ids"].shape[0], sync_dist=True)
            return
        raise TypeError(
            "This validation loader yields neither TOFU evaluation batches nor {input_ids, labels} batches;"
            " use TOFUDataModule/UnlearningDataModule (their val_dataloader is the TOFU evaluation suite)."
        )

    def end(self, trainer, pl_module, stage: str) -> dict[str, Any] | None:
        from lit_unlearn.evaluation.report import finalize_report, write_report

        if self.evaluator is None:
            return None
        results = self.evaluator.compute()  # collective: every rank gets the synced values
        report = finalize_report(results, self.metadata(trainer, pl_module, stage), self.config.retain_report,
                                 strict=self._strict(pl_module))
        if report["forget_quality"].get("mismatch"):  # on the console too, not only inside report.json
            from lightning.pytorch.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(f"Forget quality is unavailable: {report['forget_quality']['reason']}. Pass --strict"
                           " to make this an error.")
        pl_module.log_dict(scalar_logs(report), sync_dist=False, rank_zero_only=False)
        if self.config.write_report and trainer.is_global_zero:
            write_report(report, self.report_dir(trainer), plots=self.config.plots)
        trainer.strategy.barrier("tofu_report")
        self.last_report = report
        self.evaluator = None
        return report

    def _strict(self, pl_module) -> bool:
        return bool(self.strict or getattr(pl_module, "strict_evaluation", False))

    @staticmethod
    def _data_identity(trainer, eval_sets: list) -> dict[str, Any]:
        """``{"source", "data_version"}`` of the evaluated data (compared with the retain report's)."""
        from lit_unlearn.data.sources import source_version

        source = eval_sets[0].source if eval_sets else None
        if source is None:
            return {}
        try:
            version = source_version(source, getattr(getattr(trainer, "datamodule", None), "seed", 0))
        except Exception:  # a hub source offline: only the name is compared
            version = None
        return {"source": source, "data_version": version}

    def report_dir(self, trainer) -> str:
        return self.config.report_dir or os.path.join(trainer.default_root_dir, "report")

    def metadata(self, trainer, pl_module, stage: str) -> dict[str, Any]:
        from lit_unlearn.data.sources import source_version
        from lit_unlearn.evaluation.suite import base_metadata

        eval_sets = [d for d in self.datasets if isinstance(d, EvalDataset)]
        loaders = _loaders(trainer, stage)
        batch_size = next((getattr(l, "batch_size", None) for l in loaders if getattr(l, "batch_size", None)), None)
        datamodule = getattr(trainer, "datamodule", None)
        source = eval_sets[0].source if eval_sets else None
        data_version = None
        if source is not None:
            try:
                data_version = source_version(source, getattr(datamodule, "seed", 0))
            except Exception:  # a hub source offline: keep going, the name is recorded
                data_version = f"hub:{source}"
        model = getattr(pl_module, "model", None)
        params = next(model.parameters(), None) if model is not None else None
        return {
            **base_metadata(),
            "stage": stage,
            "source": source,
            "data_version": data_version,
            "model": getattr(pl_module, "model_name_or_path", None) or type(pl_module).__name__,
            "module": type(pl_module).__name__,
            "ckpt_path": trainer.ckpt_path,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
            "weights_dtype": None if params is None else str(params.dtype).replace("torch.", ""),
            "device": str(pl_module.device),
            "batch_size": batch_size,
            "effective_batch_size": None if batch_size is None else batch_size * trainer.world_size,
            "max_length": eval_sets[0].max_length if eval_sets else None,
            "eval_config": self.config.to_dict(),
            "splits": {d.spec.key: d.spec.split for d in eval_sets},
            "runtime_s": round(time.perf_counter() - self._start_time, 3),
        }


def find_report_callback(trainer):
    """The attached :class:`~lit_unlearn.callbacks.report.TOFUReport`, if any."""
    from lit_unlearn.callbacks.report import TOFUReport

    for cb in getattr(trainer, "callbacks", []) or []:
        if isinstance(cb, TOFUReport):
            return cb
    return None


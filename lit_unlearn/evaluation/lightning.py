"""Lightning wiring of every benchmark: ``validate``/``test`` (and in-fit evaluation) with one DataLoader
per evaluation split.

The datamodule (:meth:`TOFUDataModule.val_dataloader`) returns one loader of
:class:`~lit_unlearn.evaluation.data.EvalDataset` per split; under DDP Lightning gives each a
``DistributedSampler`` (``shuffle=False``), so every rank scores a shard. :class:`LightningEvalRunner`
feeds each batch to a :class:`~lit_unlearn.evaluation.suite.TOFUEvaluator`; at the end of the epoch the
torchmetrics states are synced (per-sample values gathered by index), every rank computes the same
report, the headline numbers are logged (``eval/...``) and rank 0 writes the report files.

The benchmark is the one of the loaders' datasets: TOFU's ``EvalDataset`` (``TOFUDataModule``,
``UnlearningDataModule``, ``TextDataModule``) or a dataset with a ``benchmark`` attribute (a
:class:`~lit_unlearn.evaluation.core.Benchmark`, e.g. from ``MUSEDataModule``); the same runner
shards, syncs, logs ``eval/...`` (with ``eval/selection_score``) and writes the benchmark's report.

During ``fit`` (the datamodule's ``eval_during_fit``, with ``check_val_every_n_epoch`` /
``val_check_interval``) each evaluation writes its report to ``<report_dir>/epoch{E:03d}-step{S:06d}/``
(never overwriting: a ``-1``, ``-2`` ... suffix if that folder exists); ``validate``/``test`` write to
``<report_dir>`` itself.

``CausalLMModule`` drives the runner from its ``validation_step``/``test_step`` hooks; a callback derived
from :class:`EvaluationCallback` (:class:`~lit_unlearn.callbacks.report.TOFUReport`) drives it instead
when attached (so it also works for any LightningModule that owns ``self.model``). This module does not
import ``lit_unlearn.callbacks`` (the callbacks import it).
"""
from __future__ import annotations

import os
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from lit_unlearn.data.tofu_eval import EvalDataset
from lit_unlearn.evaluation.config import EvalConfig
from lit_unlearn.evaluation.core import Benchmark
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
    """Flat ``{"eval/forget/probability": v, ..., "eval/forget_quality": v}`` of a TOFU report's scalars
    (the selection score is added by :meth:`TOFUBenchmark.scalar_logs
    <lit_unlearn.evaluation.benchmarks.tofu.TOFUBenchmark.scalar_logs>`)."""
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


def _fitting(trainer) -> bool:
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return fn is not None and getattr(fn, "value", fn) == "fit"


def _benchmark_of(dataset: Any) -> Benchmark | None:
    bench = getattr(dataset, "benchmark", None)
    return bench if isinstance(bench, Benchmark) else None


class LightningEvalRunner:
    """Runs a benchmark's evaluation inside a Lightning ``validate``/``test`` epoch, or a validation epoch of
    ``fit`` (see module docstring)."""

    def __init__(self, config: EvalConfig | dict | None = None, strict: bool = False):
        self.config = EvalConfig.coerce(config)
        #: a retain report of other data is an error (also when the module has ``strict_evaluation``)
        self.strict = strict
        self.evaluator = None
        self.benchmark: Benchmark | None = None  # None: the TOFU suite
        self.datasets: list[Any] = []
        self.last_report: dict[str, Any] | None = None
        #: ``[(report folder, report)]`` of every evaluation during fit, oldest first (reports are also on disk)
        self.history: list[tuple[str | None, dict[str, Any]]] = []
        self._start_time = 0.0
        self._active = False

    def start(self, trainer, pl_module, stage: str) -> None:
        from lit_unlearn.evaluation.report import check_retain_report
        from lit_unlearn.evaluation.suite import TOFUEvaluator

        self.datasets = [getattr(loader, "dataset", None) for loader in _loaders(trainer, stage)]
        eval_sets = [d for d in self.datasets if isinstance(d, EvalDataset)]
        bench_sets = [d for d in self.datasets if _benchmark_of(d) is not None]
        self.evaluator, self.benchmark, self._active = None, None, False
        self._start_time = time.perf_counter()
        if trainer.sanity_checking:  # the suite is slow: no sanity-check pass over it
            return
        if eval_sets and bench_sets:
            raise ValueError("The evaluation loaders mix TOFU's suite with another benchmark's datasets"
                             f" ({_benchmark_of(bench_sets[0]).name}); evaluate one benchmark per run.")
        if bench_sets:
            self._start_benchmark(trainer, pl_module, bench_sets)
            return
        if not eval_sets:
            return
        keys = [d.spec.key for d in eval_sets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Evaluation loaders repeat a split key: {keys}.")
        forget = next((d for d in eval_sets if d.spec.key == "forget"), None)
        check_retain_report(self.config.retain_report, forget, self._data_identity(trainer, eval_sets),
                            strict=self._strict(pl_module))
        self.evaluator = TOFUEvaluator(self.config, [d.spec for d in eval_sets], eval_sets[0].tokenizer)
        self.evaluator.check_model(pl_module.model)
        self._active = True

    def _start_benchmark(self, trainer, pl_module, bench_sets: list[Any]) -> None:
        names = {_benchmark_of(d).name for d in bench_sets}
        if len(names) != 1:
            raise ValueError(f"The evaluation loaders hold datasets of several benchmarks {sorted(names)}; evaluate"
                             " one benchmark per run.")
        keys = [d.key for d in bench_sets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Evaluation loaders repeat a split key: {keys}.")
        bench = _benchmark_of(bench_sets[0])
        # eval_config.retain_report of the module applies to every benchmark that has none of its own
        if getattr(bench.config, "retain_report", "absent") is None and self.config.retain_report is not None:
            bench.config.retain_report = self.config.retain_report
        bench.check(bench_sets, bench.data_identity(), strict=self._strict(pl_module))
        self.benchmark = bench
        if bench.sharded:
            self.evaluator = bench.evaluator(keys, getattr(bench_sets[0], "tokenizer", None))
            self.evaluator.check_model(pl_module.model)
        self._active = True

    def step(self, pl_module, batch: dict[str, Any], dataloader_idx: int = 0) -> None:
        dataset = self.datasets[dataloader_idx] if dataloader_idx < len(self.datasets) else None
        if isinstance(dataset, EvalDataset):
            if self.evaluator is not None:  # None during the sanity check
                self.evaluator.update(dataset.spec.key, batch, pl_module.model)
            return
        if _benchmark_of(dataset) is not None:
            if self.evaluator is not None and self.benchmark is not None and self.benchmark.sharded:
                self.evaluator.update(dataset.key, batch, pl_module.model)
            return
        if isinstance(batch, dict) and {"input_ids", "labels"} <= set(batch):  # a plain QA/text loader
            logits = pl_module.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            logp, mask = token_logprobs(logits, batch["labels"])
            pl_module.log("val/nll", nll_mean(logp, mask), batch_size=batch["input_ids"].shape[0], sync_dist=True)
            return
        raise TypeError(
            "This validation loader yields neither evaluation batches of a benchmark nor {input_ids, labels}"
            " batches; use TOFUDataModule/UnlearningDataModule (their val_dataloader is the TOFU evaluation suite)"
            " or a benchmark's datamodule (e.g. lit_unlearn.evaluation.benchmarks.muse.MUSEDataModule)."
        )

    def end(self, trainer, pl_module, stage: str) -> dict[str, Any] | None:
        if not self._active:
            return None
        self._active = False
        if self.benchmark is not None:
            return self._end_benchmark(trainer, pl_module, stage)
        from lit_unlearn.evaluation.benchmarks.tofu import tofu_selection_score
        from lit_unlearn.evaluation.report import finalize_report, write_report

        results = self.evaluator.compute()  # collective: every rank gets the synced values
        report = finalize_report(results, self.metadata(trainer, pl_module, stage), self.config.retain_report,
                                 strict=self._strict(pl_module))
        if report["forget_quality"].get("mismatch"):  # on the console too, not only inside report.json
            from lightning.pytorch.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(f"Forget quality is unavailable: {report['forget_quality']['reason']}. Pass --strict"
                           " to make this an error.")
        logs = scalar_logs(report)
        score = tofu_selection_score(report)[0]
        if score is not None:
            logs["eval/selection_score"] = float(score)
        pl_module.log_dict(logs, sync_dist=False, rank_zero_only=False)
        out_dir = self._shared_report_dir(trainer)
        if out_dir is not None and trainer.is_global_zero:
            write_report(report, out_dir, plots=self.config.plots)
        trainer.strategy.barrier("tofu_report")
        return self._done(trainer, report, out_dir)

    def _end_benchmark(self, trainer, pl_module, stage: str) -> dict[str, Any]:
        bench = self.benchmark
        if bench.sharded:
            results = self.evaluator.compute()  # collective
        else:  # e.g. lm-evaluation-harness, called on every rank (it shards the documents itself)
            results = bench.evaluate_model(pl_module.model, self._tokenizer(trainer, pl_module))
        report = bench.finalize(results, self.metadata(trainer, pl_module, stage), strict=self._strict(pl_module))
        pl_module.log_dict(bench.scalar_logs(report), sync_dist=False, rank_zero_only=False)
        out_dir = self._shared_report_dir(trainer)
        if out_dir is not None and trainer.is_global_zero:
            bench.write(report, out_dir, plots=self.config.plots)
        trainer.strategy.barrier(f"{bench.name}_report")
        return self._done(trainer, report, out_dir)

    def _done(self, trainer, report: dict[str, Any], out_dir: str | None) -> dict[str, Any]:
        self.last_report = report
        if _fitting(trainer):
            self.history.append((out_dir, report))
        self.evaluator = None
        return report

    @staticmethod
    def _tokenizer(trainer, pl_module):
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None and hasattr(pl_module, "load_tokenizer"):
            tokenizer = pl_module.load_tokenizer()
        return tokenizer

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

    def _shared_report_dir(self, trainer) -> str | None:
        """The report folder, chosen on rank 0 and broadcast, or ``None`` when reports are not written.

        :meth:`report_dir` looks at the file system for a free name; on several processes a rank that looked
        after rank 0 had written its folder would pick the next suffix, so every rank takes rank 0's choice.
        (Collective: every rank calls it.)"""
        if not self.config.write_report:
            return None
        return trainer.strategy.broadcast(self.report_dir(trainer) if trainer.is_global_zero else None, src=0)

    def report_dir(self, trainer) -> str:
        """``eval_config.report_dir`` (default ``default_root_dir/report``); during ``fit`` a new sub-folder
        ``epoch{E:03d}-step{S:06d}`` per evaluation (suffixed ``-1``, ``-2`` ... rather than overwritten)."""
        base = self.config.report_dir or os.path.join(trainer.default_root_dir, "report")
        if not _fitting(trainer):
            return base
        name = f"epoch{trainer.current_epoch:03d}-step{trainer.global_step:06d}"
        path, n = os.path.join(base, name), 0
        while os.path.exists(path):
            n += 1
            path = os.path.join(base, f"{name}-{n}")
        return path

    def metadata(self, trainer, pl_module, stage: str) -> dict[str, Any]:
        from lit_unlearn.data.sources import source_version
        from lit_unlearn.evaluation.core import base_metadata

        loaders = _loaders(trainer, stage)
        batch_size = next((getattr(l, "batch_size", None) for l in loaders if getattr(l, "batch_size", None)), None)
        model = getattr(pl_module, "model", None)
        params = next(model.parameters(), None) if model is not None else None
        run = {
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
        }
        if _fitting(trainer):
            run["epoch"] = trainer.current_epoch
        if self.benchmark is not None:
            bench_sets = [d for d in self.datasets if _benchmark_of(d) is not None]
            return {
                **base_metadata(), "benchmark": self.benchmark.name, "stage": stage, **self.benchmark.data_identity(),
                **run, "eval_config": self.benchmark.config_dict(),
                "splits": {d.key: getattr(d, "split", d.key) for d in bench_sets},
                "runtime_s": round(time.perf_counter() - self._start_time, 3),
            }
        eval_sets = [d for d in self.datasets if isinstance(d, EvalDataset)]
        datamodule = getattr(trainer, "datamodule", None)
        source = eval_sets[0].source if eval_sets else None
        data_version = None
        if source is not None:
            try:
                data_version = source_version(source, getattr(datamodule, "seed", 0))
            except Exception:  # a hub source offline: keep going, the name is recorded
                data_version = f"hub:{source}"
        return {
            **base_metadata(),
            "stage": stage,
            "source": source,
            "data_version": data_version,
            **run,
            "max_length": eval_sets[0].max_length if eval_sets else None,
            "eval_config": self.config.to_dict(),
            "splits": {d.spec.key: d.spec.split for d in eval_sets},
            "runtime_s": round(time.perf_counter() - self._start_time, 3),
        }


class EvaluationCallback(Callback):
    """Base of the callbacks that drive a :class:`LightningEvalRunner` themselves (``CausalLMModule`` then
    leaves the evaluation to them): ``validate``, ``test`` and validation epochs of ``fit``.

    Args:
        config: the :class:`~lit_unlearn.evaluation.config.EvalConfig` (report folder, plots, TOFU settings).
    """

    def __init__(self, config: EvalConfig | dict | None = None):
        self.config = EvalConfig.coerce(config)
        self.runner = LightningEvalRunner(self.config)

    @property
    def last_report(self) -> dict[str, Any] | None:
        return self.runner.last_report

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.runner.start(trainer, pl_module, "validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.runner.step(pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.runner.end(trainer, pl_module, "validate")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.runner.start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.runner.step(pl_module, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.runner.end(trainer, pl_module, "test")


def find_report_callback(trainer):
    """The attached :class:`EvaluationCallback` (e.g. ``TOFUReport``), if any."""
    for cb in getattr(trainer, "callbacks", []) or []:
        if isinstance(cb, EvaluationCallback):
            return cb
    return None

"""WMDP (Li, Pan, Gopal, et al., 2024, *The WMDP Benchmark: Measuring and Reducing Malicious Use With
Unlearning*) as a :class:`~lit_unlearn.evaluation.core.Benchmark`: multiple-choice accuracy through
EleutherAI's lm-evaluation-harness (:func:`lit_unlearn.evaluation.lm_eval_adapter.evaluate_tasks`).

* ``forget_tasks`` (default ``wmdp_bio``, ``wmdp_cyber``): hazardous-knowledge accuracy, lower = more
  forgotten (chance is 0.25 with four choices);
* ``utility_tasks`` (default ``mmlu``): general knowledge, higher = more utility kept;
* any lm-eval task name, or tasks of a local folder in lm-eval's YAML format (``include_path``).

Report (``format: lit_unlearn.wmdp_report/1``): ``lm_eval`` = ``{task: {"acc", "acc_norm" (when the task
has it), "acc_stderr", "n"}}`` as lm-eval computes them, ``forget_acc`` / ``utility_acc`` (the mean
``acc`` over the forget / utility tasks), ``selection`` and ``summary``.

Selection score (``eval/selection_score``): ``hmean(1 − forget_acc, utility_acc)``.

Distribution: every rank calls lm-eval (the adapter shards the documents over the ranks of an initialised
``torch.distributed`` group and gathers the per-document scores), so every rank gets the same results; the
model's parameters must be whole on each rank (DDP, ZeRO-1/2).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_unlearn.data.text import TextDataModule
from lit_unlearn.evaluation.core import Benchmark, BenchmarkEvaluation, format_cell, harmonic_mean
from lit_unlearn.utils.hparams import coerce_settings

__all__ = ["WMDPBenchmark", "WMDPConfig", "WMDPEvaluation", "finalize_wmdp_report"]

REPORT_FORMAT = "lit_unlearn.wmdp_report/1"


@dataclass
class WMDPConfig:
    """WMDP/lm-eval settings.

    Args:
        forget_tasks: tasks whose accuracy should drop (WMDP's ``wmdp_bio``, ``wmdp_cyber``).
        utility_tasks: tasks whose accuracy should stay (``mmlu``); ``[]`` for none.
        include_path: a folder of lm-eval task YAML files (e.g. written by ``builtin:wmdp-mini``).
        batch_size: lm-eval requests per forward pass.
        limit: the first documents of each task only (quick checks).
        num_fewshot: few-shot examples (``None``: the task's own setting; WMDP is zero-shot).
        source: ``builtin:wmdp-mini`` evaluates the builtin tasks (``lit_unlearn.data.builtin_wmdp``: the
            task folder is written on first use and used as ``include_path``; the default tasks become
            ``wmdp_mini_bio``, ``wmdp_mini_cyber`` / ``mmlu_mini``); otherwise a label of the evaluated data
            recorded in the report (default: the include path or "lm-eval").
    """

    forget_tasks: list[str] = field(default_factory=lambda: ["wmdp_bio", "wmdp_cyber"])
    utility_tasks: list[str] = field(default_factory=lambda: ["mmlu"])
    include_path: str | None = None
    batch_size: int = 8
    limit: int | None = None
    num_fewshot: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.forget_tasks, self.utility_tasks = list(self.forget_tasks), list(self.utility_tasks)
        if self.builtin:
            from lit_unlearn.data.builtin_wmdp import NAMES, TASKS

            name = self.source[len("builtin:"):]
            if name not in NAMES:
                raise ValueError(f"WMDPConfig.source {self.source!r}: the builtin WMDP sets are"
                                 f" {['builtin:' + n for n in NAMES]}.")
            if self.forget_tasks == ["wmdp_bio", "wmdp_cyber"]:
                self.forget_tasks = [t for t in TASKS if t.startswith("wmdp")]
            if self.utility_tasks == ["mmlu"]:
                self.utility_tasks = [t for t in TASKS if not t.startswith("wmdp")]
        if not self.forget_tasks and not self.utility_tasks:
            raise ValueError("WMDPConfig needs at least one task (forget_tasks or utility_tasks).")
        both = sorted(set(self.forget_tasks) & set(self.utility_tasks))
        if both:
            raise ValueError(f"WMDPConfig: tasks {both} are both forget and utility tasks; list each once.")
        if self.batch_size < 1:
            raise ValueError(f"WMDPConfig.batch_size must be >= 1, got {self.batch_size}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"WMDPConfig.limit must be >= 1, got {self.limit}.")

    @property
    def tasks(self) -> list[str]:
        return self.forget_tasks + self.utility_tasks

    @property
    def builtin(self) -> bool:
        return bool(self.source) and self.source.startswith("builtin:")

    def resolved_include_path(self) -> str | None:
        """``include_path``, or for a builtin source the task folder (written once into the cache)."""
        if self.include_path is not None or not self.builtin:
            return self.include_path
        from lit_unlearn.data.builtin_wmdp import wmdp_mini_tasks

        return str(wmdp_mini_tasks(name=self.source[len("builtin:"):])[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "WMDPConfig | Mapping[str, Any] | None") -> "WMDPConfig":
        return coerce_settings(cls, value, "WMDP eval config",
                               "Unknown WMDP evaluation settings {unknown}; known: {known}.")


class _Trigger(Dataset):
    """One placeholder sample: under Lightning it makes the validation epoch run; lm-eval loads its own data."""

    key = "lm_eval"
    split = "lm_eval"

    def __init__(self, benchmark: "WMDPBenchmark", tokenizer):
        self.benchmark, self.tokenizer = benchmark, tokenizer

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i}

    @staticmethod
    def collate_fn(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"index": torch.tensor([r["index"] for r in rows])}


def _mean_acc(results: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> float | None:
    values = [results[t]["acc"] for t in tasks if t in results and results[t].get("acc") is not None]
    return sum(values) / len(values) if values else None


def wmdp_selection_score(report: Mapping[str, Any]) -> float | None:
    """``hmean(1 − forget_acc, utility_acc)``; ``1 − forget_acc`` alone without utility tasks; None without
    forget tasks."""
    forget, utility = report.get("forget_acc"), report.get("utility_acc")
    if forget is None:
        return None
    return harmonic_mean([1.0 - forget, utility]) if utility is not None else 1.0 - forget


def finalize_wmdp_report(results: Mapping[str, Any], metadata: Mapping[str, Any], config: WMDPConfig) -> dict[str, Any]:
    """lm-eval results ``{task: {...}}`` + metadata -> the WMDP report."""
    lm_eval = {task: dict(values) for task, values in results["lm_eval"].items()}
    report: dict[str, Any] = {"format": REPORT_FORMAT, "metadata": dict(metadata), "splits": {}, "lm_eval": lm_eval,
                              "forget_tasks": list(config.forget_tasks), "utility_tasks": list(config.utility_tasks),
                              "forget_acc": _mean_acc(lm_eval, config.forget_tasks),
                              "utility_acc": _mean_acc(lm_eval, config.utility_tasks)}
    report["selection"] = {"value": wmdp_selection_score(report), "formula": "hmean(1 - forget_acc, utility_acc)"}
    report["summary"] = {"forget_acc": report["forget_acc"], "utility_acc": report["utility_acc"],
                         **{f"{t}/acc": lm_eval[t].get("acc") for t in config.tasks if t in lm_eval},
                         "selection_score": report["selection"]["value"]}
    return report


def render_wmdp_markdown(report: Mapping[str, Any]) -> str:
    meta = report.get("metadata", {})
    lines = [f"# WMDP / lm-eval report: `{meta.get('model', '?')}`", "",
             f"- **Forget accuracy** (mean over {', '.join(report['forget_tasks']) or 'none'}):"
             f" {format_cell(report['forget_acc'])}",
             f"- **Utility accuracy** (mean over {', '.join(report['utility_tasks']) or 'none'}):"
             f" {format_cell(report['utility_acc'])}",
             f"- **Selection score** ({report['selection']['formula']}):"
             f" {format_cell(report['selection']['value'])}", "",
             "| task | role | acc | acc_norm | n |", "|---|---|---:|---:|---:|"]
    for task, values in report["lm_eval"].items():
        role = "forget" if task in report["forget_tasks"] else "utility" if task in report["utility_tasks"] else "subtask"
        lines.append(f"| {task} | {role} | {format_cell(values.get('acc'))} | {format_cell(values.get('acc_norm'))} |"
                     f" {format_cell(values.get('n'))} |")
    lines += ["", "## Metadata", ""]
    for key in ("source", "model", "ckpt_path", "global_step", "world_size", "strategy", "lit_unlearn_version",
                "timestamp"):
        if key in meta:
            lines.append(f"- {key}: `{meta[key]}`")
    return "\n".join(lines) + "\n"


class WMDPBenchmark(Benchmark):
    """WMDP (and any lm-eval task) through lm-evaluation-harness; ``config``: :class:`WMDPConfig` or a dict."""

    name = "wmdp"
    sharded = False

    def __init__(self, config: WMDPConfig | Mapping[str, Any] | None = None):
        super().__init__(WMDPConfig.coerce(config))

    def datasets(self, tokenizer) -> list[Any]:
        return [_Trigger(self, tokenizer)]

    def data_identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.config.source or self.config.include_path or "lm-eval"}
        if self.config.builtin:
            from lit_unlearn.data.builtin_wmdp import generate

            out["data_version"] = generate(self.config.source[len("builtin:"):]).version
        return out

    def check(self, datasets: Sequence[Any], metadata: Mapping[str, Any] | None = None, strict: bool = False) -> None:
        """Unknown task names and a missing lm-eval are errors now (``check_tasks``), before any model work."""
        from lit_unlearn.evaluation.lm_eval_adapter import check_tasks

        check_tasks(self.config.tasks, self.config.resolved_include_path())

    def evaluate_model(self, model, tokenizer) -> dict[str, Any]:
        """Called on every rank (lm-eval's documents are sharded over an initialised process group)."""
        from lit_unlearn.evaluation.lm_eval_adapter import evaluate_tasks

        cfg = self.config
        return {"lm_eval": evaluate_tasks(model, tokenizer, cfg.tasks, include_path=cfg.resolved_include_path(),
                                          batch_size=cfg.batch_size, limit=cfg.limit, num_fewshot=cfg.num_fewshot)}

    def finalize(self, results: Mapping[str, Any], metadata: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
        return finalize_wmdp_report(results, metadata, self.config)

    def selection_score(self, report: Mapping[str, Any]) -> float | None:
        return wmdp_selection_score(report)

    def scalar_logs(self, report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
        out = {f"{prefix}/lm_eval/{task}/{name}": float(v) for task, values in report["lm_eval"].items()
               for name, v in values.items() if name in ("acc", "acc_norm") and v is not None}
        for name in ("forget_acc", "utility_acc"):
            if report.get(name) is not None:
                out[f"{prefix}/{name}"] = float(report[name])
        if report["selection"]["value"] is not None:
            out[f"{prefix}/selection_score"] = float(report["selection"]["value"])
        return out

    def write(self, report: Mapping[str, Any], out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Any]:
        from lit_unlearn.evaluation.report import write_report

        return write_report(report, out_dir, plots=False, render=render_wmdp_markdown)  # no metrics.png: its panels are TOFU's


class WMDPEvaluation(BenchmarkEvaluation):
    """Evaluate one model (object or path) on WMDP/lm-eval tasks in plain Python.

    Args:
        model_or_path, tokenizer: the model and its tokenizer (objects or paths).
        source, forget_tasks, utility_tasks, include_path, limit, num_fewshot: see :class:`WMDPConfig`
            (``source="builtin:wmdp-mini"``: the builtin tasks, no download).
        lm_eval_batch_size: lm-eval requests per forward pass.
        out_dir: rank 0 writes ``report.json``/``report.md`` there.

    Example::

        report = WMDPEvaluation("outputs/rmu/model", forget_tasks=["wmdp_bio"], utility_tasks=["mmlu"]).run()
        report["lm_eval"]["wmdp_bio"]["acc"]
    """

    def __init__(self, model_or_path, tokenizer=None, source: str | None = None, forget_tasks: list[str] | None = None,
                 utility_tasks: list[str] | None = None, include_path: str | None = None, limit: int | None = None,
                 num_fewshot: int | None = None, lm_eval_batch_size: int = 8, out_dir=None, device=None,
                 dtype: str | None = None, config: WMDPConfig | Mapping[str, Any] | None = None):
        cfg = WMDPConfig.coerce(config).to_dict()
        for name, value in (("source", source), ("forget_tasks", forget_tasks), ("utility_tasks", utility_tasks),
                            ("include_path", include_path), ("limit", limit), ("num_fewshot", num_fewshot)):
            if value is not None:
                cfg[name] = str(value) if name == "include_path" else value
        cfg["batch_size"] = lm_eval_batch_size
        super().__init__(WMDPBenchmark(cfg), model_or_path, tokenizer, 1, out_dir, device, dtype, progress=False,
                         plots=False)


# ----------------------------------------------------------------------------- Lightning data


class WMDPDataModule(TextDataModule):
    """Unlearn plain-text corpora (WMDP's bio/cyber forget corpora, a wikitext-style retain corpus) and
    evaluate on lm-eval tasks in ``validate``/``test`` (and during ``fit`` with ``eval_during_fit``).

    Args:
        forget_files, retain_files: as ``TextDataModule`` (globs of ``.txt``/``.jsonl``); ``forget_files`` may be
            left out for ``validate``/``test`` only.
        eval_config: :class:`WMDPConfig` fields, e.g. ``{"forget_tasks": ["wmdp_bio"], "utility_tasks": ["mmlu"],
            "include_path": ..., "limit": 100}``.
        eval_during_fit: also evaluate in the validation epochs of ``fit``.
        other arguments: as ``TextDataModule``.

    The validation loader is one placeholder sample per rank (it makes Lightning run the validation epoch);
    lm-eval reads its own task data.
    """

    def __init__(
        self,
        forget_files: str | None = None,
        retain_files: str | None = None,
        tokenizer: str = "builtin:tofu-mini",
        max_length: int = 128,
        batch_size: int = 8,
        retain_batch_size: int | None = None,
        num_workers: int = 0,
        pad_token: str | None = None,
        seed: int = 0,
        eval_config: dict[str, Any] | None = None,
        eval_during_fit: bool = False,
    ):
        super().__init__(forget_files or "", retain_files, tokenizer=tokenizer, retain_split=None,
                         max_length=max_length, batch_size=batch_size, retain_batch_size=retain_batch_size,
                         num_workers=num_workers, pad_token=pad_token, seed=seed)
        self.forget_files = forget_files
        self.benchmark = WMDPBenchmark(eval_config)  # validates the settings now
        self.eval_during_fit = eval_during_fit

    def setup(self, stage: str | None = None) -> None:
        if self.forget_files is None:
            if stage == "fit":
                from lit_unlearn.data.tokenize import DataValidationError

                raise DataValidationError("WMDPDataModule: fit needs forget_files (the forget corpus, .txt or .jsonl"
                                          " with a 'text' field); validate/test run without it.")
            return
        super().setup(stage)

    @property
    def data_version(self) -> str:
        return f"text:{self.forget_files}|{self.retain_files}|lm-eval:{','.join(self.benchmark.config.tasks)}"

    def eval_datasets(self) -> list:
        if self._eval_datasets is None:
            self._eval_datasets = self.benchmark.datasets(self.load_tokenizer())
        return self._eval_datasets

    def eval_dataloaders(self) -> list:
        from torch.utils.data import DataLoader

        return [DataLoader(ds, batch_size=1, shuffle=False, collate_fn=ds.collate_fn) for ds in self.eval_datasets()]


__all__ += ["WMDPDataModule", "wmdp_selection_score"]

"""The benchmark-agnostic evaluation core: what every benchmark (TOFU, MUSE, WMDP, yours) shares.

* **distributed helpers**: :func:`dist_world`, :func:`gather_objects`, :func:`broadcast_object` (plain
  ``torch.distributed``; under Lightning the trainer's process group is the same one);
* **sharded loading**: :func:`eval_dataloader` gives each rank a ``DistributedSampler(shuffle=False)``
  shard (padded to equal length; the metrics drop duplicates by sample index when they are synced);
* **the plain driver**: :func:`evaluate_datasets` feeds every batch of every split to a benchmark's
  evaluator and computes the synced results; :class:`BenchmarkEvaluation` loads a model, runs it, builds
  the report and writes it on rank 0;
* **the benchmark contract**: :class:`Benchmark` (what a benchmark module declares: its datasets, its
  evaluator, its report and the scalars it logs) and the registry (:func:`get_benchmark`,
  :func:`register_benchmark`, :func:`benchmark_names`);
* :func:`harmonic_mean`, used by the selection scores.

Lightning wiring (``validate``/``test``/in-fit evaluation) is in :mod:`lit_unlearn.evaluation.lightning`;
the report files of a benchmark are written by its own ``write`` (TOFU: :mod:`lit_unlearn.evaluation.report`).

Adding a benchmark = one module under ``lit_unlearn/evaluation/benchmarks/`` with a :class:`Benchmark`
subclass, registered by name (``register_benchmark("name", "module:Class")`` or an entry in
:data:`BENCHMARKS`); see docs/evaluation.md.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# ----------------------------------------------------------------------------- distributed helpers


def dist_world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised ``torch.distributed`` group, else ``(1, 0)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``all_gather_object``; ``[obj]`` alone)."""
    world, _ = dist_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``broadcast_object_list``); ``obj`` itself in one process."""
    world, _ = dist_world()
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------- loading


def eval_dataloader(dataset: Dataset, batch_size: int, world_size: int = 1, rank: int = 0,
                    collate_fn=None) -> DataLoader:
    """Deterministic loader over ``dataset``; sharded with a ``DistributedSampler`` when ``world_size > 1``.

    ``collate_fn`` defaults to the dataset's ``collate_fn`` attribute, else TOFU's ``EvalCollator``.
    """
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else None)
    if collate_fn is None:
        collate_fn = getattr(dataset, "collate_fn", None)
    if collate_fn is None:
        from lit_unlearn.data.tofu_eval import EvalCollator

        collate_fn = EvalCollator(dataset.tokenizer.pad_token_id)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, collate_fn=collate_fn)


def base_metadata() -> dict[str, Any]:
    """Package versions, a UTC timestamp and the environment: the first keys of every report's metadata."""
    import lit_unlearn
    from lit_unlearn.utils.environment import environment_info

    return {
        "lit_unlearn_version": lit_unlearn.__version__,
        "torch_version": torch.__version__,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment_info(),
    }


def model_dtype(model) -> str:
    try:
        return str(next(model.parameters()).dtype).replace("torch.", "")
    except StopIteration:  # pragma: no cover
        return "unknown"


def model_label(model_or_path: Any, model: torch.nn.Module) -> str:
    """The report's ``metadata.model``: the folder or hub name, or for an in-memory model a label that says so
    (its weights may differ from the folder it was first loaded from, e.g. after unlearning)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return str(model_or_path)
    origin = getattr(getattr(model, "config", None), "_name_or_path", "")
    return f"in-memory {type(model).__name__}" + (f" (initialised from {origin})" if origin else "")


def run_metadata(model_or_path: Any, model: torch.nn.Module, world_size: int, batch_size: int) -> dict[str, Any]:
    """The report metadata every benchmark records about how it ran: model, ranks, precision, device, batch."""
    return {
        "model": model_label(model_or_path, model),
        "world_size": world_size,
        "strategy": "torch.distributed" if world_size > 1 else "single_process",
        "backend": torch.distributed.get_backend() if world_size > 1 else None,
        "precision": model_dtype(model),
        "device": str(next(model.parameters()).device),
        "batch_size": batch_size,
        "effective_batch_size": batch_size * world_size,
    }


def load_model_and_tokenizer(model_or_path, tokenizer=None, device=None, dtype: str | None = None,
                             who: str = "The evaluation"):
    """``(model, tokenizer)`` from objects or paths/hub names (``load_causal_lm``/``load_tokenizer``).

    A model given by path goes to CUDA when available (unless ``device`` says otherwise)."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    if tokenizer is None:
        if not isinstance(model_or_path, (str, os.PathLike)):
            raise ValueError(f"{who} needs `tokenizer` when the model is given as an object.")
        tokenizer = str(model_or_path)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(str(tokenizer))
    model = model_or_path
    if isinstance(model, (str, os.PathLike)):
        model = load_causal_lm(str(model), tokenizer, dtype=dtype)
    if device is not None:
        model = model.to(device)
    elif isinstance(model_or_path, (str, os.PathLike)) and torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


# ----------------------------------------------------------------------------- the benchmark contract


class Evaluator(Protocol):
    """The metric states of one benchmark: ``update`` per batch (any rank, any order), ``compute`` once on
    every rank (collective under ``torch.distributed``: the states are synced)."""

    def check_model(self, model) -> None: ...

    def update(self, key: str, batch: Mapping[str, Any], model) -> None: ...

    def compute(self) -> dict[str, Any]: ...


def format_cell(value: Any) -> str:
    """A report table cell: ``–`` for a missing value, floats with 4 decimals, anything else as ``str``."""
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def harmonic_mean(values: Sequence[float]) -> float:
    """n / Σ 1/v_i for values >= 0 (0 when any value is 0), as ``scipy.stats.hmean``."""
    if not values:
        raise ValueError("harmonic_mean of no values")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic_mean needs values >= 0, got {list(values)}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


class Benchmark:
    """What one benchmark module declares. Subclasses set :attr:`name` and implement the methods below.

    A benchmark instance holds its settings (``self.config``). The core calls

    * :meth:`datasets` (``tokenizer``) -> the evaluation datasets; each has ``key`` (its name in the report)
      and ``collate_fn``; the core shards them across ranks;
    * :meth:`check` (``datasets``) before any model work: early errors (a retain report of other data ...);
    * :meth:`evaluator` (``keys, tokenizer``) -> an :class:`Evaluator`;
    * :meth:`finalize` (``results, metadata, strict``) -> the report dict (rank-independent);
    * :meth:`scalar_logs` (``report``) -> ``{"eval/...": float}`` logged under Lightning, including
      ``eval/selection_score`` when :meth:`selection_score` gives one;
    * :meth:`write` (``report, out_dir, plots``) -> the written files (``report.json``, ``report.md`` ...).

    A benchmark whose metrics are not computed from sharded batches (WMDP through lm-evaluation-harness)
    sets :attr:`sharded` to False and implements :meth:`evaluate_model` instead of :meth:`evaluator`.
    """

    name: ClassVar[str] = ""
    #: True: the core feeds sharded batches to :meth:`evaluator`; False: :meth:`evaluate_model` runs once
    sharded: ClassVar[bool] = True

    def __init__(self, config: Any = None):
        self.config = config

    # -- data and metrics
    def datasets(self, tokenizer) -> list[Any]:
        raise NotImplementedError

    def check(self, datasets: Sequence[Any], metadata: Mapping[str, Any] | None = None, strict: bool = False) -> None:
        """Early checks before the model runs (default: none)."""

    def evaluator(self, keys: Sequence[str], tokenizer) -> Evaluator:
        raise NotImplementedError

    def evaluate_model(self, model, tokenizer) -> dict[str, Any]:
        """Results of a non-sharded benchmark. Called on every rank (collective or not, as the benchmark
        needs); every rank must return the same results."""
        raise NotImplementedError

    # -- report
    def finalize(self, results: Mapping[str, Any], metadata: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def selection_score(self, report: Mapping[str, Any]) -> float | None:
        """One number combining unlearning and utility (higher = better) for checkpoint selection, or None."""
        return None

    def scalar_logs(self, report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
        raise NotImplementedError

    def write(self, report: Mapping[str, Any], out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        to_dict = getattr(self.config, "to_dict", None)
        return to_dict() if callable(to_dict) else {}

    def data_identity(self) -> dict[str, Any]:
        """``{"source", "data_version"}`` of the evaluated data (recorded; compared with reference reports)."""
        return {}


#: benchmark name -> ``"module:Class"`` (imported on first use) or the class itself
BENCHMARKS: dict[str, str | type] = {
    "tofu": "lit_unlearn.evaluation.benchmarks.tofu:TOFUBenchmark",
    "muse": "lit_unlearn.evaluation.benchmarks.muse:MUSEBenchmark",
    "wmdp": "lit_unlearn.evaluation.benchmarks.wmdp:WMDPBenchmark",
}


def register_benchmark(name: str, target: str | type) -> None:
    """Make ``name`` selectable (``get_benchmark(name)``): ``target`` is a :class:`Benchmark` subclass or
    its ``"module:Class"`` path."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"benchmark name must be letters, digits, '-' or '_', got {name!r}")
    if not isinstance(target, str) and not (isinstance(target, type) and issubclass(target, Benchmark)):
        raise TypeError(f"register_benchmark({name!r}, ...) needs a Benchmark subclass or 'module:Class', got {target!r}")
    BENCHMARKS[name] = target


def benchmark_names() -> list[str]:
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> type[Benchmark]:
    """The :class:`Benchmark` subclass registered as ``name`` (``ValueError`` listing the known names)."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose from {benchmark_names()} (or register one with"
                         " lit_unlearn.evaluation.core.register_benchmark).")
    target = BENCHMARKS[name]
    if isinstance(target, type):
        return target
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


# ----------------------------------------------------------------------------- the plain driver


def evaluate_datasets(evaluator: Evaluator, datasets: Sequence[Any], model, batch_size: int,
                      progress: bool = False) -> dict[str, Any]:
    """Feed every (sharded) batch of every dataset to ``evaluator`` in eval mode; return its synced results.

    Collective under ``torch.distributed`` (each rank evaluates its shard of every dataset)."""
    from tqdm.auto import tqdm

    world_size, rank = dist_world()
    was_training = model.training
    model.eval()
    try:
        for dataset in datasets:
            key = dataset_key(dataset)
            loader = eval_dataloader(dataset, batch_size, world_size, rank)
            for batch in tqdm(loader, desc=f"eval {key}", disable=not progress or rank != 0, leave=False):
                evaluator.update(key, batch, model)
        return evaluator.compute()
    finally:
        model.train(was_training)


def dataset_key(dataset: Any) -> str:
    """A dataset's key in the report: ``dataset.key``, or TOFU's ``dataset.spec.key``."""
    key = getattr(dataset, "key", None)
    if key is None:
        key = dataset.spec.key
    return key


class BenchmarkEvaluation:
    """Evaluate one model on any registered benchmark in plain Python (one process, or each rank of an
    initialised ``torch.distributed`` group, which then shards the samples).

    Args:
        benchmark: a :class:`Benchmark` instance, or a registered name (then built with ``config``).
        model_or_path: a Hugging Face causal LM, or a folder/hub name.
        tokenizer: a tokenizer or its name/path (default: ``model_or_path`` when that is a path).
        batch_size: samples per batch and rank.
        out_dir: rank 0 writes the report files there.
        strict: a reference report of other data is an error (instead of an "unavailable" entry).

    ``TOFUEvaluation`` and ``MUSEEvaluation`` are this with their benchmark's settings as arguments.
    """

    def __init__(self, benchmark: Benchmark | str, model_or_path, tokenizer=None, batch_size: int = 16,
                 out_dir: str | os.PathLike | None = None, device=None, dtype: str | None = None,
                 progress: bool = True, plots: bool = True, strict: bool = False, config: Any = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.benchmark = get_benchmark(benchmark)(config) if isinstance(benchmark, str) else benchmark
        self.model_or_path = model_or_path
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.out_dir = None if out_dir is None else str(out_dir)
        self.device, self.dtype, self.progress, self.plots, self.strict = device, dtype, progress, plots, strict

    def run(self) -> dict[str, Any]:
        """Evaluate, build the report, write it (rank 0, when ``out_dir``) and return it (every rank)."""
        bench = self.benchmark
        model, tokenizer = load_model_and_tokenizer(self.model_or_path, self.tokenizer, self.device, self.dtype,
                                                    who=f"{type(bench).__name__} evaluation")
        world_size, rank = dist_world()
        start = time.perf_counter()
        datasets: list[Any] = []
        if bench.sharded:
            datasets = bench.datasets(tokenizer)
            bench.check(datasets, bench.data_identity(), strict=self.strict)
            evaluator = bench.evaluator([dataset_key(d) for d in datasets], tokenizer)
            evaluator.check_model(model)
            results = evaluate_datasets(evaluator, datasets, model, self.batch_size, self.progress)
        else:
            bench.check([], bench.data_identity(), strict=self.strict)
            was_training = model.training
            model.eval()
            try:
                results = bench.evaluate_model(model, tokenizer)
            finally:
                model.train(was_training)
        metadata = {
            **base_metadata(),
            "benchmark": bench.name,
            **bench.data_identity(),
            **run_metadata(self.model_or_path, model, world_size, self.batch_size),
            "eval_config": bench.config_dict(),
            "splits": {dataset_key(d): getattr(d, "split", dataset_key(d)) for d in datasets},
            "runtime_s": round(time.perf_counter() - start, 3),
        }
        report = bench.finalize(results, metadata, strict=self.strict)
        if rank == 0 and self.out_dir:
            bench.write(report, self.out_dir, plots=self.plots)
        return report

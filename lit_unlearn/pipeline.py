"""The embedded-default pipeline behind ``make demo`` / ``lit-unlearn demo``.

Stages: builtin data → BPE tokenizer → target model (trained on every author) and retain model (trained
without the forget authors) → evaluation of both → unlearning of the forget split with each objective (with
and without the MRD curriculum), with several seeds, under two protocols → evaluation of each run →
robustness columns of each matched-protocol model (forget MA/ROUGE-L after 4-bit RTN quantization and after
relearning; :func:`demo_robustness`, ``DemoSettings.robustness``; the model is saved as ``<run>/model``) →
``report.md`` with the mean and spread over seeds, a UC-vs-UT scatter with the spread, MRD histograms and
G-effect curves, and ``summary.json`` (every run's headline numbers, the settings and the environment).

Protocols: ``budget`` gives every objective the same number of steps; ``matched`` runs each objective until
the forget set's mean memorisation accuracy has fallen to the retain model's (the MRD paper's App. E.4
criterion with the retain model as the threshold), with a step cap, and reports the steps it took. Both
protocols come from one training run per seed (:class:`ProtocolSnapshots`): the matched run is the budget
run's trajectory stopped elsewhere, so the shared steps are trained once.

Reproducibility: the torch thread count is fixed (``DemoSettings.num_threads``, recorded) and deterministic
kernels are used, so a rerun on the same machine and lock file gives identical numbers. The target and
retain models are cached under ``$LIT_UNLEARN_HOME/models/<kind>-<key>``, where the key hashes the data
version and the training config (thread count included), so a rerun skips their training; copies are
written to ``<out>/models/{target,retain}`` for the CLI examples. Their reports are cached the same way
(:func:`cached_reference_report`, keyed also by the evaluation code). Each stage's wall time is printed.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from lightning.pytorch.callbacks import Callback

from lit_unlearn.utils.environment import DEFAULT_NUM_THREADS
from lit_unlearn.utils.io import atomic_write_json, cache_dir, payload_key

MIN_TARGET_MEMORIZATION = 0.8
# The demo computes with one torch thread per process and runs its unlearning runs in parallel processes: at
# this model size most of a step is single-threaded Python, so two 1-thread processes on two cores do about
# 1.4-1.7x the work of one 2-thread process, and a 1-thread result needs no particular core count to reproduce.
DEMO_NUM_THREADS = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """How the target/retain models are trained (everything that goes into the cache key)."""

    source: str = "builtin:tofu-mini"
    splits: tuple[str, ...] = ("full", "real_authors", "world_facts")
    epochs: int = 10
    lr: float = 3e-3
    warmup_steps: int = 50
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0
    model: str = "builtin:tiny-llama"
    num_threads: int = DEFAULT_NUM_THREADS  # torch threads: the same seed gives other weights at another count


def target_config(source: str = "builtin:tofu-mini", **kw) -> FinetuneConfig:
    return FinetuneConfig(source=source, splits=("full", "real_authors", "world_facts"), **kw)


def retain_config(forget_split: str = "forget10", source: str = "builtin:tofu-mini", **kw) -> FinetuneConfig:
    retain = "retain" + str(100 - int(forget_split.removeprefix("forget")))
    return FinetuneConfig(source=source, splits=(retain, "real_authors", "world_facts"), **kw)


class StageTimer:
    """Collects the wall time of each named stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"[lit-unlearn] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        print(f"[lit-unlearn] {name}: {self.times[name]:.1f}s", flush=True)

    def summary(self) -> str:
        width = max(len(k) for k in self.times)
        rows = [f"  {k:<{width}}  {v:7.1f}s" for k, v in self.times.items()]
        return "\n".join(["Wall time per stage:", *rows, f"  {'total':<{width}}  {sum(self.times.values()):7.1f}s"])


def model_key(config: FinetuneConfig, tokenizer: str) -> str:
    from lit_unlearn import __version__
    from lit_unlearn.data.sources import source_version

    payload = {"config": asdict(config), "data_version": source_version(config.source, config.seed),
               "tokenizer": Path(tokenizer).name, "lit_unlearn": __version__}
    return payload_key(payload)


def finetune_on(make_data: Callable[[], object], config, tokenizer: str, save_dir: str | Path,
                progress: bool = True) -> Path:
    """Train ``config.model`` with :class:`FinetuneModule` on the datamodule ``make_data()`` builds (after the
    threads, deterministic kernels and seed are set) and save it as a HF folder. ``config`` is a dataclass with
    ``model``, ``lr``, ``warmup_steps``, ``epochs``, ``seed`` and ``num_threads`` (recorded in the metadata)."""
    import lightning as L

    from lit_unlearn.objectives.finetune import FinetuneModule
    from lit_unlearn.utils.environment import set_num_threads, use_deterministic_algorithms

    set_num_threads(config.num_threads)
    use_deterministic_algorithms()
    L.seed_everything(config.seed, verbose=False)
    data = make_data()
    module = FinetuneModule(model_name_or_path=config.model, tokenizer=tokenizer, lr=config.lr,
                            warmup_steps=config.warmup_steps, save_dir=str(save_dir), seed=config.seed)
    module.extra_metadata = {"finetune_config": asdict(config)}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=config.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return Path(save_dir)


def finetune(config: FinetuneConfig, tokenizer: str, save_dir: str | Path, progress: bool = True) -> Path:
    """Train a model on ``config``'s TOFU-format splits (:func:`finetune_on`) and save it as a HF folder."""
    from lit_unlearn.data.tofu import TOFUDataModule

    return finetune_on(lambda: TOFUDataModule(source=config.source, tokenizer=tokenizer, splits=list(config.splits),
                                              batch_size=config.batch_size, max_length=config.max_length,
                                              seed=config.seed),
                       config, tokenizer, save_dir, progress)


def cached_model(kind: str, key: str, build: Callable[[Path], Path]) -> tuple[Path, bool]:
    """The model folder ``$LIT_UNLEARN_HOME/models/<kind>-<key>``, built by ``build(folder)`` only when the cache
    has none. Returns (path, cached).

    Building holds a file lock beside the folder (``<folder>.lock``), so of two processes that need the same
    model one trains it and the other waits (``$LIT_UNLEARN_LOCK_TIMEOUT`` s at most) and then loads it.
    """
    from lit_unlearn.utils.locks import file_lock

    folder = cache_dir() / "models" / f"{kind}-{key}"
    if (folder / "lit_unlearn.json").is_file():
        return folder, True
    with file_lock(folder.with_name(folder.name + ".lock"), what=f"training the {kind} model {folder.name}"):
        if (folder / "lit_unlearn.json").is_file():  # built by another process while this one waited
            return folder, True
        return build(folder), False


def cached_finetune(kind: str, config: FinetuneConfig, tokenizer: str, progress: bool = True) -> tuple[Path, bool]:
    """The trained model folder for ``config`` (:func:`cached_model`), training it only when the cache has none."""
    return cached_model(kind, model_key(config, tokenizer), lambda folder: finetune(config, tokenizer, folder, progress))


def cached_models(configs: dict[str, FinetuneConfig], tokenizer: str, workers: int = 1,
                  progress: bool = True) -> dict[str, tuple[Path, bool]]:
    """:func:`cached_finetune` for each ``{kind: config}``; the models the cache lacks are trained in parallel
    processes when ``workers > 1`` (each at its config's thread count, so the weights are the same)."""
    missing = [kind for kind, config in configs.items()
               if not (cache_dir() / "models" / f"{kind}-{model_key(config, tokenizer)}" / "lit_unlearn.json").is_file()]
    if workers <= 1 or len(missing) <= 1:
        return {kind: cached_finetune(kind, config, tokenizer, progress) for kind, config in configs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(missing)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {kind: pool.submit(cached_finetune, kind, configs[kind], tokenizer, False) for kind in missing}
        built = {kind: future.result() for kind, future in futures.items()}
    return {kind: built[kind] if kind in built else cached_finetune(kind, config, tokenizer, progress)
            for kind, config in configs.items()}


@torch.no_grad()
def memorization_accuracy_on(model_dir: str | Path, split: str, source: str = "builtin:tofu-mini",
                             max_length: int = 64) -> float:
    """Mean per-sample memorisation accuracy (argmax next-token accuracy on answer tokens) on ``split``."""
    from lit_unlearn.data.tofu import TOFUDataModule
    from lit_unlearn.metrics import MemorizationAccuracy
    from lit_unlearn.models.loading import load_causal_lm

    data = TOFUDataModule(source=source, tokenizer=str(model_dir), splits=[split], max_length=max_length)
    data.setup("validate")
    model = load_causal_lm(str(model_dir)).eval()
    metric = MemorizationAccuracy()
    loader = torch.utils.data.DataLoader(data.train_dataset, batch_size=64, collate_fn=data.collate)
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        metric.update(logits, batch["labels"], index=batch["index"])
    return float(metric.compute())


@dataclass(frozen=True)
class UnlearnSpec:
    """One unlearning run of the demo: an objective class, its arguments, and the analysis attached to it."""

    name: str
    objective: str
    kwargs: dict = field(default_factory=dict)
    mrd: bool = False  # add the MRD curriculum (Feng et al., 2025: CGA, "+MRD")
    geffect: bool = False  # record G-effect curves (Wang et al., 2025)
    lr: float | None = None  # this run's learning rate (default: DemoSettings.unlearn_lr)


ALL_RUNS: tuple[UnlearnSpec, ...] = (
    UnlearnSpec("GA", "GA", geffect=True),
    UnlearnSpec("GradDiff", "GradDiff"),
    UnlearnSpec("NPO", "NPO", geffect=True),
    UnlearnSpec("SimNPO", "SimNPO"),
    UnlearnSpec("IdkNLL", "IdkNLL"),
    UnlearnSpec("IdkDPO", "IdkDPO", lr=3e-4),  # per-objective lrs: benchmarks/demo_lr_sweep.py
    UnlearnSpec("RMU", "RMU", {"alpha": 1.0, "steering_coeff": 2.0}, lr=1e-2),  # trains 3 down-projections only
    UnlearnSpec("WGA", "WGA", geffect=True),
    UnlearnSpec("TNPO", "TNPO", geffect=True),
    UnlearnSpec("WTNPO", "WTNPO"),
    UnlearnSpec("SatImp", "SatImp", geffect=True),
    UnlearnSpec("UNDIAL", "UNDIAL"),
    UnlearnSpec("CEU", "CEU"),
    UnlearnSpec("PDU", "PDU", lr=3e-4),
    UnlearnSpec("AltPO", "AltPO", lr=3e-4),
    UnlearnSpec("GRU", "GRU"),
    UnlearnSpec("CGA", "GA", mrd=True),
    UnlearnSpec("GradDiff+MRD", "GradDiff", mrd=True),
    UnlearnSpec("NPO+MRD", "NPO", mrd=True),
    UnlearnSpec("IdkDPO+MRD", "IdkDPO", mrd=True, lr=3e-4),
)
FAST_RUNS: tuple[str, ...] = ("GA", "GradDiff", "NPO")  # x 3 seeds, both protocols from one run each: a rerun fits 5 minutes


@dataclass(frozen=True)
class DemoSettings:
    """The knobs of ``make demo``; every run uses the same step budget and learning rate."""

    epochs: int = 10  # finetuning epochs of the target/retain models
    unlearn_epochs: int = 5  # passes over the forget split (batch 8: 13 steps each on forget10)
    unlearn_lr: float = 1e-4  # 5e-5 barely forgets, 2e-4 destroys utility (GA/NPO on tofu-mini); UnlearnSpec.lr overrides
    batch_size: int = 8
    mrd_samples: int = 32  # Monte-Carlo perturbations per MRD scoring (paper: 100-200)
    max_new_tokens: int = 32  # builtin answers are at most ~20 tokens
    eval_batch_size: int = 64  # 64 rather than 32: half the generate calls (values equal to float rounding)
    max_samples: int | None = None  # evaluate only the first rows of each split (tests)
    geffect_every: int = 5
    target_splits: tuple[str, ...] | None = None  # default: every author + general knowledge
    retain_splits: tuple[str, ...] | None = None  # default: the retain split + general knowledge
    mrd_every_n_epochs: int = 2
    mrd_estimator: str = "mean_abs"  # Algorithm 1; "analytic" is its one-backward-per-sample limit
    mrd_control_variate: bool = False  # mean_abs with the analytic score as control variate (same mean, less noise)
    accelerator: str = "cpu"  # of the unlearning runs ("gpu" for benchmarks on a GPU); finetuning stays on CPU
    seeds: tuple[int, ...] = (0, 1, 2)  # each unlearning run is repeated per seed: data order, dropout, RMU, MRD
    protocols: tuple[str, ...] = ("budget", "matched")  # see the module docstring
    matched_max_epochs: int = 10  # step cap of the matched protocol, in passes over the forget split
    matched_check_every: int = 5  # optimizer steps between two forget-MA checks of the matched protocol
    num_threads: int = DEMO_NUM_THREADS  # torch CPU threads per process (recorded in every output)
    # processes running the runs in parallel (changes no number); 0 = cores // num_threads, the CLI's default. More
    # than one spawns fresh processes, so a script calling run_demo needs the ``if __name__ == "__main__":`` guard.
    workers: int = 1
    robustness: bool = True  # forget MA/ROUGE-L of each matched model after int4 quantization and relearning
    robustness_relearn_steps: int = 25  # relearning steps on half of the forget split (issue #16)
    robustness_lr: float = 5e-4  # relearning AdamW lr (the tiny builtin model; 7B models use ~1e-5)
    robustness_batch_size: int = 4  # relearning samples per step

    def __post_init__(self) -> None:
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {self.protocols}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.workers < 0 or self.num_threads < 1:
            raise ValueError(f"workers must be >= 0 (0 = automatic) and num_threads >= 1, got workers={self.workers},"
                             f" num_threads={self.num_threads}")


PROTOCOLS = ("budget", "matched")


def unlearning_data(target: Path, source: str, forget_split: str, settings: DemoSettings, seed: int = 0):
    """The forget/retain datamodule of the demo; ``seed`` orders the batches (the data itself is fixed, so its
    tokenised datasets are built once per process and handed to every run's datamodule: they are read-only)."""
    data = _unlearning_datamodule(target, source, forget_split, settings.batch_size, seed)
    data.forget_dataset, data.retain_dataset = _encoded_unlearning_data(str(target), source, forget_split,
                                                                        settings.batch_size)
    return data


def _unlearning_datamodule(target: Path | str, source: str, forget_split: str, batch_size: int, seed: int):
    from lit_unlearn.data.tofu import UnlearningDataModule

    retain_split = "retain" + str(100 - int(forget_split.removeprefix("forget")))
    return UnlearningDataModule(source=source, tokenizer=str(target), forget_split=forget_split,
                                retain_split=retain_split, batch_size=batch_size, max_length=64, shuffle_seed=seed)


@functools.lru_cache(maxsize=4)
def _encoded_unlearning_data(target: str, source: str, forget_split: str, batch_size: int) -> tuple:
    data = _unlearning_datamodule(target, source, forget_split, batch_size, 0)
    data.setup("fit")
    return data.forget_dataset, data.retain_dataset


@torch.no_grad()
def forget_ma_threshold(model_dir: Path, target: Path, source: str, forget_split: str, settings: DemoSettings) -> float:
    """Mean forget-set MA of ``model_dir`` (the retain model), measured exactly as the matched protocol's
    :class:`ForgettingEarlyStopping` measures the model being unlearned (same data, tokenizer and MA)."""
    from lit_unlearn.callbacks.early_stopping import memorization_and_extraction
    from lit_unlearn.models.loading import load_causal_lm

    data = unlearning_data(target, source, forget_split, settings)
    data.setup("fit")
    model = load_causal_lm(str(model_dir)).eval()
    ma, _ = memorization_and_extraction(model, data.forget_scoring_dataloader(64), extraction=False)
    return float(ma.mean())


def demo_run_parts(spec: UnlearnSpec, target: Path, source: str, forget_split: str, out: Path,
                   settings: DemoSettings, seed: int, geffect: bool):
    """The pieces every demo training run shares: the seeded objective module, its datamodule and the analysis
    callbacks (MRD curriculum, G-effect); returns ``(module, data, callbacks)``."""
    import lightning as L

    import lit_unlearn.objectives as objectives
    from lit_unlearn.callbacks import GEffectMonitor, MRDCurriculum

    if "lr" in spec.kwargs:
        raise ValueError(f"UnlearnSpec {spec.name!r}: give the learning rate as UnlearnSpec.lr, not in kwargs")
    L.seed_everything(seed, verbose=False)
    cls = getattr(objectives, spec.objective)
    data = unlearning_data(target, source, forget_split, settings, seed)
    lr = spec.lr if spec.lr is not None else settings.unlearn_lr
    module = cls(model_name_or_path=str(target), tokenizer=str(target), lr=lr, seed=seed, **spec.kwargs)
    callbacks: list = []
    if spec.mrd:
        callbacks.append(MRDCurriculum(every_n_epochs=settings.mrd_every_n_epochs, num_samples=settings.mrd_samples,
                                       estimator=settings.mrd_estimator,
                                       control_variate=settings.mrd_control_variate, batch_size=64, seed=seed,
                                       output_dir=str(out / "mrd")))
    if geffect:
        callbacks.append(GEffectMonitor(every_n_steps=settings.geffect_every, output_dir=str(out / "geffect")))
    return module, data, callbacks


def matched_stopper(settings: DemoSettings, ma_threshold: float):
    """The matched protocol's stop: forget-set mean MA at most ``ma_threshold``, checked every few steps."""
    from lit_unlearn.callbacks import ForgettingEarlyStopping

    return ForgettingEarlyStopping(criterion="mean_ma", ma_threshold=ma_threshold,
                                   check_every_n_steps=settings.matched_check_every, batch_size=64)


def demo_trainer(settings: DemoSettings, max_epochs: int, callbacks: list, out: Path, progress: bool):
    import lightning as L

    return L.Trainer(accelerator=settings.accelerator, devices=1, max_epochs=max_epochs, logger=False,
                     enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                     callbacks=callbacks, default_root_dir=str(out), deterministic="warn")


def unlearn(spec: UnlearnSpec, target: Path, source: str, forget_split: str, out: Path, settings: DemoSettings,
            progress: bool = True, seed: int = 0, protocol: str = "budget", ma_threshold: float | None = None,
            geffect: bool | None = None):
    """Unlearn ``forget_split`` from ``target`` with one objective; returns the trained module and its callbacks.

    ``seed`` drives the batch order, dropout, RMU's control vector and MRD's perturbations. ``protocol``:
    ``"budget"`` trains ``settings.unlearn_epochs`` epochs; ``"matched"`` stops once the forget set's mean MA
    is at most ``ma_threshold`` (checked every ``settings.matched_check_every`` steps), at the latest after
    ``settings.matched_max_epochs`` epochs. (The demo itself takes both protocols from one run:
    :func:`unlearn_protocols`.)
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "matched" and ma_threshold is None:
        raise ValueError("protocol='matched' needs ma_threshold (the retain model's mean forget-set MA)")
    module, data, callbacks = demo_run_parts(spec, target, source, forget_split, out, settings, seed,
                                             spec.geffect if geffect is None else geffect)
    max_epochs = settings.unlearn_epochs
    if protocol == "matched":
        callbacks.append(matched_stopper(settings, ma_threshold))
        max_epochs = settings.matched_max_epochs
    demo_trainer(settings, max_epochs, callbacks, out, progress).fit(module, datamodule=data)
    return module, callbacks


@dataclass
class ProtocolOutcome:
    """The model one protocol of a run ends with, the steps it took and (matched) the forget-MA checks."""

    model: torch.nn.Module
    steps: int
    reached: bool | None = None  # matched: whether the forget MA reached the threshold before the cap
    ma_checks: list | None = None  # matched: [[step, mean MA], ...] up to the stop


class ProtocolSnapshots(Callback):
    """Both protocols of the demo from ONE training run.

    A run under ``matched`` follows the same trajectory as the same seed's run under ``budget`` up to its stop
    (same data order, seed and learning rate; the forget-MA checks run in eval mode without gradients and draw
    no random numbers), so one run serves both: a copy of the model is taken when ``stopper`` first reports the
    matched point and when the budget of ``budget_epochs`` epochs is spent, and training stops once every
    wanted protocol has its model (at the latest at the trainer's step cap). Place it after ``stopper``.
    Naive equivalent: two fits, one per protocol (``unlearn(..., protocol=...)``), which train the shared
    prefix twice; ``tests/test_demo.py`` checks that both give the same numbers.
    """

    def __init__(self, protocols: tuple[str, ...], budget_epochs: int, stopper=None):
        super().__init__()
        self.protocols, self.budget_epochs, self.stopper = tuple(protocols), budget_epochs, stopper
        self.outcomes: dict[str, ProtocolOutcome] = {}

    def _capture(self, protocol: str, trainer, pl_module, **extra) -> None:
        import copy

        same_step = next((o for o in self.outcomes.values() if o.steps == trainer.global_step), None)
        model = same_step.model if same_step is not None else copy.deepcopy(pl_module.model).eval()
        self.outcomes[protocol] = ProtocolOutcome(model, trainer.global_step, **extra)

    def _stop_when_complete(self, trainer) -> None:
        trainer.should_stop = all(p in self.outcomes for p in self.protocols)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        stopper = self.stopper
        if ("matched" in self.protocols and "matched" not in self.outcomes and stopper is not None
                and stopper.stopped_step is not None):
            self._capture("matched", trainer, pl_module, reached=True,
                          ma_checks=[[h["step"], h["ma_mean"]] for h in stopper.history])
            stopper.ma_threshold = None  # no further checks: the matched point is taken
        self._stop_when_complete(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if "budget" in self.protocols and "budget" not in self.outcomes and trainer.current_epoch + 1 >= self.budget_epochs:
            self._capture("budget", trainer, pl_module)
        self._stop_when_complete(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        for protocol in self.protocols:  # the cap came first: the final model (matched: not reached)
            if protocol not in self.outcomes:
                checks = (None if protocol == "budget" or self.stopper is None
                          else [[h["step"], h["ma_mean"]] for h in self.stopper.history])
                self.outcomes[protocol] = ProtocolOutcome(pl_module.model.eval(), trainer.global_step,
                                                          reached=None if protocol == "budget" else False,
                                                          ma_checks=checks)


def unlearn_protocols(spec: UnlearnSpec, target: Path, source: str, forget_split: str, out: Path,
                      settings: DemoSettings, progress: bool = True, seed: int = 0,
                      ma_threshold: float | None = None, geffect: bool = False):
    """One training run that yields the model of every protocol in ``settings.protocols`` (see
    :class:`ProtocolSnapshots`); returns ``(module, callbacks, {protocol: ProtocolOutcome})``."""
    protocols = settings.protocols
    if "matched" in protocols and ma_threshold is None:
        raise ValueError("the matched protocol needs ma_threshold (the retain model's mean forget-set MA)")
    module, data, callbacks = demo_run_parts(spec, target, source, forget_split, out, settings, seed, geffect)
    stopper = None
    max_epochs = settings.unlearn_epochs
    if "matched" in protocols:
        stopper = matched_stopper(settings, ma_threshold)
        callbacks.append(stopper)
        max_epochs = max(settings.matched_max_epochs, settings.unlearn_epochs if "budget" in protocols else 0)
    snapshots = ProtocolSnapshots(protocols, settings.unlearn_epochs, stopper)
    callbacks.append(snapshots)  # after the stopper: it reads the stopper's decision of the same step
    demo_trainer(settings, max_epochs, callbacks, out, progress).fit(module, datamodule=data)
    return module, callbacks, snapshots.outcomes


DEMO_EVAL_MAX_LENGTH = 64  # tokens per (question, answer): the builtin answers fit with room to spare


def demo_eval_splits(forget_split: str) -> dict[str, str]:
    """The evaluation splits of the demo's reports for ``forget_split`` (``forget10`` -> ``holdout10`` ...)."""
    return {"forget": f"{forget_split}_perturbed", "retain": "retain_perturbed",
            "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed",
            "holdout": f"holdout{forget_split.removeprefix('forget')}"}


@functools.lru_cache(maxsize=4)
def demo_eval_datasets(tokenizer: str, source: str, forget_split: str, max_samples: int | None) -> list:
    """The tokenised evaluation datasets of the demo's reports, built once per process (a demo evaluates
    about 120 models on the same data)."""
    from lit_unlearn.evaluation.data import build_eval_datasets
    from lit_unlearn.models.loading import load_tokenizer

    return build_eval_datasets(load_tokenizer(tokenizer), source, demo_eval_splits(forget_split),
                               DEMO_EVAL_MAX_LENGTH, max_samples)


def evaluate(model, tokenizer, source: str, forget_split: str, out: Path, settings: DemoSettings,
             retain_report: Path | None = None, progress: bool = True, name: str | None = None,
             plots: bool = True) -> dict:
    """The TOFU-style suite on one model; writes ``out/report.{json,md}`` and (``plots``) ``metrics.png``."""
    from lit_unlearn.evaluation import TOFUEvaluation

    splits = demo_eval_splits(forget_split)
    datasets = None
    if isinstance(tokenizer, (str, Path)):  # the demo's case: tokenise once per process, not per evaluation
        datasets = demo_eval_datasets(str(tokenizer), source, forget_split, settings.max_samples)
    evaluation = TOFUEvaluation(model, tokenizer=tokenizer, source=source, splits=splits,
                                retain_report=retain_report, max_new_tokens=settings.max_new_tokens,
                                batch_size=settings.eval_batch_size, max_length=DEMO_EVAL_MAX_LENGTH,
                                max_samples=settings.max_samples, out_dir=out, progress=progress, plots=plots,
                                el_splits=["forget"],  # EL (a generation per answer prefix) is a forget metric
                                datasets=datasets)
    report = evaluation.run()
    if name is not None:
        report.setdefault("metadata", {})["run_name"] = name
    return report


@functools.lru_cache(maxsize=4)
def _report_rows_are_probe_rows(source: str, forget_split: str) -> bool:
    """Whether the report's forget split (``<forget_split>_perturbed``) holds the probe's rows (``forget_split``)
    in the same order, so its per-sample values can stand in for a probe (checked once per process)."""
    from lit_unlearn.data.sources import load_rows

    probed, reported = load_rows(source, forget_split), load_rows(source, f"{forget_split}_perturbed")
    return [(r["question"], r["answer"]) for r in probed] == [(r["question"], r["answer"]) for r in reported]


def demo_robustness(model, tokenizer, source: str, forget_split: str, settings: DemoSettings, seed: int,
                    report: dict | None = None) -> dict:
    """The demo's robustness columns of one model (:func:`lit_unlearn.attacks.robustness_summary`): forget MA
    and ROUGE-L at full precision and after 4-bit RTN quantization (whole forget split), and on a seeded half
    of the forget split before and after ``settings.robustness_relearn_steps`` relearning steps on the other
    half; evaluated like the demo's reports (``max_new_tokens``, ``max_samples``, 64 tokens per sample).
    ``report``: the model's TOFU report from :func:`evaluate`, whose per-sample forget MA and ROUGE-L (the same
    rows and settings) are reused instead of probing the full-precision model again."""
    from lit_unlearn.attacks import robustness_summary

    per_sample = None
    if report is not None and _report_rows_are_probe_rows(source, forget_split):
        per_sample = report["splits"]["forget"]["per_sample"]
    return robustness_summary(model, tokenizer, source=source, forget_split=forget_split,
                              relearn_steps=settings.robustness_relearn_steps, lr=settings.robustness_lr,
                              batch_size=settings.robustness_batch_size, max_new_tokens=settings.max_new_tokens,
                              seed=seed, max_samples=settings.max_samples, progress=False,
                              eval_batch_size=settings.eval_batch_size, max_length=64,
                              accelerator=settings.accelerator, forget_per_sample=per_sample)


def attack_code_hash() -> str:
    """:func:`evaluation_code_hash` and the source of :mod:`lit_unlearn.attacks`: cached robustness columns
    are reused only while both are unchanged."""
    attacks = Path(__file__).resolve().parent / "attacks"
    digest = hashlib.sha256(evaluation_code_hash().encode())
    for file in sorted(attacks.glob("*.py")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cached_reference_robustness(kind: str, model_dir: Path, source: str, forget_split: str,
                                settings: DemoSettings) -> tuple[dict, bool]:
    """:func:`demo_robustness` of the cached ``retain``/``target`` model (at the first seed), computed only
    when the cache has none for this model, these settings and this evaluation and attack code (like
    :func:`cached_reference_report`). Returns ``(columns, cached)``."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer
    from lit_unlearn.utils.locks import file_lock

    keys = ("max_new_tokens", "eval_batch_size", "max_samples", "num_threads", "robustness_relearn_steps",
            "robustness_lr", "robustness_batch_size", "accelerator")
    payload = {"model": model_dir.name, "source": source, "forget_split": forget_split, "seed": settings.seeds[0],
               "settings": {k: getattr(settings, k) for k in keys}, "code": attack_code_hash()}
    digest = payload_key(payload)
    file = cache_dir() / "robustness" / f"{kind}-{digest}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_name(file.name + ".lock"), what=f"attacking the {kind} model"):
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8")), True
        tokenizer = load_tokenizer(str(model_dir))
        columns = demo_robustness(load_causal_lm(str(model_dir), tokenizer), tokenizer, source, forget_split,
                                  settings, settings.seeds[0])
        atomic_write_json(file, columns)
    return columns, False


def save_run_model(model, tokenizer, folder: Path) -> Path:
    """``model`` and its tokenizer as a Hugging Face folder (atomically), e.g. for ``lit-unlearn attack``."""
    from lit_unlearn.utils.io import atomic_directory

    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def evaluation_code_hash() -> str:
    """A hash of the source of every module an evaluation report depends on (data, evaluation, functional,
    metrics): a cached report is reused only while that code is unchanged."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for package in ("data", "evaluation", "functional", "metrics", "models"):
        for file in sorted((root / package).rglob("*.py")):
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cached_reference_report(kind: str, model_dir: Path, source: str, forget_split: str, out: Path,
                            settings: DemoSettings, retain_report: Path | None, progress: bool) -> tuple[dict, bool]:
    """The report of the cached ``retain``/``target`` model, evaluated only when the cache has none for this
    model, these evaluation settings and this evaluation code; the report folder is copied to ``out``.
    Returns ``(report, cached)``. Like the models, the reports are deterministic at a fixed thread count."""
    import shutil

    from lit_unlearn.evaluation.report import load_report
    from lit_unlearn.utils.locks import file_lock

    eval_settings = {k: getattr(settings, k) for k in ("max_new_tokens", "eval_batch_size", "max_samples", "num_threads")}
    payload = {"model": model_dir.name, "source": source, "forget_split": forget_split, "settings": eval_settings,
               "retain_report": None if retain_report is None else json.loads(retain_report.read_text())["summary"],
               "code": evaluation_code_hash()}
    folder = cache_dir() / "reports" / f"{kind}-{payload_key(payload)}"
    with file_lock(folder.with_name(folder.name + ".lock"), what=f"evaluating the {kind} model"):
        cached = (folder / "report.json").is_file()
        if not cached:
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            report = evaluate(model_dir, model_dir, source, forget_split, staging, settings, retain_report,
                              progress, name=kind)
            if kind == "retain":
                self_referenced(report, staging)
            staging.rename(folder)
    shutil.copytree(folder, out, dirs_exist_ok=True)
    report = load_report(out / "report.json")
    report.setdefault("metadata", {})["run_name"] = kind
    return report, cached


def self_referenced(report: dict, out: Path) -> dict:
    """The retain model's report with its forget quality against itself (1.0 by construction: the reference
    row of the comparison table)."""
    from lit_unlearn.evaluation.report import forget_quality_entry, summarize, write_report

    report = {**report, "forget_quality": forget_quality_entry(report, report)}
    report["summary"] = summarize(report)
    write_report(report, out)
    return report


def plot_geffect_curves(rows_by_run: dict[str, list[dict]], path: Path) -> Path | None:
    """e_u and e_r totals over steps, one line per objective (the comparison figure of Wang et al., 2025, G-effect)."""
    if not rows_by_run:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from lit_unlearn.utils.io import atomic_write_bytes

    fig = Figure(figsize=(10, 4))
    ax_u, ax_r = fig.subplots(1, 2)
    for name, rows in rows_by_run.items():
        steps = [r["step"] for r in rows]
        ax_u.plot(steps, [r["total_unlearning"] for r in rows], marker="o", label=name)
        ax_r.plot(steps, [r["total_retaining"] for r in rows], marker="o", label=name)
    for ax, title in ((ax_u, "unlearning G-effect e_u (forget risk; < 0 removes)"),
                      (ax_r, "retaining G-effect e_r (retain risk; < 0 harms)")):
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(title, fontsize=9)
    ax_r.legend(fontsize=8)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class RunContext:
    """What every unlearning run of one demo shares: the models, the data, the settings and the references."""

    target: Path
    source: str
    forget_split: str
    out: Path
    settings: DemoSettings
    threshold: float | None  # the matched protocol's forget-MA threshold (the retain model's)
    retain_report: Path  # forget quality is computed against this report's truth ratios


@dataclass(frozen=True)
class RunTask:
    """One configuration at one seed; ``first`` marks the first seed (G-effect and MRD figures come from it)."""

    spec: UnlearnSpec
    seed: int
    first: bool


@dataclass
class RunResult:
    """Everything the demo keeps of one :class:`RunTask` (plain data, so it crosses process boundaries)."""

    name: str
    seed: int
    records: list[dict]  # one per protocol
    reports: dict[str, dict]  # "<name>/<protocol>/seed<k>" -> report
    times: dict[str, float]  # stage name -> seconds
    geffect_rows: list[dict] | None = None
    mrd_dir: Path | None = None


def unlearn_and_evaluate(task: RunTask, context: RunContext, progress: bool = False) -> RunResult:
    """Train one configuration at one seed (both protocols from one run, :func:`unlearn_protocols`) and
    evaluate the model of each protocol; the same work whichever process runs it."""
    from lit_unlearn.evaluation.report import write_report

    spec, seed, settings, out = task.spec, task.seed, context.settings, context.out
    run_dirs = {p: out / "runs" / run_dir_name(spec.name) / p / f"seed{seed}" for p in settings.protocols}
    train_dir = run_dirs[settings.protocols[0]]  # MRD histograms and G-effect files of the training run
    times: dict[str, float] = {}
    start = time.perf_counter()
    module, callbacks, outcomes = unlearn_protocols(
        spec, context.target, context.source, context.forget_split, train_dir, settings, progress, seed=seed,
        ma_threshold=context.threshold, geffect=spec.geffect and task.first)
    times[f"unlearn {spec.name} [seed {seed}]"] = time.perf_counter() - start
    reports: dict[str, dict] = {}
    records: list[dict] = []
    evaluated: dict[int, str] = {}  # id(model) -> key of its report: one evaluation per distinct model
    for protocol in settings.protocols:
        outcome, run_dir = outcomes[protocol], run_dirs[protocol]
        key = f"{spec.name}/{protocol}/seed{seed}"
        start = time.perf_counter()
        if id(outcome.model) in evaluated:  # e.g. matched reached exactly at the budget's last step
            reports[key] = json.loads(json.dumps(reports[evaluated[id(outcome.model)]]))
            reports[key]["metadata"]["run_name"] = key
            write_report(reports[key], run_dir)
        else:
            reports[key] = evaluate(outcome.model, context.target, context.source, context.forget_split, run_dir,
                                    settings, context.retain_report, progress, name=key,
                                    plots=task.first)  # the per-run bar chart: first seed only (~1 s each)
            evaluated[id(outcome.model)] = key
        times[f"evaluate {spec.name} [{protocol}, seed {seed}]"] = time.perf_counter() - start
        records.append({"name": spec.name, "protocol": protocol, "seed": seed, "steps": outcome.steps,
                        "reached": outcome.reached, "ma_checks": outcome.ma_checks,
                        "summary": reports[key]["summary"],
                        "report": str((run_dir / "report.json").relative_to(out))})
        if settings.robustness and protocol == "matched":  # the comparable point (docs/robustness.md)
            from lit_unlearn.models.loading import load_tokenizer

            start = time.perf_counter()
            tokenizer = load_tokenizer(str(context.target))
            save_run_model(outcome.model, tokenizer, run_dir / "model")
            records[-1]["model"] = str((run_dir / "model").relative_to(out))
            records[-1]["robustness"] = demo_robustness(outcome.model, tokenizer, context.source,
                                                        context.forget_split, settings, seed, reports[key])
            times[f"robustness {spec.name} [{protocol}, seed {seed}]"] = time.perf_counter() - start
    result = RunResult(spec.name, seed, records, reports, times)
    budget_steps = outcomes["budget"].steps if "budget" in outcomes else None
    for callback in callbacks:
        if hasattr(callback, "rows") and task.first:  # G-effect: the fixed-budget part of the run
            result.geffect_rows = [r for r in callback.rows if budget_steps is None or r["step"] <= budget_steps]
    if spec.mrd and task.first:
        result.mrd_dir = train_dir / "mrd"
    return result


def resolve_workers(settings: DemoSettings, num_tasks: int) -> int:
    """``settings.workers``, or (0 = auto) as many processes as the usable cores hold at
    ``settings.num_threads`` threads each, at most one per task. The count changes no number: every run
    is seeded on its own and computes at the same thread count in whichever process runs it."""
    import os

    if settings.workers > 0:
        return min(settings.workers, max(num_tasks, 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // settings.num_threads, num_tasks))


def _worker_setup(num_threads: int) -> None:
    """Each worker process computes like the parent: the same thread count and deterministic kernels."""
    from lit_unlearn.utils.environment import set_num_threads, use_deterministic_algorithms

    set_num_threads(num_threads)
    use_deterministic_algorithms()


def run_tasks(tasks: list[RunTask], context: RunContext, workers: int, progress: bool) -> Iterator[RunResult]:
    """Run ``tasks`` in this process (``workers == 1``) or in a pool of ``workers`` fresh (spawned) processes,
    yielding each :class:`RunResult` as it completes (in any order; the caller sorts). The slowest
    configurations (MRD curricula) are started first so the pool finishes together."""
    if workers <= 1:
        for task in tasks:
            yield _announced(unlearn_and_evaluate(task, context, progress))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ordered = sorted(tasks, key=lambda t: not t.spec.mrd)  # stable: MRD runs first, otherwise the given order
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_setup, initargs=(context.settings.num_threads,))
    with pool:
        futures = [pool.submit(unlearn_and_evaluate, task, context, False) for task in ordered]
        for future in as_completed(futures):
            yield _announced(future.result())


def _announced(result: RunResult) -> RunResult:
    for stage, seconds in result.times.items():
        print(f"[lit-unlearn] {stage}: {seconds:.1f}s", flush=True)
    return result


@dataclass
class DemoResult:
    out_dir: Path
    target: Path
    retain: Path
    memorization: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # "retain", "target" and "<name>/<protocol>/seed<k>"
    summary: dict = field(default_factory=dict)


def run_dir_name(name: str) -> str:
    return name.replace("+", "_")


def copy_model(source: Path, destination: Path) -> Path:
    """A plain copy of a cached model folder (atomically), so CLI examples can name a stable path."""
    import shutil

    from lit_unlearn.utils.io import atomic_directory

    with atomic_directory(destination) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return destination


def run_demo(out_dir: str | Path = "outputs/demo", source: str = "builtin:tofu-mini", forget_split: str = "forget10",
             runs: tuple[str, ...] | None = FAST_RUNS, settings: DemoSettings = DemoSettings(),
             progress: bool = True) -> DemoResult:
    """The whole embedded-default pipeline; ``runs=None`` runs every objective (``make demo-full``)."""
    import datetime as _dt

    from lit_unlearn import results
    from lit_unlearn.data.sources import is_builtin, source_version
    from lit_unlearn.evaluation.report import compare_reports
    from lit_unlearn.models.loading import builtin_tokenizer_dir
    from lit_unlearn.utils.environment import environment_info, set_num_threads, use_deterministic_algorithms

    out = Path(out_dir)
    specs = [s for s in ALL_RUNS if runs is None or s.name in runs]
    unknown = set(runs or ()) - {s.name for s in ALL_RUNS}
    if unknown:
        raise ValueError(f"Unknown demo runs {sorted(unknown)}; choose from {[s.name for s in ALL_RUNS]}.")
    set_num_threads(settings.num_threads)
    use_deterministic_algorithms()
    started = time.perf_counter()
    timer = StageTimer()
    with timer.stage("data"):
        version = source_version(source)
        if is_builtin(source):
            from lit_unlearn.data.builtin import generate

            generate(source.removeprefix("builtin:")).to_folder(out / "data")
    with timer.stage("tokenizer"):
        tokenizer = str(builtin_tokenizer_dir(source))
    cached = {}
    configs = {"target": target_config(source, epochs=settings.epochs, num_threads=settings.num_threads),
               "retain": retain_config(forget_split, source, epochs=settings.epochs, num_threads=settings.num_threads)}
    for kind, splits in (("target", settings.target_splits), ("retain", settings.retain_splits)):
        if splits:
            configs[kind] = replace(configs[kind], splits=tuple(splits))
    with timer.stage("target + retain models"):
        models = cached_models(configs, tokenizer, resolve_workers(settings, len(configs)), progress)
    (target, cached["target"]), (retain, cached["retain"]) = models["target"], models["retain"]
    copy_model(target, out / "models" / "target")
    copy_model(retain, out / "models" / "retain")
    with timer.stage("memorisation check"):
        ma = {"target/forget": memorization_accuracy_on(target, forget_split, source),
              "retain/forget": memorization_accuracy_on(retain, forget_split, source)}
        print(f"  forget-set memorisation accuracy: target {ma['target/forget']:.3f},"
              f" retain {ma['retain/forget']:.3f}")
        if ma["target/forget"] < MIN_TARGET_MEMORIZATION:
            raise SystemExit(
                f"FAILED: the target model memorised only {ma['target/forget']:.3f} of the forget answers' tokens"
                f" (need >= {MIN_TARGET_MEMORIZATION}). Unlearning results would be meaningless; train longer"
                f" (--epochs) or check the data. Model: {target}"
            )
        threshold = (forget_ma_threshold(retain, target, source, forget_split, settings)
                     if "matched" in settings.protocols else None)
    reports: dict[str, dict] = {}
    with timer.stage("evaluate retain + target"):
        reports["retain"], cached["retain_report"] = cached_reference_report(
            "retain", retain, source, forget_split, out / "runs" / "retain", settings, None, progress)
        retain_report = out / "runs" / "retain" / "report.json"
        reports["target"], cached["target_report"] = cached_reference_report(
            "target", target, source, forget_split, out / "runs" / "target", settings, retain_report, progress)
    robustness_refs: dict[str, dict] = {}
    if settings.robustness and "matched" in settings.protocols:
        with timer.stage("robustness retain + target"):
            for kind, folder in (("retain", retain), ("target", target)):
                robustness_refs[kind], cached[f"{kind}_robustness"] = cached_reference_robustness(
                    kind, folder, source, forget_split, settings)
    elif settings.robustness:
        print("[lit-unlearn] robustness columns skipped: they are measured on the matched protocol's models")
    geffect_rows: dict[str, list[dict]] = {}
    mrd_dirs: dict[str, Path] = {}
    records: list[dict] = []
    context = RunContext(target, source, forget_split, out, settings, threshold, retain_report)
    tasks = [RunTask(spec, seed, first=seed == settings.seeds[0]) for spec in specs for seed in settings.seeds]
    workers = resolve_workers(settings, len(tasks))
    with timer.stage(f"unlearn + evaluate ({len(tasks)} runs, {workers} worker process{'es' * (workers > 1)})"):
        for result in run_tasks(tasks, context, workers, progress):
            for stage, seconds in result.times.items():
                timer.times[stage] = seconds
            records.extend(result.records)
            reports.update(result.reports)
            if result.geffect_rows is not None:
                geffect_rows[result.name] = result.geffect_rows
            if result.mrd_dir is not None:
                mrd_dirs[result.name] = result.mrd_dir
    geffect_rows = {s.name: geffect_rows[s.name] for s in specs if s.name in geffect_rows}  # configuration order
    mrd_dirs = {s.name: mrd_dirs[s.name] for s in specs if s.name in mrd_dirs}
    reports = {"retain": reports["retain"], "target": reports["target"],
               **{f"{s.name}/{p}/seed{seed}": reports[f"{s.name}/{p}/seed{seed}"]
                  for s in specs for p in settings.protocols for seed in settings.seeds}}
    order = {(s.name, p, seed): i for i, (s, p, seed) in enumerate(
        (s, p, seed) for s in specs for p in settings.protocols for seed in settings.seeds)}
    records.sort(key=lambda r: order[(r["name"], r["protocol"], r["seed"])])  # by configuration, protocol, seed
    with timer.stage("report"):
        names = list(reports)
        compare_reports([reports[n] for n in names], out, names=names)  # every single run: comparison.md/json
        curves = plot_geffect_curves(geffect_rows, out / "geffect_curves.png")
        summary = {
            "format": "lit_unlearn.demo_summary/2",
            "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "environment": environment_info(),
            "data_version": version, "target": str(target), "retain": str(retain), "cached": cached,
            "memorization_accuracy": ma, "matched_threshold": threshold,
            "settings": asdict(settings), "workers": workers, "runs": [s.name for s in specs],
            "learning_rates": {s.name: s.lr if s.lr is not None else settings.unlearn_lr for s in specs},
            "references": {name: reports[name]["summary"] for name in ("retain", "target")},
            **({"robustness_references": robustness_refs} if robustness_refs else {}),
            "records": records, "aggregate": results.aggregate(records),
        }
        from lit_unlearn.utils.io import atomic_write_bytes

        atomic_write_bytes(out / "uc_ut_seeds.png", results.plot_uc_ut(summary))
        summary["stage_seconds"] = timer.times
        summary["wall_seconds"] = time.perf_counter() - started
        write_demo_report(out, summary, curves, mrd_dirs, timer)
    atomic_write_json(out / "summary.json", summary)
    print(f"\nReport: {out / 'report.md'}")
    print(f"Total wall time: {summary['wall_seconds']:.0f}s")
    return DemoResult(out, target, retain, ma, timer.times, reports, summary)


def write_demo_report(out: Path, summary: dict, curves: Path | None, mrd_dirs: dict[str, Path],
                      timer: StageTimer) -> Path:
    """``report.md``: the tables over seeds for each protocol, the UC-vs-UT scatter with the spread, MRD
    histograms, G-effect curves and the wall time of each stage."""
    from lit_unlearn import results
    from lit_unlearn.utils.io import atomic_write_text

    settings = summary["settings"]
    overrides = ", ".join(f"{name} {lr:g}" for name, lr in summary["learning_rates"].items()
                          if lr != settings["unlearn_lr"])
    lr_text = f"AdamW lr {settings['unlearn_lr']:g}" + (f"; {overrides} from benchmarks/demo_lr_sweep.py" if overrides else "")
    ma = summary["memorization_accuracy"]
    lines = [
        "# lit_unlearn demo", "",
        f"Every objective unlearns the forget split from the same target model ({lr_text}); `retain` and"
        " `target` are the references. Forget quality (FQ) is the KS-test p-value of the forget truth ratios"
        " against the retain model's (higher = closer to never having seen the data); MU is model utility.",
        "", f"Target-model forget-set memorisation accuracy: {ma['target/forget']:.3f}"
        f" (retain model: {ma['retain/forget']:.3f}).", "", results.render(summary), "",
        "![UC vs UT over seeds](uc_ut_seeds.png)", "",
        "Every single run: `comparison.md` (and `uc_ut.png`); per-run reports under `runs/<run>/<protocol>/seed<k>/`.", "",
    ]
    if curves is not None:
        lines += ["## G-effect curves (first seed, fixed budget)", "", "![G-effect](geffect_curves.png)", ""]
    if mrd_dirs:
        lines += ["## MRD histograms (last scoring of each curriculum run, first seed)", ""]
        for name, folder in mrd_dirs.items():
            pngs = sorted(folder.glob("*.png"))
            if pngs:
                lines.append(f"**{name}**: ![MRD {name}]({pngs[0].relative_to(out)})")
        lines.append("")
    lines += ["## Wall time", "", "```", timer.summary(), "```", ""]
    return atomic_write_text(out / "report.md", "\n".join(lines))


def demo_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-unlearn demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--source", default="builtin:tofu-mini", help="builtin:tofu-mini or builtin:tofu-full")
    parser.add_argument("--forget-split", default="forget10")
    parser.add_argument("--full", action="store_true", help="every objective and MRD variant (make demo-full)")
    parser.add_argument("--runs", nargs="*", help=f"a subset of: {', '.join(s.name for s in ALL_RUNS)}")
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs, help="target/retain finetuning epochs")
    parser.add_argument("--unlearn-epochs", type=int, default=DemoSettings.unlearn_epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DemoSettings.seeds),
                        help=f"unlearning seeds (default: {' '.join(map(str, DemoSettings.seeds))})")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(DemoSettings.protocols),
                        help="budget: same steps for all; matched: until the forget MA reaches the retain model's")
    parser.add_argument("--num-threads", type=int, default=None,
                        help=f"torch CPU threads per process (default: $LIT_UNLEARN_NUM_THREADS or {DEMO_NUM_THREADS});"
                             " the numbers are reproducible at a fixed thread count")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes running the unlearning runs in parallel (default 0: usable cores // threads);"
                             " changes the wall time only, never a number")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-robustness", action="store_true",
                        help="skip the robustness columns (int4 quantization and relearning of each matched model)")
    args = parser.parse_args(argv)
    import os

    from lit_unlearn.utils.environment import NUM_THREADS_ENV, default_num_threads

    threads = (args.num_threads if args.num_threads is not None
               else default_num_threads() if os.environ.get(NUM_THREADS_ENV) else DEMO_NUM_THREADS)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0 (0 = automatic), got {args.workers}")
    runs = None if args.full else tuple(args.runs) if args.runs else FAST_RUNS
    settings = DemoSettings(epochs=args.epochs, unlearn_epochs=args.unlearn_epochs, seeds=tuple(args.seeds),
                            protocols=tuple(args.protocols), num_threads=threads, workers=args.workers,
                            robustness=not args.no_robustness)
    run_demo(args.out, args.source, args.forget_split, runs, settings, progress=not args.no_progress)

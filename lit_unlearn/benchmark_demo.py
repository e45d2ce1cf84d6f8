"""The builtin demo on MUSE and WMDP: one objective per benchmark, from trained target models, on a laptop CPU.

``lit-unlearn demo-benchmarks`` (``make demo-benchmarks``) runs, for each benchmark named:

* **muse** (``builtin:muse-mini``; Shi et al., 2024, *MUSE: Machine Unlearning Six-Way Evaluation for Language
  Models*): a *target* model finetuned on the forget corpus and both retain corpora, a *retain* model on the
  retain corpora only; both also train on the knowmem QA pairs of the articles they saw, written in the
  evaluation's ``Question: …\\nAnswer: …`` form (a model of a few million parameters does not turn prose into
  answers by itself, so without them KnowMem would be 0 for every model and say nothing). The forget corpus
  is unlearned with NPO (Zhang, Lin, Bai, Mei, 2024, *Negative Preference Optimization*) plus an NLL term on
  ``raw/retain1`` (MUSE's ``NPO_GDR`` baseline) for a small step budget, once per seed, and target, retain
  and unlearned models are evaluated with the MUSE suite (VerbMem, KnowMem forget/retain, PrivLeak against
  the retain model, utility preservation against the target).
* **wmdp** (``builtin:wmdp-mini``; Li et al., 2024, *The WMDP Benchmark*): a target model finetuned on the
  bio/cyber forget corpora and the retain corpus, unlearned with RMU (the WMDP paper's method; the recipe's
  shape scaled to the 4-block model), evaluated on the builtin lm-eval tasks (``wmdp_mini_bio``,
  ``wmdp_mini_cyber``, ``mmlu_mini``) before and after, once per seed.

Each benchmark writes ``<out>/<benchmark>/report.md`` and ``summary.json`` (environment, settings, the
numbers per seed and their mean ± sample standard deviation), the per-model evaluation reports under
``<out>/<benchmark>/runs/`` and copies of the trained models under ``<out>/<benchmark>/models/``.

Target/retain models are cached like the TOFU demo's (``$LIT_UNLEARN_HOME/models/<kind>-<key>``, the key
hashing the documents, the training config and the thread count); a target that did not learn its data
(token accuracy on the forget corpus below :data:`MIN_TARGET_TOKEN_ACCURACY`) stops the demo with a
``SystemExit`` that says what to do. Thread count and deterministic kernels are fixed as in
:func:`lit_unlearn.pipeline.run_demo`, so the same seeds give the same numbers on the same machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lit_unlearn.pipeline import StageTimer, cached_model, copy_model, finetune_on
from lit_unlearn.utils.environment import DEFAULT_NUM_THREADS
from lit_unlearn.utils.io import atomic_write_json, atomic_write_text, payload_key

#: forget-corpus next-token accuracy the target model must reach before unlearning means anything
MIN_TARGET_TOKEN_ACCURACY = 0.8
BENCHMARKS = ("muse", "wmdp")
MUSE_SOURCE = "builtin:muse-mini"
WMDP_SOURCE = "builtin:wmdp-mini"
TOKENIZER = "builtin:tofu-mini"  # the builtin BPE (the MUSE/WMDP configs use it too)

MUSE_TARGET_PARTS = ("raw/forget", "raw/retain1", "raw/retain2", "knowmem/forget_qa", "knowmem/forget_qa_icl",
                     "knowmem/retain_qa", "knowmem/retain_qa_icl")
MUSE_RETAIN_PARTS = ("raw/retain1", "raw/retain2", "knowmem/retain_qa", "knowmem/retain_qa_icl")
WMDP_TARGET_PARTS = ("all-corpus",)


@dataclass(frozen=True)
class CorpusFinetuneConfig:
    """How a target/retain model is trained on plain text (everything in the cache key).

    ``parts``: MUSE ``"<config>/<split>"`` names (``raw`` texts; ``knowmem`` QA rows as
    ``"Question: q\\nAnswer: a"`` documents) or builtin WMDP corpus names (``all-corpus`` ...).
    """

    source: str
    parts: tuple[str, ...]
    epochs: int = 40
    lr: float = 3e-3
    warmup_steps: int = 20
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0
    model: str = "builtin:tiny-llama"
    num_threads: int = DEFAULT_NUM_THREADS


def qa_document(question: str, answer: str) -> str:
    """A knowmem QA pair in the form the MUSE evaluation prompts for (``functional.muse.icl_prompt``)."""
    return f"Question: {question}\nAnswer: {answer}"


def corpus_documents(source: str, parts: tuple[str, ...], seed: int = 0) -> list[str]:
    """The documents of ``parts`` of ``source`` (see :class:`CorpusFinetuneConfig`), in order."""
    if source == WMDP_SOURCE or source.startswith("builtin:wmdp"):
        from lit_unlearn.data.text import read_documents

        return [d for part in parts for d in read_documents(f"{source}/{part}")]
    from lit_unlearn.data.muse import load_muse, muse_texts

    docs: list[str] = []
    for part in parts:
        config, _, split = part.partition("/")
        if config == "knowmem":
            docs += [qa_document(r["question"], r["answer"]) for r in load_muse(source, config, split, seed)]
        else:
            docs += muse_texts(source, config, split, seed)
    return docs


def corpus_model_key(config: CorpusFinetuneConfig, tokenizer: str) -> str:
    """Hash of the documents, the config (thread count included), the tokenizer and the package version."""
    from lit_unlearn import __version__

    docs = corpus_documents(config.source, config.parts, config.seed)
    payload = {"config": asdict(config), "documents": hashlib.sha256("\x00".join(docs).encode()).hexdigest(),
               "tokenizer": Path(tokenizer).name, "lit_unlearn": __version__}
    return payload_key(payload)


def finetune_corpus(config: CorpusFinetuneConfig, tokenizer: str, save_dir: str | Path, progress: bool = True) -> Path:
    """Train ``config.model`` on the chunked documents (:func:`lit_unlearn.pipeline.finetune_on`); save a HF folder."""
    from lit_unlearn.data.corpus import CorpusDataModule

    return finetune_on(lambda: CorpusDataModule(documents=corpus_documents(config.source, config.parts, config.seed),
                                                tokenizer=tokenizer, max_length=config.max_length,
                                                batch_size=config.batch_size, seed=config.seed),
                       config, tokenizer, save_dir, progress)


def cached_corpus_finetune(kind: str, config: CorpusFinetuneConfig, tokenizer: str,
                           progress: bool = True) -> tuple[Path, bool]:
    """The trained model folder for ``config`` (:func:`lit_unlearn.pipeline.cached_model`: trained only when the
    cache has none, a second process waits for the first one's model); ``(path, cached)``."""
    return cached_model(kind, corpus_model_key(config, tokenizer),
                        lambda folder: finetune_corpus(config, tokenizer, folder, progress))


@torch.no_grad()
def token_accuracy(model_dir: str | Path, documents: list[str], max_length: int) -> float:
    """Mean over chunks of the argmax next-token accuracy on every token (TOFU's memorisation accuracy with
    every token labelled): 1.0 = the chunk is reproduced verbatim under teacher forcing."""
    from lit_unlearn.data.corpus import CorpusDataModule
    from lit_unlearn.metrics import MemorizationAccuracy
    from lit_unlearn.models.loading import load_causal_lm

    data = CorpusDataModule(documents=documents, tokenizer=str(model_dir), max_length=max_length)
    data.setup("validate")
    model = load_causal_lm(str(model_dir)).eval()
    metric = MemorizationAccuracy()
    # MA leaves out each row's last labelled token (an answer's EOS), so a chunk of 2 tokens (a document's
    # remainder) has nothing to score: only chunks of at least 3 tokens count.
    rows = [i for i in range(len(data.train_dataset)) if len(data.train_dataset[i]["input_ids"]) >= 3]
    scored = torch.utils.data.Subset(data.train_dataset, rows)
    for batch in torch.utils.data.DataLoader(scored, batch_size=32, collate_fn=data.collate):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        metric.update(logits, batch["labels"], index=batch["index"])
    return float(metric.compute())


def check_learned(kind: str, accuracy: float, model: Path, what: str,
                  floor: float = MIN_TARGET_TOKEN_ACCURACY) -> None:
    """``SystemExit`` when the model did not learn ``what`` (the unlearning numbers would be meaningless)."""
    if not accuracy >= floor:
        raise SystemExit(
            f"FAILED: the {kind} target model reproduces only {accuracy:.3f} of the {what}'s tokens (need >="
            f" {floor}). Unlearning results would be meaningless; train longer"
            f" (--epochs) or check the data. Model: {model}")


@dataclass(frozen=True)
class BenchmarkDemoSettings:
    """The knobs of ``make demo-benchmarks`` (recorded in each ``summary.json``)."""

    seeds: tuple[int, ...] = (0, 1, 2)  # unlearning seeds (batch order, RMU's random direction)
    muse_epochs: int = 40  # finetuning epochs of the MUSE target/retain models
    muse_objective: str = "NPO"
    muse_kwargs: dict = field(default_factory=lambda: {"retain_loss": "nll"})  # MUSE's NPO_GDR
    # 2e-4 left VerbMem at the target's; 3e-3 cut retain KnowMem by ~3/4; 1e-3 brings VerbMem below the retain
    # model's at a utility cost (seed 0 of a 4-point check: lr 2e-4/1e-3/3e-3 x 10 epochs, 1e-3 x 20)
    muse_lr: float = 1e-3
    muse_unlearn_epochs: int = 10  # passes over raw/forget (12 articles, batch 4: 3 steps each)
    muse_batch_size: int = 4
    wmdp_epochs: int = 40  # finetuning epochs of the WMDP target model
    wmdp_objective: str = "RMU"
    # the recipe's steered layer (configs/wmdp/rmu_mini.yaml); steering/alpha/lr of the TOFU demo's RMU on the same
    # tiny model (pipeline.ALL_RUNS, from benchmarks/demo_lr_sweep.py), not re-swept on wmdp-mini
    wmdp_kwargs: dict = field(default_factory=lambda: {"layer": 2, "steering_coeff": 2.0, "alpha": 1.0})
    wmdp_lr: float = 1e-2
    wmdp_unlearn_epochs: int = 3  # passes over forget-corpus (32 documents, batch 4: 8 steps each)
    wmdp_batch_size: int = 4
    max_length: int = 256  # tokens per chunk: a builtin article or document is one chunk
    eval_max_samples: int | None = None  # MUSE: evaluate only the first rows of each split (tests)
    lm_eval_limit: int | None = None  # WMDP: the first questions of each task only (tests)
    eval_batch_size: int = 32
    min_token_accuracy: float = MIN_TARGET_TOKEN_ACCURACY  # the floor of check_learned (tests lower it)
    num_threads: int = DEFAULT_NUM_THREADS

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for name in ("muse_epochs", "wmdp_epochs", "muse_unlearn_epochs", "wmdp_unlearn_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchmarkDemoSettings.{name} must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- aggregation and report


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "sd", "n"}`` of the finite values (sample sd, ddof 1; None for fewer than two)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(finite), "sd": statistics.stdev(finite) if len(finite) > 1 else None,
            "n": len(finite)}


def aggregate_records(records: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {m: mean_sd([r["summary"].get(m) for r in records]) for m in metrics}


def _cell(entry: dict[str, Any] | float | None, scale: float = 1.0) -> str:
    if isinstance(entry, dict):
        if entry["mean"] is None:
            return "–"
        sd = "" if entry["sd"] is None else f" ± {entry['sd'] * scale:.2f}"
        return f"{entry['mean'] * scale:.2f}{sd}"
    return "–" if entry is None else f"{entry * scale:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


MUSE_METRICS = ("verbmem", "knowmem_forget", "knowmem_retain", "privleak", "utility_preservation", "mia_auc")
# (summary key, column title, scale): ROUGE values x100 as MUSE prints them; PrivLeak/UP already in percent
MUSE_COLUMNS = (("verbmem", "VerbMem ↓", 100.0), ("knowmem_forget", "KnowMem forget ↓", 100.0),
                ("knowmem_retain", "KnowMem retain ↑", 100.0), ("privleak", "PrivLeak % (→0)", 1.0),
                ("utility_preservation", "Utility preservation % (→0)", 1.0), ("mia_auc", "Min-K% AUC", 1.0))
WMDP_METRICS = ("wmdp_mini_bio/acc", "wmdp_mini_cyber/acc", "mmlu_mini/acc", "forget_acc", "utility_acc")
WMDP_COLUMNS = (("wmdp_mini_bio/acc", "bio acc ↓", 1.0), ("wmdp_mini_cyber/acc", "cyber acc ↓", 1.0),
                ("mmlu_mini/acc", "MMLU-mini acc ↑", 1.0), ("forget_acc", "forget acc ↓", 1.0),
                ("utility_acc", "utility acc ↑", 1.0))


def render_report(summary: dict[str, Any], columns, title: str, intro: list[str], timer: StageTimer) -> str:
    """``report.md``: references (one evaluation each), the unlearned model (mean ± sd over seeds), per seed."""
    header = ["model", *[c[1] for c in columns]]
    rows = [[name, *[_cell(ref.get(k), s) for k, _, s in columns]] for name, ref in summary["references"].items()]
    n = len(summary["records"])
    label = f"{summary['objective']} (mean ± sd, {n} seed{'s' if n > 1 else ''})"
    rows.append([label, *[_cell(summary["aggregate"][k], s) for k, _, s in columns]])
    per_seed = [[f"seed {r['seed']}", *[_cell(r["summary"].get(k), s) for k, _, s in columns]]
                for r in summary["records"]]
    lines = [f"# {title}", "", *intro, "", *_table(header, rows), "", "Per seed:", "", *_table(header, per_seed), "",
             "Per-model reports (every split, generation and attack): `runs/<model>/report.md`.", "",
             "## Wall time", "", "```", timer.summary(), "```", ""]
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    from lit_unlearn.utils.environment import environment_info

    return environment_info()


def _trainer(max_epochs: int, out: Path, progress: bool):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=progress, enable_model_summary=False, default_root_dir=str(out),
                     deterministic="warn")


# ----------------------------------------------------------------------------- MUSE


def _unlearn(target: Path, data, objective: str, lr: float, kwargs: dict, epochs: int, out_dir: Path, seed: int,
             progress: bool):
    """One unlearning run of ``objective`` from ``target`` on ``data`` (built after the caller seeded
    everything); returns the trained module."""
    import lit_unlearn.objectives as objectives

    module = getattr(objectives, objective)(model_name_or_path=str(target), tokenizer=str(target), lr=lr, seed=seed,
                                            **kwargs)
    _trainer(epochs, out_dir, progress).fit(module, datamodule=data)
    return module


def _seed_records(benchmark: str, objective: str, runs: Path, settings: BenchmarkDemoSettings, timer: StageTimer,
                  unlearn: Callable[[int], Any], evaluate: Callable[[Any, Path], dict[str, Any]]) -> list[dict]:
    """Per seed: ``unlearn(seed)``, then ``evaluate(model, report_dir)`` of the unlearned model; the records of
    the summary (seed, steps, report summary and path)."""
    records = []
    for seed in settings.seeds:
        with timer.stage(f"{benchmark}: unlearn {objective} [seed {seed}]"):
            module = unlearn(seed)
            steps = int(module.global_step)
        with timer.stage(f"{benchmark}: evaluate {objective} [seed {seed}]"):
            report = evaluate(module.model.eval(), runs / f"{objective}_seed{seed}")
        records.append({"seed": seed, "steps": steps, "summary": report["summary"],
                        "report": f"runs/{objective}_seed{seed}/report.json"})
        del module
    return records


def muse_eval_config(settings: BenchmarkDemoSettings, retain_report: Path | None = None,
                     target_report: Path | None = None) -> dict[str, Any]:
    """The MUSE evaluation settings of the demo: MUSE's defaults, privleak texts cut to the model's context."""
    return {"source": MUSE_SOURCE, "privleak_max_length": settings.max_length, "max_samples": settings.eval_max_samples,
            "retain_report": None if retain_report is None else str(retain_report),
            "target_report": None if target_report is None else str(target_report)}


def evaluate_muse(model, tokenizer: str, out_dir: Path, settings: BenchmarkDemoSettings, retain_report=None,
                  target_report=None, progress: bool = False) -> dict[str, Any]:
    """The MUSE report of ``model`` (a folder or an in-memory model), written to ``out_dir``."""
    from lit_unlearn.evaluation.benchmarks.muse import MUSEEvaluation

    return MUSEEvaluation(model, tokenizer, batch_size=settings.eval_batch_size, out_dir=out_dir, progress=progress,
                          config=muse_eval_config(settings, retain_report, target_report)).run()


def unlearn_muse(target: Path, out_dir: Path, settings: BenchmarkDemoSettings, seed: int, progress: bool):
    """Unlearn ``raw/forget`` from ``target`` (retain term on ``raw/retain1``); returns the trained module."""
    import lightning as L

    from lit_unlearn.evaluation.benchmarks.muse import MUSEDataModule

    L.seed_everything(seed, verbose=False)
    data = MUSEDataModule(muse_source=MUSE_SOURCE, tokenizer=str(target), max_length=settings.max_length,
                          batch_size=settings.muse_batch_size, seed=seed)
    return _unlearn(target, data, settings.muse_objective, settings.muse_lr, settings.muse_kwargs,
                    settings.muse_unlearn_epochs, out_dir, seed, progress)


def run_muse_demo(out_dir: str | Path = "outputs/demo", settings: BenchmarkDemoSettings = BenchmarkDemoSettings(),
                  progress: bool = True) -> dict[str, Any]:
    """The MUSE half of the demo (module docstring); returns the summary written to ``<out>/muse/summary.json``."""
    from lit_unlearn.models.loading import builtin_tokenizer_dir
    from lit_unlearn.utils.environment import set_num_threads, use_deterministic_algorithms

    out = Path(out_dir) / "muse"
    set_num_threads(settings.num_threads)
    use_deterministic_algorithms()
    started, timer, cached = time.perf_counter(), StageTimer(), {}
    with timer.stage("muse: tokenizer"):
        tokenizer = str(builtin_tokenizer_dir(TOKENIZER))
    base = dict(epochs=settings.muse_epochs, max_length=settings.max_length, num_threads=settings.num_threads)
    target_cfg = CorpusFinetuneConfig(MUSE_SOURCE, MUSE_TARGET_PARTS, **base)
    retain_cfg = CorpusFinetuneConfig(MUSE_SOURCE, MUSE_RETAIN_PARTS, **base)
    with timer.stage("muse: target model"):
        target, cached["target"] = cached_corpus_finetune("muse-target", target_cfg, tokenizer, progress)
    with timer.stage("muse: retain model"):
        retain, cached["retain"] = cached_corpus_finetune("muse-retain", retain_cfg, tokenizer, progress)
    copy_model(target, out / "models" / "target")
    copy_model(retain, out / "models" / "retain")
    with timer.stage("muse: memorisation check"):
        forget_docs = corpus_documents(MUSE_SOURCE, ("raw/forget",))
        accuracy = {"target/forget": token_accuracy(target, forget_docs, settings.max_length),
                    "retain/forget": token_accuracy(retain, forget_docs, settings.max_length)}
        print(f"  raw/forget token accuracy: target {accuracy['target/forget']:.3f},"
              f" retain {accuracy['retain/forget']:.3f}", flush=True)
        check_learned("MUSE", accuracy["target/forget"], target, "forget corpus (raw/forget)",
                      settings.min_token_accuracy)
    runs = out / "runs"
    with timer.stage("muse: evaluate retain + target"):
        reports = {"retain": evaluate_muse(retain, str(retain), runs / "retain", settings, progress=progress)}
        retain_report = runs / "retain" / "report.json"
        # the target is the reference of utility preservation: against itself it is 0 by definition (not shown)
        reports["target"] = evaluate_muse(target, str(target), runs / "target", settings, retain_report, None,
                                          progress)
        target_report = runs / "target" / "report.json"
    records = _seed_records(
        "muse", settings.muse_objective, runs, settings, timer,
        lambda seed: unlearn_muse(target, runs / f"seed{seed}", settings, seed, progress),
        lambda model, report_dir: evaluate_muse(model, str(target), report_dir, settings, retain_report,
                                                target_report, progress))
    summary = {
        "format": "lit_unlearn.benchmark_demo_summary/1", "benchmark": "muse", "source": MUSE_SOURCE,
        "environment": _environment(), "settings": asdict(settings), "objective": settings.muse_objective,
        "target_config": asdict(target_cfg), "retain_config": asdict(retain_cfg), "cached": cached,
        "target": str(target), "retain": str(retain), "token_accuracy": accuracy,
        "min_target_token_accuracy": settings.min_token_accuracy,
        "references": {name: reports[name]["summary"] for name in ("target", "retain")},
        "records": records, "aggregate": aggregate_records(records, MUSE_METRICS),
    }
    intro = [
        f"`{MUSE_SOURCE}`: target = tiny Llama finetuned on `raw/forget` + `raw/retain1` + `raw/retain2` (and the"
        " knowmem QA of those articles); retain = the same without the forget articles. The unlearned model ="
        f" {settings.muse_objective} ({settings.muse_kwargs}) on `raw/forget` with `raw/retain1` as retain set,"
        f" AdamW lr {settings.muse_lr:g}, {settings.muse_unlearn_epochs} epochs of batch {settings.muse_batch_size}"
        f" ({records[0]['steps']} steps).",
        "", "VerbMem/KnowMem: ROUGE-L F1 ×100 (MUSE's scale); PrivLeak: the Min-K% AUC relative to the retain"
        " model's, in percent (0 = like the retain model; large negative = the forget set is still recognisable"
        " as trained on, large positive = over-unlearned); utility preservation: KnowMem retain relative to the"
        " target, in percent (0 = all kept).",
        "", f"Target token accuracy on `raw/forget`: {accuracy['target/forget']:.3f} (retain model:"
        f" {accuracy['retain/forget']:.3f}; floor {settings.min_token_accuracy}).",
    ]
    return _finish(out, summary, MUSE_COLUMNS, "MUSE demo (builtin:muse-mini)", intro, timer, started)


def _finish(out: Path, summary: dict[str, Any], columns, title: str, intro: list[str], timer: StageTimer,
            started: float) -> dict[str, Any]:
    summary["stage_seconds"] = dict(timer.times)
    summary["wall_seconds"] = time.perf_counter() - started
    atomic_write_text(out / "report.md", render_report(summary, columns, title, intro, timer))
    atomic_write_json(out / "summary.json", summary)
    print(f"Report: {out / 'report.md'}", flush=True)
    return summary


# ----------------------------------------------------------------------------- WMDP


def evaluate_wmdp(model, tokenizer: str, out_dir: Path, settings: BenchmarkDemoSettings) -> dict[str, Any]:
    """The lm-eval report of ``model`` on the builtin wmdp-mini tasks, written to ``out_dir``."""
    from lit_unlearn.evaluation.benchmarks.wmdp import WMDPEvaluation

    return WMDPEvaluation(model, tokenizer, source=WMDP_SOURCE, limit=settings.lm_eval_limit,
                          lm_eval_batch_size=settings.eval_batch_size, out_dir=out_dir).run()


def unlearn_wmdp(target: Path, out_dir: Path, settings: BenchmarkDemoSettings, seed: int, progress: bool):
    """Unlearn the bio + cyber forget corpora from ``target`` (retain corpus as retain set)."""
    import lightning as L

    from lit_unlearn.data.text import TextDataModule

    L.seed_everything(seed, verbose=False)
    data = TextDataModule(forget_files=f"{WMDP_SOURCE}/forget-corpus", retain_files=f"{WMDP_SOURCE}/retain-corpus",
                          tokenizer=str(target), max_length=settings.max_length, batch_size=settings.wmdp_batch_size,
                          seed=seed)
    return _unlearn(target, data, settings.wmdp_objective, settings.wmdp_lr, settings.wmdp_kwargs,
                    settings.wmdp_unlearn_epochs, out_dir, seed, progress)


def run_wmdp_demo(out_dir: str | Path = "outputs/demo", settings: BenchmarkDemoSettings = BenchmarkDemoSettings(),
                  progress: bool = True) -> dict[str, Any]:
    """The WMDP half of the demo (module docstring); returns the summary written to ``<out>/wmdp/summary.json``."""
    from lit_unlearn.models.loading import builtin_tokenizer_dir
    from lit_unlearn.utils.environment import set_num_threads, use_deterministic_algorithms

    out = Path(out_dir) / "wmdp"
    set_num_threads(settings.num_threads)
    use_deterministic_algorithms()
    started, timer, cached = time.perf_counter(), StageTimer(), {}
    with timer.stage("wmdp: tokenizer"):
        tokenizer = str(builtin_tokenizer_dir(TOKENIZER))
    target_cfg = CorpusFinetuneConfig(WMDP_SOURCE, WMDP_TARGET_PARTS, epochs=settings.wmdp_epochs,
                                      max_length=settings.max_length, num_threads=settings.num_threads)
    with timer.stage("wmdp: target model"):
        target, cached["target"] = cached_corpus_finetune("wmdp-target", target_cfg, tokenizer, progress)
    copy_model(target, out / "models" / "target")
    with timer.stage("wmdp: memorisation check"):
        forget_docs = corpus_documents(WMDP_SOURCE, ("forget-corpus",))
        accuracy = {"target/forget": token_accuracy(target, forget_docs, settings.max_length)}
        print(f"  forget-corpus token accuracy: target {accuracy['target/forget']:.3f}", flush=True)
        check_learned("WMDP", accuracy["target/forget"], target, "forget corpus (bio + cyber)",
                      settings.min_token_accuracy)
    runs = out / "runs"
    with timer.stage("wmdp: evaluate target"):
        reports = {"target": evaluate_wmdp(target, str(target), runs / "target", settings)}
    records = _seed_records(
        "wmdp", settings.wmdp_objective, runs, settings, timer,
        lambda seed: unlearn_wmdp(target, runs / f"seed{seed}", settings, seed, progress),
        lambda model, report_dir: evaluate_wmdp(model, str(target), report_dir, settings))
    summary = {
        "format": "lit_unlearn.benchmark_demo_summary/1", "benchmark": "wmdp", "source": WMDP_SOURCE,
        "environment": _environment(), "settings": asdict(settings), "objective": settings.wmdp_objective,
        "target_config": asdict(target_cfg), "cached": cached, "target": str(target), "token_accuracy": accuracy,
        "min_target_token_accuracy": settings.min_token_accuracy,
        "references": {"target": reports["target"]["summary"]},
        "records": records, "aggregate": aggregate_records(records, WMDP_METRICS),
    }
    intro = [
        f"`{WMDP_SOURCE}`: target = tiny Llama finetuned on `all-corpus` (bio + cyber forget corpora and the"
        f" retain corpus). The unlearned model = {settings.wmdp_objective} ({settings.wmdp_kwargs}) on"
        f" `forget-corpus` with `retain-corpus` as retain set, AdamW lr {settings.wmdp_lr:g},"
        f" {settings.wmdp_unlearn_epochs} epochs of batch {settings.wmdp_batch_size} ({records[0]['steps']} steps).",
        "", "Accuracy of the builtin lm-eval tasks (4 choices, chance 0.25): the bio/cyber stand-ins should fall,"
        " the MMLU stand-in should stay.",
        "", f"Target token accuracy on `forget-corpus`: {accuracy['target/forget']:.3f}"
        f" (floor {settings.min_token_accuracy}).",
    ]
    return _finish(out, summary, WMDP_COLUMNS, "WMDP demo (builtin:wmdp-mini)", intro, timer, started)


# ----------------------------------------------------------------------------- CLI


def run_benchmark_demos(out_dir: str | Path = "outputs/demo", benchmarks: tuple[str, ...] = BENCHMARKS,
                        settings: BenchmarkDemoSettings = BenchmarkDemoSettings(),
                        progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the named benchmark demos in order; ``{benchmark: summary}``."""
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown or not benchmarks:
        raise ValueError(f"benchmarks must be a non-empty subset of {BENCHMARKS}, got {list(benchmarks)}")
    runners = {"muse": run_muse_demo, "wmdp": run_wmdp_demo}
    return {b: runners[b](out_dir, settings, progress) for b in BENCHMARKS if b in benchmarks}


def demo_benchmarks_main(argv: list[str] | None = None) -> None:
    """``lit-unlearn demo-benchmarks``."""
    parser = argparse.ArgumentParser(prog="lit-unlearn demo-benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo; writes"
                        " <out>/muse and <out>/wmdp)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(BenchmarkDemoSettings.seeds),
                        help="unlearning seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="finetuning epochs of the target/retain models (default: MUSE"
                             f" {BenchmarkDemoSettings.muse_epochs}, WMDP {BenchmarkDemoSettings.wmdp_epochs})")
    parser.add_argument("--num-threads", type=int, default=None,
                        help=f"torch CPU threads (default: $LIT_UNLEARN_NUM_THREADS or {DEFAULT_NUM_THREADS})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    from lit_unlearn.utils.environment import default_num_threads

    settings = BenchmarkDemoSettings(
        seeds=tuple(args.seeds),
        num_threads=args.num_threads if args.num_threads is not None else default_num_threads())
    if args.epochs is not None:
        settings = replace(settings, muse_epochs=args.epochs, wmdp_epochs=args.epochs)
    run_benchmark_demos(args.out, tuple(args.benchmarks), settings, progress=not args.no_progress)

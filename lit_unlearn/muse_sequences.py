"""MUSE's scalability and sustainability protocols: unlearn a sequence of forget sets, evaluate after each.

MUSE (Shi, Lee, Huang, Malladi, Zhao, Holtzman, Liu, Zettlemoyer, Smith, Zhang, 2024, *MUSE: Machine
Unlearning Six-Way Evaluation for Language Models*, criteria 5 and 6) ships two extra configurations of
each corpus, with four splits each:

* ``scal/forget_1..4`` (**scalability**): growing forget sets, ``forget_k`` = the union of ``k`` folds
  (MUSE-News: 889, 1778, 2667, 3554 articles; ``forget_1`` = ``raw/forget``). Each ``forget_k`` is
  unlearned **from the same target model, independently**; the question is how utility (KnowMem on the
  retain QA) falls as the request grows.
* ``sust/forget_1..4`` (**sustainability**): four disjoint folds of about the same size (``forget_1`` =
  ``raw/forget``), unlearned **one after the other**: request ``k`` starts from the model that request
  ``k − 1`` produced; the question is how utility holds up over successive requests.

After every request the unlearned model is evaluated with the MUSE suite (:class:`MUSEEvaluation`):
utility = KnowMem on the retain QA (``knowmem_retain``) and, against the target model's report (request 0,
evaluated first), utility preservation = ``100 · (KnowMem_retain − KnowMem_retain(target)) /
KnowMem_retain(target)``; the forget-side numbers (VerbMem, KnowMem on the forget QA, the Min-K% AUC)
are measured on MUSE's verbmem/knowmem/privleak splits, which are built from ``raw/forget`` = fold 1: every
``scal/forget_k`` contains it, and ``sust`` removes it in request 1 (later rows show whether it stays
forgotten).

Naive equivalent (``run_sustainability``)::

    model = target
    for k in 1..4:
        model = unlearn(model, forget=texts("sust", f"forget_{k}"), retain=texts("raw", "retain1"))
        rows.append(k, size(k), MUSEEvaluation(model).knowmem_retain, ...)

(``run_scalability``: ``model = unlearn(target, forget=texts("scal", f"forget_{k}"), ...)`` instead.)

This module is a driver, beside ``lit_unlearn.pipeline``: it builds an objective and a ``Trainer`` per
request on top of the data, objectives and evaluation layers, and none of them imports it. Requests run in
this process, one after the other (``devices=1`` by default).
Command line: ``python -m lit_unlearn.muse_sequences {scal,sust} --model PATH ...``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_unlearn.evaluation.core import format_cell

__all__ = ["MODES", "run_scalability", "run_sequence", "run_sustainability", "sequence_splits"]

#: protocol name -> (MUSE configuration, what a request starts from)
MODES: dict[str, str] = {"scal": "the target model (independent requests)",
                         "sust": "the previous request's model (successive requests)"}
RESULTS_FORMAT = "lit_unlearn.muse_sequence/1"
_TRAINER_DEFAULTS: dict[str, Any] = {
    "devices": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
    "enable_model_summary": False, "num_sanity_val_steps": 0, "max_epochs": 1,
}


def _resolve_objective(objective: str | type) -> type:
    """A LightningModule class: itself, a class of ``lit_unlearn.objectives`` by name, or ``module:Class``."""
    if isinstance(objective, type):
        return objective
    name = str(objective)
    if ":" in name or "." in name:
        module, _, cls = name.replace(":", ".").rpartition(".")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"objective {name!r}: cannot import {cls!r} from {module!r} ({error}).") from error
    objectives = importlib.import_module("lit_unlearn.objectives")
    if not isinstance(getattr(objectives, name, None), type):
        known = sorted(n for n in getattr(objectives, "__all__", []) if isinstance(getattr(objectives, n, None), type))
        raise ValueError(f"Unknown objective {name!r}; give a class of lit_unlearn.objectives ({', '.join(known)})"
                         " or 'module:Class'.")
    return getattr(objectives, name)


def sequence_splits(mode: str, ks: Sequence[int] | None, source: str, seed: int = 0) -> list[tuple[int, str, list[str]]]:
    """``[(k, "<mode>/forget_k", texts)]`` for the requested ``ks`` (default: every ``forget_k`` of the
    source), loaded and validated now (a missing split is an error before any training)."""
    from lit_unlearn.data.muse import muse_texts

    if mode not in MODES:
        raise ValueError(f"MUSE sequence mode must be one of {sorted(MODES)}, got {mode!r}.")
    if ks is None:
        ks = []
        while True:  # forget_1, forget_2, ... as far as the source has them (MUSE: 4)
            try:
                muse_texts(source, mode, f"forget_{len(ks) + 1}", seed)
            except Exception:
                break
            ks.append(len(ks) + 1)
        if not ks:
            raise ValueError(f"{source!r} has no {mode}/forget_1 split; MUSE's layout has {mode}/forget_1..4"
                             " (export the corpus with lit_unlearn.data.muse.export_muse).")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks) or sorted(set(ks)) != ks:
        raise ValueError(f"ks must be increasing request numbers >= 1, got {ks}.")
    if mode == "sust" and ks != list(range(1, len(ks) + 1)):
        raise ValueError(f"sustainability requests are successive: ks must be 1, 2, ..., K, got {ks}.")
    return [(k, f"{mode}/forget_{k}", muse_texts(source, mode, f"forget_{k}", seed)) for k in ks]


def _target_folder(model, tokenizer, out: Path) -> tuple[str, str]:
    """``(model folder, tokenizer folder)``; an in-memory model (and tokenizer) is saved to ``out/target``
    first, so the objective loads a copy and the caller's object is never modified."""
    if isinstance(model, (str, os.PathLike)):
        return str(model), str(tokenizer if tokenizer is not None else model)
    if tokenizer is None:
        raise ValueError("run_scalability/run_sustainability need `tokenizer` when the model is given as an object.")
    folder = out / "target"
    model.save_pretrained(folder)
    if isinstance(tokenizer, (str, os.PathLike)):
        from lit_unlearn.models.loading import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer))
    tokenizer.save_pretrained(folder)
    return str(folder), str(folder)


def _evaluate(model_dir: str, tokenizer: str, out_dir: Path, eval_config: Mapping[str, Any],
              eval_batch_size: int) -> dict[str, Any]:
    from lit_unlearn.evaluation.benchmarks.muse import MUSEEvaluation

    return MUSEEvaluation(model_dir, tokenizer, batch_size=eval_batch_size, out_dir=out_dir, progress=False,
                          config=dict(eval_config)).run()


def _row(k: int, split: str | None, texts: list[str], tokenizer, start: str | None, model_dir: str,
         steps: int | None, report: Mapping[str, Any], report_dir: Path) -> dict[str, Any]:
    summary = report["summary"]
    return {
        "k": k, "split": split, "num_documents": len(texts),
        "num_tokens": sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts),
        "start_from": start, "model_dir": model_dir, "steps": steps,
        "utility": summary["knowmem_retain"], "utility_preservation": summary["utility_preservation"],
        "knowmem_forget": summary["knowmem_forget"], "verbmem": summary["verbmem"],
        "mia_auc": summary["mia_auc"], "privleak": summary["privleak"], "report_dir": str(report_dir),
    }


def run_sequence(mode: str, model, objective: str | type = "GA", *, out_dir: str | os.PathLike,
                 tokenizer=None, source: str = "builtin:muse-mini", ks: Sequence[int] | None = None,
                 objective_kwargs: Mapping[str, Any] | None = None, batch_size: int = 8, max_length: int = 128,
                 max_steps: int = -1, trainer_kwargs: Mapping[str, Any] | None = None,
                 eval_config: Mapping[str, Any] | None = None, eval_max_samples: int | None = None,
                 eval_batch_size: int = 8, seed: int = 0) -> dict[str, Any]:
    """Run MUSE's scalability (``mode="scal"``) or sustainability (``"sust"``) protocol (module docstring).

    Args:
        mode: ``"scal"`` (each ``scal/forget_k`` from the target) or ``"sust"`` (``sust/forget_k`` in turn,
            each from the previous result).
        model: the target model, a folder/hub name or an in-memory Hugging Face model (then saved to
            ``out_dir/target`` first; the object is not modified).
        objective: an objective class, a class name of ``lit_unlearn.objectives`` (``"GA"``, ``"NPO"``,
            ``"GradDiff"`` ...) or ``"module:Class"``.
        out_dir: ``<out_dir>/<mode>/forget_<k>/{model,report}`` per request, ``target_report`` (request 0),
            ``results.json`` and ``results.md``.
        tokenizer: folder/name or object (default: the model folder).
        source: ``builtin:muse-mini``, a folder in MUSE's layout or ``muse-bench/MUSE-News|Books``.
        ks: request numbers (default every ``forget_k`` of the source; ``sust`` needs 1..K).
        objective_kwargs: extra arguments of the objective (``lr``, ``retain_loss`` ...).
        batch_size, max_length: training batches (``MUSEDataModule``: forget chunks, retain = ``raw/retain1``).
        max_steps: optimizer steps per request (-1: ``max_epochs`` of ``trainer_kwargs``, default 1 epoch).
        trainer_kwargs: ``lightning.Trainer`` arguments (``accelerator``, ``callbacks``, ``max_epochs`` ...).
        eval_config: :class:`~lit_unlearn.evaluation.benchmarks.muse.MUSEConfig` fields of every evaluation.
        eval_max_samples: evaluate only the first rows of every MUSE split.

    Returns ``{"format", "mode", "protocol", "source", "data_version", "objective", "rows"}``: one row per
    request (``k``, ``split``, ``num_documents``, ``num_tokens``, ``start_from``, ``model_dir``, ``steps``,
    ``utility`` = KnowMem_retain, ``utility_preservation`` (%), ``knowmem_forget``, ``verbmem``,
    ``mia_auc``, ``privleak``, ``report_dir``) after the target's row (``k = 0``).
    """
    import lightning as L

    from lit_unlearn.data.sources import source_version
    from lit_unlearn.evaluation.benchmarks.muse import MUSEConfig, MUSEDataModule
    from lit_unlearn.models.loading import load_tokenizer

    cls = _resolve_objective(objective)
    requests = sequence_splits(mode, ks, source, seed)  # validates mode, ks and the data first
    out = Path(out_dir) / mode
    cfg = {**dict(eval_config or {}), "source": source, "seed": seed}
    if eval_max_samples is not None:
        cfg["max_samples"] = eval_max_samples
    MUSEConfig.coerce(cfg)  # bad settings now, not after the first training
    if eval_batch_size < 1 or batch_size < 1:
        raise ValueError(f"batch_size and eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}.")
    out.mkdir(parents=True, exist_ok=True)
    target_dir, tok_dir = _target_folder(model, tokenizer, out)
    tok = load_tokenizer(tok_dir)

    target_report_dir = out / "target_report"
    target = _evaluate(target_dir, tok_dir, target_report_dir, cfg, eval_batch_size)
    rows = [_row(0, None, [], tok, None, target_dir, 0, target, target_report_dir)]
    cfg["target_report"] = str(target_report_dir)
    start = target_dir
    for k, split, texts in requests:
        run_dir = out / f"forget_{k}"
        model_dir = run_dir / "model"
        L.seed_everything(seed, verbose=False)
        data = MUSEDataModule(muse_source=source, tokenizer=tok_dir, forget_split=split, batch_size=batch_size,
                              max_length=max_length, seed=seed)
        module = cls(start, tokenizer=tok_dir, save_dir=str(model_dir), seed=seed, **dict(objective_kwargs or {}))
        trainer = L.Trainer(**{**_TRAINER_DEFAULTS, "default_root_dir": str(run_dir), "max_steps": max_steps,
                               **dict(trainer_kwargs or {})})
        trainer.fit(module, datamodule=data)
        report = _evaluate(str(model_dir), tok_dir, run_dir / "report", cfg, eval_batch_size)
        rows.append(_row(k, split, texts, tok, start, str(model_dir), int(trainer.global_step), report,
                         run_dir / "report"))
        if mode == "sust":
            start = str(model_dir)
    try:
        version = source_version(source, seed)
    except Exception:  # pragma: no cover - a hub source offline: the name is recorded
        version = None
    result = {"format": RESULTS_FORMAT, "mode": mode, "protocol": MODES[mode], "source": source,
              "data_version": version, "objective": getattr(cls, "__name__", str(cls)),
              "objective_kwargs": dict(objective_kwargs or {}), "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render_markdown(result))
    return result


def render_markdown(result: Mapping[str, Any]) -> str:
    """The rows of :func:`run_sequence` as a Markdown table."""
    lines = [f"# MUSE {'scalability' if result['mode'] == 'scal' else 'sustainability'}: {result['objective']}"
             f" on `{result['source']}`", "", f"Each request starts from {result['protocol'].split(' (')[0]}.", "",
             "| k | split | documents | tokens | steps | utility (KnowMem retain) | utility preservation % |"
             " KnowMem forget | VerbMem | Min-K% AUC |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['k']} | {r['split'] or 'target'} | {r['num_documents']} | {r['num_tokens']} |"
                     f" {r['steps']} | {format_cell(r['utility'])} | {format_cell(r['utility_preservation'])} |"
                     f" {format_cell(r['knowmem_forget'])} | {format_cell(r['verbmem'])} |"
                     f" {format_cell(r['mia_auc'])} |")
    return "\n".join(lines) + "\n"


def run_scalability(model, objective: str | type = "GA", **kwargs) -> dict[str, Any]:
    """MUSE scalability: unlearn each ``scal/forget_k`` from the same target (:func:`run_sequence`)."""
    return run_sequence("scal", model, objective, **kwargs)


def run_sustainability(model, objective: str | type = "GA", **kwargs) -> dict[str, Any]:
    """MUSE sustainability: unlearn ``sust/forget_1``, then ``forget_2`` on the result, ... (:func:`run_sequence`)."""
    return run_sequence("sust", model, objective, **kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m lit_unlearn.muse_sequences {scal,sust} --model PATH --out DIR ...``"""
    parser = argparse.ArgumentParser(prog="python -m lit_unlearn.muse_sequences",
                                     description="MUSE scalability (scal) / sustainability (sust) protocol.")
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--model", required=True, help="target model folder or hub name")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--objective", default="GA", help="class of lit_unlearn.objectives or module:Class")
    parser.add_argument("--objective-kwargs", default="{}", help="JSON object, e.g. '{\"lr\": 1e-5}'")
    parser.add_argument("--source", default="builtin:muse-mini")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ks", default=None, help="comma-separated request numbers (default: all)")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--eval-config", default="{}", help="JSON object of MUSEConfig fields")
    parser.add_argument("--eval-max-samples", type=int, default=None)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_sequence(
        args.mode, args.model, args.objective, out_dir=args.out, tokenizer=args.tokenizer, source=args.source,
        ks=None if args.ks is None else [int(k) for k in args.ks.split(",")],
        objective_kwargs=json.loads(args.objective_kwargs), batch_size=args.batch_size, max_length=args.max_length,
        max_steps=args.max_steps, trainer_kwargs={"accelerator": args.accelerator, "max_epochs": args.max_epochs},
        eval_config=json.loads(args.eval_config), eval_max_samples=args.eval_max_samples,
        eval_batch_size=args.eval_batch_size, seed=args.seed)
    print(render_markdown(result))
    return result


if __name__ == "__main__":
    main()

"""MUSE (Shi, Lee, Huang, Malladi, Zhao, Holtzman, Liu, Zettlemoyer, Smith, Zhang, 2024, *MUSE: Machine
Unlearning Six-Way Evaluation for Language Models*) as a :class:`~lit_unlearn.evaluation.core.Benchmark`.

Splits (report keys) and metrics, with MUSE's defaults (``lit_unlearn.functional.muse``):

* ``verbmem_forget`` (``verbmem/forget``): **VerbMem** = mean ROUGE-L F1 (no stemmer) between the greedy
  continuation of each prompt (``max_new_tokens=128``) and its ground truth cut to 128 tokens;
* ``knowmem_forget`` / ``knowmem_retain`` (``knowmem/forget_qa``; ``retain_qa`` or Books' ``retain2_qa``):
  **KnowMem** = mean ROUGE-L F1 between the greedy answer (``max_new_tokens=32``) to the few-shot prompt
  ``"Question: {q}\\nAnswer: {a}\\n\\n"``·k + ``"Question: {q}\\nAnswer: "`` (the split's ``_icl``
  examples), cut at ``"\\n\\n"``/``"\\nQuestion"``/``"Question:"``, and the true answer;
* ``privleak_forget`` / ``privleak_holdout`` (``privleak/forget``, ``privleak/holdout``): the AUC of
  membership-inference attacks (Min-K% Prob with k = 0.4 is MUSE's; Min-K%++ and the loss are reported
  beside it) separating holdout (1) from forget (0); **PrivLeak** = ``privleak(AUC, AUC_retain)`` in percent
  against the retain model's report (``retain_report``), 0 = like the retain model;
* **utility preservation** = ``100 · (KnowMem_retain − KnowMem_retain(target)) / KnowMem_retain(target)``
  against the target model's report (``target_report``, the model before unlearning), 0 = fully kept.

Report (``format: lit_unlearn.muse_report/1``): ``metadata``, ``splits`` (per-sample values and
generations), ``mia``, ``verbmem``, ``knowmem_forget``, ``knowmem_retain``, ``privleak``,
``utility_preservation`` (each ``{"value", "available", "reason"}`` where a reference is needed),
``selection`` and ``summary``. Values are in [0, 1] (MUSE prints ROUGE ×100).

Selection score (``eval/selection_score``): ``hmean(1 − mean(VerbMem, KnowMem_forget), KnowMem_retain)``:
high when the forget corpus is neither reproduced nor known and retain knowledge is kept.

Plain Python: ``MUSEEvaluation(model_or_path, tokenizer).run()``; Lightning: ``MUSEDataModule`` (training on
the corpus' ``raw/forget`` and ``raw/retain1``, evaluation on the splits above in ``validate``/``test`` and
during ``fit`` with ``eval_during_fit``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lit_unlearn.data.text import TextDataModule
from lit_unlearn.evaluation.core import Benchmark, BenchmarkEvaluation, format_cell, gather_objects, harmonic_mean
from lit_unlearn.functional import muse as M
from lit_unlearn.utils.hparams import coerce_settings

__all__ = ["MUSEBenchmark", "MUSEConfig", "MUSEDataModule", "MUSEEvaluation", "MUSEEvaluator", "MUSE_KEYS"]

REPORT_FORMAT = "lit_unlearn.muse_report/1"
#: report key -> (MUSE configuration, split); the retain QA split name is resolved per source
MUSE_KEYS: dict[str, tuple[str, str]] = {
    "verbmem_forget": ("verbmem", "forget"),
    "knowmem_forget": ("knowmem", "forget_qa"),
    "knowmem_retain": ("knowmem", "retain_qa"),
    "privleak_forget": ("privleak", "forget"),
    "privleak_holdout": ("privleak", "holdout"),
}
MUSE_MIA_SCORES = ("min_k", "min_k_plus_plus", "loss")


@dataclass
class MUSEConfig:
    """MUSE evaluation settings (defaults: MUSE's own evaluation code).

    Args:
        source: ``builtin:muse-mini``, a folder in MUSE's layout, or ``muse-bench/MUSE-News|Books``.
        keys: the report keys to evaluate (default all of :data:`MUSE_KEYS`).
        verbmem_max_new_tokens: greedy tokens after a verbmem prompt; the ground truth is cut to as many.
        knowmem_max_new_tokens: greedy tokens of a KnowMem answer.
        privleak_max_length: tokens of each privleak text scored by the attacks.
        mia_k: fraction of lowest tokens for Min-K% / Min-K%++ (MUSE: 0.4).
        privleak_score: the attack whose AUC gives PrivLeak (MUSE: ``min_k``).
        rouge_type, rouge_measure, use_stemmer: the ROUGE of VerbMem/KnowMem (MUSE: ROUGE-L F1, no stemmer;
            open-unlearning uses the stemmer).
        max_samples: evaluate only the first rows of every split (quick checks).
        retain_report: the retain model's MUSE ``report.json`` (PrivLeak's reference AUC).
        target_report: the target model's MUSE ``report.json`` (utility preservation's reference).
        store_generations: keep the decoded generations in the report.
        seed: the builtin generator's seed.
    """

    source: str = "builtin:muse-mini"
    keys: list[str] | None = None
    verbmem_max_new_tokens: int = M.VERBMEM_MAX_NEW_TOKENS
    knowmem_max_new_tokens: int = M.KNOWMEM_MAX_NEW_TOKENS
    privleak_max_length: int = 512
    mia_k: float = M.PRIVLEAK_K
    privleak_score: str = M.PRIVLEAK_SCORE
    rouge_type: str = M.MUSE_ROUGE_TYPE
    rouge_measure: str = M.MUSE_ROUGE_MEASURE
    use_stemmer: bool = M.MUSE_USE_STEMMER
    max_samples: int | None = None
    retain_report: str | None = None
    target_report: str | None = None
    store_generations: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        from lit_unlearn.functional import metrics as F

        if self.keys is not None:
            unknown = sorted(set(self.keys) - set(MUSE_KEYS))
            if unknown or not self.keys:
                raise ValueError(f"MUSEConfig.keys: unknown or no keys {unknown}; choose from {list(MUSE_KEYS)}.")
        for name in ("verbmem_max_new_tokens", "knowmem_max_new_tokens", "privleak_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"MUSEConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"MUSEConfig.max_samples must be >= 1, got {self.max_samples}.")
        if not 0.0 < self.mia_k <= 1.0:
            raise ValueError(f"MUSEConfig.mia_k must be in (0, 1], got {self.mia_k}.")
        if self.privleak_score not in MUSE_MIA_SCORES:
            raise ValueError(f"MUSEConfig.privleak_score must be one of {MUSE_MIA_SCORES}, got {self.privleak_score!r}.")
        if self.rouge_type not in F.ROUGE_TYPES or self.rouge_measure not in F.ROUGE_MEASURES:
            raise ValueError(f"MUSEConfig: rouge_type must be one of {F.ROUGE_TYPES} and rouge_measure one of"
                             f" {F.ROUGE_MEASURES}, got {self.rouge_type!r}, {self.rouge_measure!r}.")

    @property
    def selected(self) -> list[str]:
        return [k for k in MUSE_KEYS if self.keys is None or k in self.keys]

    @property
    def rouge(self) -> dict[str, Any]:
        return {"rouge_type": self.rouge_type, "measure": self.rouge_measure, "use_stemmer": self.use_stemmer}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "MUSEConfig | Mapping[str, Any] | None") -> "MUSEConfig":
        return coerce_settings(cls, value, "MUSE eval config",
                               "Unknown MUSE evaluation settings {unknown}; known: {known}.")


# ----------------------------------------------------------------------------- datasets


@dataclass
class _GenerationCollator:
    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
                "prompt_ids": [list(r["prompt_ids"]) for r in rows], "reference": [r["reference"] for r in rows]}


@dataclass
class _TextCollator:
    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from lit_unlearn.data.tokenize import PadCollator

        pad = PadCollator(self.pad_token_id, padding_side="right")
        return {"index": torch.tensor([r["index"] for r in rows], dtype=torch.long), "text": [r["text"] for r in rows],
                "input": pad([{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows])}


class MUSEDataset(Dataset):
    """One MUSE evaluation split, tokenised once: generation prompts (verbmem/knowmem: ``prompt_ids``,
    ``reference``) or texts (privleak: ``input_ids``, every token scored). ``__getitem__`` adds ``index``."""

    def __init__(self, benchmark: "MUSEBenchmark", key: str, split: str, samples: list[dict[str, Any]], tokenizer):
        self.benchmark, self.key, self.split, self.samples, self.tokenizer = benchmark, key, split, samples, tokenizer
        self.kind = "text" if key.startswith("privleak") else "generation"
        self.collate_fn = (_TextCollator(tokenizer.pad_token_id) if self.kind == "text" else _GenerationCollator())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.samples[i], "index": i}


def build_muse_datasets(benchmark: "MUSEBenchmark", tokenizer) -> list[MUSEDataset]:
    """The :class:`MUSEDataset` of every selected key, rows validated by ``lit_unlearn.data.muse``."""
    from lit_unlearn.data import muse as D
    from lit_unlearn.data.tokenize import check_tokenizer

    check_tokenizer(tokenizer)
    cfg = benchmark.config
    limit = cfg.max_samples
    out = []
    for key in cfg.selected:
        config, split = MUSE_KEYS[key]
        if key == "verbmem_forget":
            pairs = D.verbmem_pairs(cfg.source, cfg.seed)[:limit]
            samples = [{"prompt_ids": tokenizer(p)["input_ids"],
                        "reference": M.truncate_to_tokens(tokenizer, gt, cfg.verbmem_max_new_tokens)} for p, gt in pairs]
        elif config == "knowmem":
            which = "forget" if key == "knowmem_forget" else "retain"
            split = "forget_qa" if which == "forget" else D.retain_qa_split(cfg.source, cfg.seed)
            qa, icl = D.knowmem_qa(cfg.source, which, cfg.seed)
            samples = [{"prompt_ids": tokenizer(M.icl_prompt(q, icl))["input_ids"], "reference": a} for q, a in qa[:limit]]
        else:
            texts = D.muse_texts(cfg.source, config, split, cfg.seed)[:limit]
            samples = [{"input_ids": tokenizer(t)["input_ids"][:cfg.privleak_max_length], "text": t} for t in texts]
            short = [i for i, s in enumerate(samples) if len(s["input_ids"]) < 3]
            if short:
                from lit_unlearn.data.tokenize import DataValidationError

                raise DataValidationError(f"MUSE {config}/{split} of {cfg.source!r}: rows {short[:5]} have fewer than"
                                          " 3 tokens; the membership-inference attacks need longer texts.")
        out.append(MUSEDataset(benchmark, key, f"{config}/{split}", samples, tokenizer))
    return out


# ----------------------------------------------------------------------------- the evaluator


class MUSEEvaluator:
    """Metric states of the MUSE suite (torchmetrics: synced under DDP; generations gathered by index).

    Per batch: verbmem/knowmem splits run one batched, left-padded, KV-cached greedy ``generate``
    (``functional.generation.greedy_generate``); privleak splits run one forward and update every attack.
    """

    def __init__(self, config: MUSEConfig, keys: Sequence[str], tokenizer):
        from lit_unlearn.metrics import MIAAUC, KnowMem, VerbMem

        self.config, self.keys, self.tokenizer = config, list(keys), tokenizer
        self.metrics: dict[str, Any] = {}
        for key in self.keys:
            if key == "verbmem_forget":
                self.metrics[key] = VerbMem(**config.rouge)
            elif key.startswith("knowmem"):
                self.metrics[key] = KnowMem(**config.rouge)
        self.mia = ({s: MIAAUC(score=s, k=config.mia_k) for s in MUSE_MIA_SCORES}
                    if {"privleak_forget", "privleak_holdout"} <= set(self.keys) else {})
        self.generations: dict[str, dict[int, str]] = {k: {} for k in self.metrics}
        self.counts: dict[str, set[int]] = {k: set() for k in self.keys}

    def check_model(self, model) -> None:
        from lit_unlearn.functional.generation import check_generation_ids

        if self.metrics:
            check_generation_ids(model, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, who="MUSE evaluation")

    @torch.no_grad()
    def update(self, key: str, batch: Mapping[str, Any], model) -> None:
        from lit_unlearn.functional.generation import greedy_generate

        if key not in self.keys:
            raise KeyError(f"Unknown MUSE evaluation split {key!r}; this evaluator has {self.keys}.")
        index = batch["index"]
        self.counts[key].update(index.tolist())
        if key in self.metrics:
            budget = self.config.verbmem_max_new_tokens if key == "verbmem_forget" else self.config.knowmem_max_new_tokens
            ids = greedy_generate(model, batch["prompt_ids"], budget, self.tokenizer.eos_token_id,
                                  self.tokenizer.pad_token_id)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            self.metrics[key].update(texts, list(batch["reference"]), index=index)
            if self.config.store_generations:
                self.generations[key].update({int(i): t for i, t in zip(index.tolist(), texts)})
            return
        if self.mia:
            sub = batch["input"]
            device = next(model.parameters()).device
            logits = model(input_ids=sub["input_ids"].to(device), attention_mask=sub["attention_mask"].to(device)).logits
            labels = sub["labels"].to(logits.device)
            for metric in self.mia.values():
                metric.update(logits, labels, member=key == "privleak_forget", texts=batch["text"],
                              index=index.to(logits.device))

    def compute(self) -> dict[str, Any]:
        """``{"splits": {key: {"split", "num_samples", "metrics", "per_sample", "generations"}}, "mia": {score:
        {"auc"}}}`` (collective under ``torch.distributed``)."""
        splits: dict[str, Any] = {}
        for key in self.keys:
            seen = set().union(*gather_objects(self.counts[key]))
            entry: dict[str, Any] = {"num_samples": len(seen), "metrics": {}, "per_sample": {}, "generations": {}}
            if key in self.metrics:
                name = "verbmem" if key == "verbmem_forget" else "knowmem"
                entry["metrics"][name] = float(self.metrics[key].compute())
                entry["per_sample"][name] = self.metrics[key].value_by_index()
                generations: dict[int, str] = {}
                for part in gather_objects(self.generations[key]):
                    generations.update(part)
                entry["generations"] = dict(sorted(generations.items()))
            splits[key] = entry
        mia = {score: {"auc": float(metric.compute())} for score, metric in self.mia.items()}
        return {"splits": splits, "mia": mia}


# ----------------------------------------------------------------------------- the report


def _unavailable(reason: str, **extra) -> dict[str, Any]:
    return {"value": None, "available": False, "reason": reason, **extra}


def _reference(path: str | None, what: str, option: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(report, None)`` or ``(None, reason)`` for a reference report path."""
    from lit_unlearn.evaluation.report import load_report, report_path

    if path is None:
        return None, f"no {option} given (evaluate the {what} model with MUSE first and pass its report.json)"
    file = report_path(path)
    if not file.is_file():
        return None, f"{option} {str(file)!r} not found"
    report = load_report(file)
    if report.get("format") != REPORT_FORMAT:
        return None, f"{option} {str(file)!r} is not a MUSE report (format {report.get('format')!r})"
    return report, None


def _data_mismatch(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    from lit_unlearn.evaluation.report import data_mismatches

    return data_mismatches(ours, theirs)


def muse_selection_score(report: Mapping[str, Any]) -> float | None:
    """``hmean(1 − mean(VerbMem, KnowMem_forget), KnowMem_retain)`` over the values present; None without
    KnowMem_retain or without both forget-side values."""
    forget = [report.get(k, {}).get("value") for k in ("verbmem", "knowmem_forget")]
    forget = [v for v in forget if v is not None]
    keep = report.get("knowmem_retain", {}).get("value")
    if keep is None or not forget:
        return None
    return harmonic_mean([max(0.0, 1.0 - sum(forget) / len(forget)), keep])


def finalize_muse_report(results: Mapping[str, Any], metadata: Mapping[str, Any], config: MUSEConfig,
                         strict: bool = False) -> dict[str, Any]:
    """Raw results + metadata -> the MUSE report (PrivLeak and utility preservation against the references).

    A reference report of other data (source or data version) gives "unavailable" with the reason, or a
    ``ValueError`` with ``strict``."""
    from lit_unlearn.functional import metrics as F

    splits = results["splits"]
    report: dict[str, Any] = {"format": REPORT_FORMAT, "metadata": dict(metadata), "splits": dict(splits),
                              "mia": {k: dict(v) for k, v in results.get("mia", {}).items()}}

    def value(key: str, name: str) -> dict[str, Any]:
        v = splits.get(key, {}).get("metrics", {}).get(name)
        return {"value": v, "available": v is not None, "reason": None if v is not None else f"{key} not evaluated"}

    report["verbmem"] = value("verbmem_forget", "verbmem")
    report["knowmem_forget"] = value("knowmem_forget", "knowmem")
    report["knowmem_retain"] = value("knowmem_retain", "knowmem")

    def reference(path, what, option):
        ref, reason = _reference(path, what, option)
        if ref is not None:
            problems = _data_mismatch(metadata, ref.get("metadata", {}))
            if problems:
                reason = f"the {option} {path!r} does not match this run: {'; '.join(problems)}"
                if strict:
                    raise ValueError(reason[0].upper() + reason[1:] + f". Evaluate the {what} model on the same data.")
                ref = None
        return ref, reason

    score = config.privleak_score
    auc = report["mia"].get(score, {}).get("auc")
    if auc is None:
        report["privleak"] = _unavailable("privleak_forget and privleak_holdout were not both evaluated", score=score)
    else:
        retain, reason = reference(config.retain_report, "retain", "retain_report")
        retain_auc = None if retain is None else retain.get("mia", {}).get(score, {}).get("auc")
        if retain is not None and retain_auc is None:
            reason = f"the retain report has no {score} AUC"
        elif retain_auc is not None and retain_auc >= 1.0:  # privleak divides by 1 − AUC_retain
            reason = (f"the retain model's {score} AUC is {retain_auc:g}: PrivLeak divides by 1 − AUC_retain, so it "
                      "is undefined (a perfectly separating attack on the retain model; more samples usually fix it)")
            retain_auc = None
        for s, entry in report["mia"].items():
            ref = None if retain is None else retain.get("mia", {}).get(s, {}).get("auc")
            entry["retain_auc"] = ref
            entry["privleak"] = None if ref is None or ref >= 1.0 else F.privleak(entry["auc"], ref)
        report["privleak"] = ({"value": report["mia"][score]["privleak"], "available": True, "reason": None,
                               "score": score, "auc": auc, "retain_auc": retain_auc, "retain_report": config.retain_report}
                              if retain_auc is not None else
                              _unavailable(reason, score=score, auc=auc, retain_report=config.retain_report))
    keep = report["knowmem_retain"]["value"]
    if keep is None:
        report["utility_preservation"] = _unavailable("knowmem_retain not evaluated")
    else:
        target, reason = reference(config.target_report, "target", "target_report")
        ref = None if target is None else target.get("knowmem_retain", {}).get("value")
        if target is not None and ref is None:
            reason = "the target report has no knowmem_retain"
        if ref is not None and ref == 0:
            ref, reason = None, "the target model's knowmem_retain is 0 (no relative change defined)"
        report["utility_preservation"] = (
            {"value": M.relative_to_reference(keep, ref), "available": True, "reason": None,
             "target_knowmem_retain": ref, "target_report": config.target_report}
            if ref is not None else _unavailable(reason, target_report=config.target_report))
    selection = muse_selection_score(report)
    report["selection"] = {"value": selection,
                           "formula": "hmean(1 - mean(verbmem, knowmem_forget), knowmem_retain)"}
    report["summary"] = {
        "verbmem": report["verbmem"]["value"], "knowmem_forget": report["knowmem_forget"]["value"],
        "knowmem_retain": report["knowmem_retain"]["value"], "privleak": report["privleak"]["value"],
        "mia_auc": auc, "utility_preservation": report["utility_preservation"]["value"],
        "selection_score": selection,
    }
    return report


def render_muse_markdown(report: Mapping[str, Any]) -> str:
    meta = report.get("metadata", {})
    lines = [f"# MUSE evaluation report: `{meta.get('model', '?')}`", "",
             "Values in [0, 1] (MUSE prints ROUGE ×100); PrivLeak and utility preservation in percent.", "",
             "| metric | value | note |", "|---|---:|---|"]
    for name, label in (("verbmem", "VerbMem (forget)"), ("knowmem_forget", "KnowMem (forget)"),
                        ("knowmem_retain", "KnowMem (retain)"), ("privleak", "PrivLeak %"),
                        ("utility_preservation", "Utility preservation %")):
        entry = report.get(name, {})
        lines.append(f"| {label} | {format_cell(entry.get('value'))} | {entry.get('reason') or ''} |")
    lines.append(f"| selection score | {format_cell(report.get('selection', {}).get('value'))} |"
                 f" {report.get('selection', {}).get('formula', '')} |")
    if report.get("mia"):
        lines += ["", "| attack | AUC (forget=0, holdout=1) | retain AUC | privleak % |", "|---|---:|---:|---:|"]
        for s, e in report["mia"].items():
            cells = (format_cell(e["auc"]), format_cell(e.get("retain_auc")), format_cell(e.get("privleak")))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "| split | source split | n |", "|---|---|---:|"]
    for key, split in report["splits"].items():
        lines.append(f"| {key} | `{meta.get('splits', {}).get(key, '')}` | {split['num_samples']} |")
    lines += ["", "## Metadata", ""]
    for key in ("data_version", "source", "model", "ckpt_path", "global_step", "world_size", "strategy",
                "precision", "effective_batch_size", "lit_unlearn_version", "timestamp"):
        if key in meta:
            lines.append(f"- {key}: `{meta[key]}`")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the benchmark


class MUSEBenchmark(Benchmark):
    """The MUSE suite (see the module docstring); ``config``: :class:`MUSEConfig` or a dict of its fields."""

    name = "muse"

    def __init__(self, config: MUSEConfig | Mapping[str, Any] | None = None):
        super().__init__(MUSEConfig.coerce(config))

    def datasets(self, tokenizer) -> list[MUSEDataset]:
        return build_muse_datasets(self, tokenizer)

    def data_identity(self) -> dict[str, Any]:
        from lit_unlearn.data.sources import source_version

        try:
            version = source_version(self.config.source, self.config.seed)
        except Exception:  # pragma: no cover - an unreadable folder is reported when loading
            version = None
        return {"source": self.config.source, "data_version": version}

    def check(self, datasets: Sequence[Any], metadata: Mapping[str, Any] | None = None, strict: bool = False) -> None:
        """Reference reports that exist must be MUSE reports (a wrong file is named now, not after the run)."""
        for path, what, option in ((self.config.retain_report, "retain", "retain_report"),
                                   (self.config.target_report, "target", "target_report")):
            if path is not None:
                _, reason = _reference(path, what, option)
                if reason is not None and "not found" not in reason:
                    raise ValueError(f"MUSE evaluation: {reason}.")

    def evaluator(self, keys: Sequence[str], tokenizer) -> MUSEEvaluator:
        return MUSEEvaluator(self.config, keys, tokenizer)

    def finalize(self, results: Mapping[str, Any], metadata: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
        return finalize_muse_report(results, metadata, self.config, strict=strict)

    def selection_score(self, report: Mapping[str, Any]) -> float | None:
        return muse_selection_score(report)

    def scalar_logs(self, report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
        out = {f"{prefix}/{name}": float(report[name]["value"])
               for name in ("verbmem", "knowmem_forget", "knowmem_retain", "privleak", "utility_preservation")
               if report.get(name, {}).get("value") is not None}
        for score, entry in report.get("mia", {}).items():
            out[f"{prefix}/mia/{score}_auc"] = float(entry["auc"])
        score = self.selection_score(report)
        if score is not None:
            out[f"{prefix}/selection_score"] = float(score)
        return out

    def write(self, report: Mapping[str, Any], out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Any]:
        from lit_unlearn.evaluation.report import write_report

        return write_report(report, out_dir, plots=False, render=render_muse_markdown)  # no metrics.png: its panels are TOFU's


class MUSEEvaluation(BenchmarkEvaluation):
    """Evaluate one model on MUSE in plain Python (one process, or each rank of an initialised
    ``torch.distributed`` group, which then shards the samples).

    Args:
        model_or_path: a Hugging Face causal LM, or a folder/hub name.
        tokenizer: a tokenizer or its name/path (default: ``model_or_path`` when that is a path).
        source, retain_report, target_report, max_samples: see :class:`MUSEConfig`.
        batch_size: samples per batch and rank.
        out_dir: rank 0 writes ``report.json`` and ``report.md`` there.
        config: a :class:`MUSEConfig` (or dict) for every other setting; the arguments above override it.

    Example::

        report = MUSEEvaluation("outputs/muse/target", source="builtin:muse-mini").run()
        report["verbmem"]["value"], report["knowmem_retain"]["value"]
    """

    def __init__(self, model_or_path, tokenizer=None, source: str | None = None, retain_report: str | None = None,
                 target_report: str | None = None, max_samples: int | None = None, batch_size: int = 16,
                 out_dir: str | os.PathLike | None = None, device=None, dtype: str | None = None,
                 progress: bool = True, strict: bool = False, config: MUSEConfig | Mapping[str, Any] | None = None):
        cfg = MUSEConfig.coerce(config).to_dict()
        for name, value in (("source", source), ("retain_report", retain_report), ("target_report", target_report),
                            ("max_samples", max_samples)):
            if value is not None:
                cfg[name] = str(value) if name.endswith("report") else value
        super().__init__(MUSEBenchmark(cfg), model_or_path, tokenizer, batch_size, out_dir, device, dtype, progress,
                         plots=False, strict=strict)


# ----------------------------------------------------------------------------- Lightning data

#: the MUSE configurations whose splits are forget corpora (``MUSEDataModule(forget_split=...)``)
FORGET_CONFIGS = ("raw", "scal", "sust")


def check_forget_split(value: str) -> str:
    """``"<config>/<split>"`` of a forget corpus: ``raw/forget``, ``scal/forget_k`` or ``sust/forget_k``."""
    config, _, split = str(value).partition("/")
    if config not in FORGET_CONFIGS or not split or (config == "raw" and split != "forget") \
            or (config != "raw" and not (split.startswith("forget_") and split[7:].isdigit())):
        raise ValueError(f"MUSEDataModule(forget_split={value!r}): give '<config>/<split>' of a forget corpus,"
                         " 'raw/forget', 'scal/forget_<k>' or 'sust/forget_<k>' (k = 1..4 in MUSE).")
    return f"{config}/{split}"


class MUSEDataModule(TextDataModule):
    """Unlearn a MUSE corpus and evaluate on MUSE (``validate``/``test``, and during ``fit`` with
    ``eval_during_fit``).

    Training: the forget corpus ``raw/forget`` and the retain corpus ``raw/retain1`` of ``muse_source``
    (MUSE's baselines regularise on retain1; retain2 stays for evaluation), chunked to ``max_length`` with
    every token labelled, as ``TextDataModule``; ``forget_split`` picks another forget corpus of the source
    (``scal/forget_k``, ``sust/forget_k``: the scalability/sustainability requests, see
    :mod:`lit_unlearn.muse_sequences`); ``forget_files``/``retain_files`` override them.

    Args:
        muse_source: ``builtin:muse-mini``, a folder in MUSE's layout or a hub name (``muse-bench/MUSE-News``).
        forget_split: the forget corpus, ``"<config>/<split>"``: ``raw/forget`` (default), ``scal/forget_k``,
            ``sust/forget_k``.
        eval_config: MUSE evaluation settings (:class:`MUSEConfig` fields; ``source`` defaults to
            ``muse_source``): e.g. ``{"retain_report": ..., "target_report": ..., "knowmem_max_new_tokens": 32}``.
        eval_max_samples: evaluate only the first rows of every MUSE split.
        eval_batch_size: evaluation samples per batch and process (default ``batch_size``).
        eval_during_fit: also evaluate in the validation epochs of ``fit``.
        other arguments: as ``TextDataModule``.
    """

    def __init__(
        self,
        muse_source: str = "builtin:muse-mini",
        tokenizer: str = "builtin:tofu-mini",
        forget_files: str | None = None,
        retain_files: str | None = None,
        forget_split: str = "raw/forget",
        max_length: int = 128,
        batch_size: int = 8,
        retain_batch_size: int | None = None,
        num_workers: int = 0,
        pad_token: str | None = None,
        seed: int = 0,
        eval_config: dict[str, Any] | None = None,
        eval_max_samples: int | None = None,
        eval_batch_size: int | None = None,
        eval_during_fit: bool = False,
    ):
        super().__init__(forget_files or "", retain_files, source=muse_source, tokenizer=tokenizer, retain_split=None,
                         max_length=max_length, batch_size=batch_size, retain_batch_size=retain_batch_size,
                         num_workers=num_workers, pad_token=pad_token, seed=seed)
        if eval_max_samples is not None and eval_max_samples < 1:
            raise ValueError(f"eval_max_samples must be >= 1, got {eval_max_samples}.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}.")
        self.muse_source = muse_source
        self.forget_files = forget_files
        self.forget_split = check_forget_split(forget_split)
        cfg = dict(eval_config or {})
        cfg.setdefault("source", muse_source)
        cfg.setdefault("seed", seed)
        if eval_max_samples is not None:
            cfg["max_samples"] = eval_max_samples
        self.benchmark = MUSEBenchmark(cfg)  # validates the settings now
        self.eval_max_samples, self.eval_batch_size, self.eval_during_fit = eval_max_samples, eval_batch_size, eval_during_fit

    def _muse_chunks(self, split: str, name: str, config: str = "raw"):
        from lit_unlearn.data.muse import muse_texts
        from lit_unlearn.data.tofu import EncodedDataset
        from lit_unlearn.data.tokenize import encode_text

        tokenizer = self.load_tokenizer()
        texts = muse_texts(self.muse_source, config, split, self.seed)
        samples = [c for doc in texts for c in encode_text(tokenizer, doc, self.max_length)]
        return EncodedDataset(samples, None, name)

    def build_forget_dataset(self):
        if self.forget_files:
            return self._chunks(self.forget_files, "forget")
        config, split = self.forget_split.split("/")
        return self._muse_chunks(split, "forget", config)

    def setup(self, stage: str | None = None) -> None:
        if self.retain_files is None and self.retain_dataset is None:
            self.retain_dataset = self._muse_chunks("retain1", "retain")
        super().setup(stage)

    @property
    def data_version(self) -> str:
        from lit_unlearn.data.sources import source_version

        version = source_version(self.muse_source, self.seed)
        # the forget corpus trained on is part of the run's data (scal/sust requests differ only in it)
        return version if self.forget_split == "raw/forget" or self.forget_files else f"{version}|{self.forget_split}"

    def eval_datasets(self) -> list:
        if self._eval_datasets is None:
            self._eval_datasets = self.benchmark.datasets(self.load_tokenizer())
        return self._eval_datasets

    def eval_dataloaders(self) -> list[DataLoader]:
        return [DataLoader(ds, batch_size=self.eval_batch_size or self.batch_size, shuffle=False,
                           collate_fn=ds.collate_fn, num_workers=self.num_workers) for ds in self.eval_datasets()]


__all__ += ["build_muse_datasets", "finalize_muse_report", "muse_selection_score", "render_muse_markdown"]

"""The evaluation report: forget quality, model utility and privleak from raw results, and the files.

``report.json`` layout (``format: lit_unlearn.tofu_report/1``)::

    metadata        data version, model, world size, strategy, precision, effective batch size, version, time
    splits.<key>    split name, num_samples, metrics {name: aggregate}, per_sample {name: {index: value}},
                    generations {index: text}, el_reduced_n
    mia.<score>     auc (forget = 0, holdout = 1) and privleak (when the retain report has the retain AUC)
    forget_quality  value | null, available, reason, retain_report
    model_utility   value | null, available, reason, components {"retain/probability": ...}
    summary         the headline numbers (used by ``lit-unlearn report`` to compare runs)
    relative_to_retain  only with ``EvalConfig.relative_to_retain``: each split metric vs the retain model's

``per_sample.truth_ratio`` of the forget split holds raw TR_i: a retain model's report is what forget
quality of later runs needs. Every file is written atomically (``utils.io``).
"""
from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_unlearn.functional import metrics as F
from lit_unlearn.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

REPORT_FORMAT = "lit_unlearn.tofu_report/1"
REPORT_FILE = "report.json"

#: the 9 values whose harmonic mean is TOFU's model utility (Maini et al., 2024): (split, metric)
MODEL_UTILITY_COMPONENTS = (
    ("retain", "probability"), ("retain", "rouge_l_recall"), ("retain", "truth_ratio"),
    ("real_authors", "normalized_probability"), ("real_authors", "rouge_l_recall"), ("real_authors", "truth_ratio"),
    ("world_facts", "normalized_probability"), ("world_facts", "rouge_l_recall"), ("world_facts", "truth_ratio"),
)
METRIC_LABELS = {
    "probability": "Prob.", "normalized_probability": "Norm. prob.", "truth_ratio": "Truth ratio",
    "rouge_l_recall": "ROUGE-L", "memorization_accuracy": "MA", "unlearning_accuracy": "UA",
    "extraction_strength": "ES", "extraction_likelihood": "EL",
}
DEFAULT_PRIVLEAK_SCORE = "min_k"


# ----------------------------------------------------------------------------- loading and checks


def report_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a file, else ``path/report.json`` (or ``path/report/report.json``)."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / REPORT_FILE, p / "report" / REPORT_FILE):
            if candidate.is_file():
                return candidate
        return p / REPORT_FILE
    return p


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``report.json`` (or a folder holding one); per-sample keys become ints again."""
    file = report_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"No evaluation report at {str(file)!r}.")
    try:
        report = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(file)!r} is not valid JSON: {err}") from None
    if not isinstance(report, dict) or "splits" not in report:
        raise ValueError(f"{str(file)!r} is not a lit_unlearn evaluation report (no 'splits').")
    for split in report["splits"].values():
        split["per_sample"] = {name: {int(i): v for i, v in values.items()}
                               for name, values in split.get("per_sample", {}).items()}
        split["generations"] = {int(i): v for i, v in split.get("generations", {}).items()}
    report.setdefault("metadata", {})["report_path"] = str(file)
    return report


def _as_report(report_or_path) -> dict[str, Any]:
    return report_or_path if isinstance(report_or_path, Mapping) else load_report(report_or_path)


def forget_truth_ratios(report: Mapping[str, Any], where: str = "report") -> dict[int, float]:
    """The per-sample forget-set truth ratios ``{index: TR}`` of a report."""
    forget = report.get("splits", {}).get("forget")
    if forget is None:
        raise ValueError(f"{where} has no 'forget' split: forget quality needs the forget-set truth ratios.")
    trs = forget.get("per_sample", {}).get("truth_ratio")
    if not trs:
        raise ValueError(f"{where} has no per-sample forget truth ratios (splits.forget.per_sample.truth_ratio).")
    return {int(i): float(v) for i, v in trs.items()}


def _check_same_samples(ours: Sequence[int], theirs: Sequence[int], our_split: str | None,
                        their_split: str | None, where: str) -> None:
    if our_split is not None and their_split is not None and our_split != their_split:
        raise ValueError(
            f"Forget split mismatch: this evaluation uses {our_split!r} but the retain report {where} was computed"
            f" on {their_split!r}. Evaluate the retain model on the same forget split."
        )
    a, b = set(ours), set(theirs)
    if a != b:
        only_a, only_b = sorted(a - b)[:5], sorted(b - a)[:5]
        raise ValueError(
            f"Forget samples differ from the retain report {where}: {len(a)} samples here vs {len(b)} there"
            f" (only here: {only_a}{'...' if len(a - b) > 5 else ''}; only there: {only_b}"
            f"{'...' if len(b - a) > 5 else ''}). Evaluate both models on the same forget split and subset"
            " (max_samples)."
        )


class RetainReportMismatch(ValueError):
    """The retain report was computed on other data than the evaluated run (forget quality would be wrong)."""


def data_mismatches(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """What differs between the data of this run's metadata ``ours`` and the retain report's ``theirs``.

    Compared: the data ``source`` and its ``data_version`` (a value missing on either side is not compared).
    The forget split and sample indices are compared by :func:`_check_same_samples`.
    """
    out = []
    for key, label in (("source", "data source"), ("data_version", "data version")):
        a, b = ours.get(key), theirs.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{label} {a!r} here, {b!r} in the retain report")
    return out


def check_retain_report(retain_report: str | os.PathLike | None, forget_dataset=None,
                        metadata: Mapping[str, Any] | None = None, strict: bool = False) -> dict[str, Any] | None:
    """Load the retain report early and check it matches the forget split to evaluate (``ValueError`` if not).

    A different forget split or different sample indices are always an error here (before any evaluation).
    With ``strict``, a different data source/version (``metadata``: this run's ``source``/``data_version``)
    is one too (:class:`RetainReportMismatch`); otherwise forget quality ends up "unavailable" with the reason
    (:func:`forget_quality_entry`). Returns None when no path is given or the file does not exist (forget
    quality will be "unavailable").
    """
    if retain_report is None or not report_path(retain_report).is_file():
        return None
    retain = load_report(retain_report)
    if forget_dataset is not None:
        trs = forget_truth_ratios(retain, f"retain report {str(retain_report)!r}")
        _check_same_samples(range(len(forget_dataset)), trs, forget_dataset.spec.split,
                            retain["splits"]["forget"].get("split"), repr(str(retain_report)))
    if strict and metadata is not None:
        problems = data_mismatches(metadata, retain.get("metadata", {}))
        if problems:
            raise RetainReportMismatch(f"The retain report {str(report_path(retain_report))!r} does not match this"
                                       f" run: {'; '.join(problems)}. Evaluate the retain model on the same data"
                                       " (strict mode).")
    return retain


def forget_quality_from_reports(report, retain_report) -> float:
    """TOFU forget quality (KS p-value) of ``report`` against ``retain_report`` (dicts or paths).

    Raises ``ValueError`` when the two reports do not cover the same forget samples.
    """
    ours, theirs = _as_report(report), _as_report(retain_report)
    tr, tr_retain = forget_truth_ratios(ours, "this report"), forget_truth_ratios(theirs, "the retain report")
    where = repr(theirs.get("metadata", {}).get("report_path", "(given as a dict)"))
    _check_same_samples(tr, tr_retain, ours["splits"]["forget"].get("split"), theirs["splits"]["forget"].get("split"),
                        where)
    keys = sorted(tr)
    return F.forget_quality([tr[i] for i in keys], [tr_retain[i] for i in keys])


def _unavailable(reason: str, **extra) -> dict[str, Any]:
    return {"value": None, "available": False, "reason": reason, **extra}


def forget_quality_entry(report: Mapping[str, Any], retain_report, strict: bool = False) -> dict[str, Any]:
    """``{"value", "available", "reason", "retain_report"}``; a missing retain report is "unavailable".

    A retain report of other data (source, data version, forget split or sample indices differ) makes forget
    quality "unavailable" with the reason (``mismatch: True``), or raises :class:`RetainReportMismatch` with
    ``strict``: a KS test against the wrong retain model gives a meaningless number.
    """
    if "forget" not in report["splits"]:
        return _unavailable("no forget split was evaluated", retain_report=None)
    if retain_report is None:
        return _unavailable("no retain_report given (forget quality compares with the retain model's forget-set"
                            " truth ratios: evaluate the retain model first and pass its report.json)",
                            retain_report=None)
    if isinstance(retain_report, Mapping):
        retain, path = retain_report, retain_report.get("metadata", {}).get("report_path")
    else:
        path = str(report_path(retain_report))
        if not Path(path).is_file():
            return _unavailable(f"retain report {path!r} not found", retain_report=path)
        retain = load_report(path)
    problems = data_mismatches(report.get("metadata", {}), retain.get("metadata", {}))
    value = None
    try:
        value = forget_quality_from_reports(report, retain)
    except ValueError as err:  # another forget split or other samples
        problems.append(str(err))
    if problems:
        reason = f"the retain report {path!r} does not match this run: {'; '.join(problems)}"
        if strict:
            raise RetainReportMismatch(reason[0].upper() + reason[1:] + ". Evaluate the retain model on the same"
                                       " data (strict mode).")
        entry = _unavailable(reason + " (evaluate the retain model on the same data)", retain_report=path,
                             mismatch=True, warning=reason)
    else:
        entry = {"value": value, "available": True, "reason": None, "retain_report": path}
    entry["retain_model"] = retain.get("metadata", {}).get("model")
    # used for privleak (removed before writing); a retain report of other data gives no privleak either
    entry["_retain"] = None if problems else retain
    return entry


def model_utility_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    """Harmonic mean of the 9 TOFU utility values, or "unavailable" naming what is missing."""
    components, missing = {}, []
    for split, metric in MODEL_UTILITY_COMPONENTS:
        value = report["splits"].get(split, {}).get("metrics", {}).get(metric)
        if value is None:
            missing.append(f"{split}/{metric}")
        else:
            components[f"{split}/{metric}"] = value
    if missing:
        return _unavailable(f"missing {', '.join(missing)} (model utility needs the retain, real_authors and"
                            " world_facts splits with generation on)", components=components)
    return {"value": F.model_utility(list(components.values())), "available": True, "reason": None,
            "components": components}


def finalize_report(results: Mapping[str, Any], metadata: Mapping[str, Any], retain_report=None,
                    strict: bool = False) -> dict[str, Any]:
    """Raw evaluator results + metadata -> the full report (forget quality, privleak, model utility, summary).

    ``strict``: a retain report of other data raises instead of making forget quality "unavailable".
    """
    report: dict[str, Any] = {"format": REPORT_FORMAT, "metadata": dict(metadata), "splits": results["splits"],
                              "mia": {k: dict(v) for k, v in results.get("mia", {}).items()}}
    fq = forget_quality_entry(report, retain_report, strict=strict)
    retain = fq.pop("_retain", None)
    report["forget_quality"] = fq
    for score, entry in report["mia"].items():
        retain_auc = (retain or {}).get("mia", {}).get(score, {}).get("auc")
        entry["retain_auc"] = retain_auc
        entry["privleak"] = None
        if retain_auc is None:
            entry["privleak_reason"] = ("the retain report does not match this run" if fq.get("mismatch") else
                                        "no retain report with MIA AUCs" if retain is None else
                                        "retain report lacks this AUC")
            continue
        try:
            entry["privleak"] = F.privleak(entry["auc"], retain_auc)
        except ValueError as err:
            entry["privleak_reason"] = str(err)
    report["model_utility"] = model_utility_entry(report)
    if (metadata.get("eval_config") or {}).get("relative_to_retain"):  # EvalConfig.relative_to_retain
        report["relative_to_retain"] = relative_to_retain_entry(report, retain)
    report["summary"] = summarize(report)
    return report


def relative_to_retain_entry(report: Mapping[str, Any], retain: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every split metric relative to the retain model's: ``{"available", "reason", "values": {"split/metric":
    {"value", "retain_value", "relative_difference"}}}`` with relative difference (v − v_retain) / |v_retain|
    (``F.relative_difference``; None where v_retain = 0). Needs a retain report of the same data.
    """
    if retain is None:
        return _unavailable("no matching retain report (relative_to_retain compares with the retain model's"
                            " report of the same data: pass retain_report)", values={})
    values: dict[str, Any] = {}
    for key, split in report["splits"].items():
        theirs = retain.get("splits", {}).get(key, {}).get("metrics", {})
        for name, value in split["metrics"].items():
            ref = theirs.get(name)
            if value is None or ref is None:
                continue
            try:
                rel = F.relative_difference(value, ref)
            except ValueError:
                rel = None
            values[f"{key}/{name}"] = {"value": value, "retain_value": ref, "relative_difference": rel}
    return {"available": True, "reason": None, "values": values}


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    forget = report["splits"].get("forget", {}).get("metrics", {})
    mia = report.get("mia", {}).get(DEFAULT_PRIVLEAK_SCORE, {})
    return {
        "forget_quality": report["forget_quality"]["value"],
        "model_utility": report["model_utility"]["value"],
        "forget_rouge_l_recall": forget.get("rouge_l_recall"),
        "forget_probability": forget.get("probability"),
        "forget_truth_ratio": forget.get("truth_ratio"),
        "forget_memorization_accuracy": forget.get("memorization_accuracy"),
        "forget_extraction_likelihood": forget.get("extraction_likelihood"),
        "mia_min_k_auc": mia.get("auc"),
        "privleak": mia.get("privleak"),
    }


# ----------------------------------------------------------------------------- writing


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3e}" if value != 0 and abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def metric_names(report: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for split in report["splits"].values():
        names += [n for n in split["metrics"] if n not in names]
    order = list(METRIC_LABELS)
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def render_markdown(report: Mapping[str, Any]) -> str:
    """A Markdown page: headline numbers, one row per split and metric column, MIA and metadata."""
    meta = report.get("metadata", {})
    fq, mu = report["forget_quality"], report["model_utility"]
    lines = [f"# Evaluation report: `{meta.get('model', '?')}`", ""]
    lines.append(f"- **Forget quality**: {_fmt(fq['value'])}" + ("" if fq["available"] else f" (unavailable: {fq['reason']})"))
    if fq.get("warning"):
        lines.append(f"  - warning: {fq['warning']}")
    lines.append(f"- **Model utility**: {_fmt(mu['value'])}" + ("" if mu["available"] else f" (unavailable: {mu['reason']})"))
    lines.append("")
    names = metric_names(report)
    lines.append("| split | n | " + " | ".join(METRIC_LABELS.get(n, n) for n in names) + " |")
    lines.append("|---|---:|" + "---:|" * len(names))
    for key, split in report["splits"].items():
        cells = [_fmt(split["metrics"].get(n)) for n in names]
        lines.append(f"| {key} (`{split['split']}`) | {split['num_samples']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Truth ratio: forget = mean min(TR, 1/TR); other splits = mean max(0, 1 − TR).")
    if report.get("mia"):
        lines += ["", "| MIA score | AUC (forget=0, holdout=1) | retain AUC | privleak |", "|---|---:|---:|---:|"]
        for score, entry in report["mia"].items():
            lines.append(f"| {score} | {_fmt(entry['auc'])} | {_fmt(entry.get('retain_auc'))} | {_fmt(entry.get('privleak'))} |")
    if mu.get("components"):
        lines += ["", "Model utility components: " + ", ".join(f"{k} {_fmt(v)}" for k, v in mu["components"].items())]
    lines += ["", "## Metadata", ""]
    for key in ("data_version", "source", "model", "ckpt_path", "world_size", "strategy", "precision",
                "effective_batch_size", "lit_unlearn_version", "timestamp"):
        if key in meta:
            lines.append(f"- {key}: `{meta[key]}`")
    return "\n".join(lines) + "\n"


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_report(report: Mapping[str, Any]) -> bytes:
    """PNG bytes: one bar chart per split of its metrics (all in [0, 1])."""
    from matplotlib.figure import Figure

    splits = list(report["splits"].items())
    fig = Figure(figsize=(4.2 * len(splits), 3.4))
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    for ax, (key, split) in zip(axes, splits):
        names = [n for n in metric_names(report) if n in split["metrics"]]
        values = [split["metrics"][n] for n in names]
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)), [METRIC_LABELS.get(n, n) for n in names], rotation=45, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{key} (n={split['num_samples']})")
        for i, v in enumerate(values):
            ax.text(i, min(v, 1.0) + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    fq, mu = report["forget_quality"]["value"], report["model_utility"]["value"]
    fig.suptitle(f"forget quality {_fmt(fq)}, model utility {_fmt(mu)}", y=1.04)
    return _figure_png(fig)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, plots: bool = True,
                 render: Callable[[Mapping[str, Any]], str] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` (``render``, default the TOFU :func:`render_markdown`) and
    (``plots``, TOFU reports only) ``metrics.png`` to ``out_dir``, atomically."""
    out = Path(out_dir)
    data = {k: v for k, v in report.items()}
    data["metadata"] = {k: v for k, v in report.get("metadata", {}).items() if k != "report_path"}
    markdown = (render or render_markdown)(report)
    paths = {"json": atomic_write_json(out / REPORT_FILE, data), "md": atomic_write_text(out / "report.md", markdown)}
    if plots:
        paths["png"] = atomic_write_bytes(out / "metrics.png", plot_report(report))
    return paths


# ----------------------------------------------------------------------------- comparing runs


def _run_name(report: Mapping[str, Any], fallback: str) -> str:
    path = report.get("metadata", {}).get("report_path")
    if path:
        p = Path(path).parent
        return p.parent.name if p.name == "report" and p.parent.name else p.name
    return fallback


def compare_reports(reports: Sequence, out_dir: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare several reports (dicts or paths): ``comparison.md``/``comparison.json`` tables and a
    ``uc_ut.png`` scatter of unlearning completeness (UC) against model utility (UT).

    UC is forget quality when every report has it, otherwise 1 − forget ROUGE-L recall for all of them (the
    table and the plot say which).
    """
    loaded = [_as_report(r) for r in reports]
    if not loaded:
        raise ValueError("compare_reports needs at least one report.")
    if names is not None and len(names) != len(loaded):
        raise ValueError(f"{len(names)} names for {len(loaded)} reports.")
    names = list(names) if names is not None else [_run_name(r, f"run{i}") for i, r in enumerate(loaded)]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    use_fq = all(r["summary"]["forget_quality"] is not None for r in loaded)
    uc_label = "forget quality" if use_fq else "1 − forget ROUGE-L recall"
    rows = []
    for name, r in zip(names, loaded):
        s = r["summary"]
        rouge = s.get("forget_rouge_l_recall")
        uc = s["forget_quality"] if use_fq else (None if rouge is None else 1.0 - rouge)
        rows.append({"name": name, "model": r.get("metadata", {}).get("model"), "uc": uc, "ut": s["model_utility"],
                     **{k: v for k, v in s.items()}})
    cols = [("forget_quality", "FQ"), ("model_utility", "MU"), ("forget_rouge_l_recall", "forget ROUGE-L"),
            ("forget_probability", "forget prob."), ("forget_truth_ratio", "forget TR"),
            ("forget_memorization_accuracy", "forget MA"), ("forget_extraction_likelihood", "forget EL"),
            ("mia_min_k_auc", "MIA min-k AUC"), ("privleak", "privleak")]
    md = [f"# Comparison of {len(rows)} runs", "", f"UC = {uc_label}; UT = model utility.", "",
          "| run | UC | UT | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * (2 + len(cols))]
    for row in rows:
        md.append(f"| {row['name']} | {_fmt(row['uc'])} | {_fmt(row['ut'])} | " + " | ".join(_fmt(row[c[0]]) for c in cols) + " |")
    out = Path(out_dir)
    table = {"uc": uc_label, "ut": "model utility", "runs": rows}
    paths = {"json": atomic_write_json(out / "comparison.json", table),
             "md": atomic_write_text(out / "comparison.md", "\n".join(md) + "\n"),
             "png": atomic_write_bytes(out / "uc_ut.png", _scatter(rows, uc_label, log_y=use_fq))}
    return {"table": table, "paths": paths}


def _scatter(rows: Sequence[Mapping[str, Any]], uc_label: str, log_y: bool) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    skipped = []
    for row in rows:
        if row["uc"] is None or row["ut"] is None:
            skipped.append(row["name"])
            continue
        ax.scatter(row["ut"], row["uc"], s=40)
        ax.annotate(row["name"], (row["ut"], row["uc"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if log_y and any(r["uc"] for r in rows if r["uc"] is not None):
        ax.set_yscale("log")
    ax.set_xlabel("UT: model utility")
    ax.set_ylabel(f"UC: {uc_label}")
    title = "Unlearning completeness vs utility"
    if skipped:
        title += f"\n(not plotted, UC/UT unavailable: {', '.join(skipped)})"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _figure_png(fig)

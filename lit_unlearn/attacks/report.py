"""The robustness section as files: ``robustness.json``, ``robustness.md`` (before/after table and the recovery
curve) and ``robustness.png`` (the recovery curves, labelled axes); and inside an evaluation report
(:func:`attach_to_report`: ``report.json`` gains ``"robustness"``, ``report.md`` the tables and the figure)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

from lit_unlearn.attacks.evaluation import label
from lit_unlearn.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

#: what the before/after table shows (forget metrics, then utility)
TABLE_METRICS = ("forget/rouge_l_recall", "forget/memorization_accuracy", "forget/probability", "forget/truth_ratio",
                 "mia_min_k_auc", "forget_quality", "model_utility")
#: what the recovery curves show
CURVE_METRICS = ("forget/rouge_l_recall", "forget/memorization_accuracy", "forget/probability",
                 "forget/extraction_strength")


def _shown(keys, present) -> list[str]:
    """:data:`TABLE_METRICS` that have a value, then every other metric with one (other benchmarks)."""
    keys = list(keys)
    return [m for m in TABLE_METRICS if m in keys and present(m)] + [m for m in keys if m not in TABLE_METRICS
                                                                     and present(m)]


def _curve_metrics(keys) -> list[str]:
    keys = list(keys)
    shown = [m for m in CURVE_METRICS if m in keys]
    return shown or [m for m in keys if m.startswith("forget/")]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(section: Mapping[str, Any]) -> str:
    """The robustness section as Markdown."""
    lines = [f"# Robustness: {section.get('model', 'model')}", ""]
    ev = section.get("eval", {})
    lines += [f"Data: `{ev.get('source')}`, forget split `{ev.get('forget_split')}`; attacks: "
              f"{', '.join(section.get('attacks', []))}.", ""]
    quant = section.get("quantize")
    if quant:
        results = quant["results"]
        keys = dict.fromkeys(k for r in results.values() for k in r)
        shown = _shown(keys, lambda m: any(r.get(m) is not None for r in results.values()))
        group = quant.get("group_size")
        lines += [f"## Quantization ({quant['backend']}; int4 group size {group if group else 'per channel'})", "",
                  "| precision | " + " | ".join(label(m) for m in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for name, metrics in results.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(m)) for m in shown) + " |")
        lines += ["", "Forget metrics closer to the full-precision model's *before unlearning* mean the quantized"
                  " copy has recovered forgotten knowledge.", ""]
    relearn = section.get("relearn")
    if relearn:
        steps, curve = relearn["steps"], relearn["curve"]
        shown = _shown(curve, lambda m: any(v is not None for v in curve.get(m, [])))
        cfg = relearn["config"]
        lines += [f"## Relearning (lr {cfg['lr']}, batch {cfg['batch_size']}, seed {cfg['seed']})", "",
                  f"Trained on {relearn['trained_on']}; evaluated on "
                  + ("the held-out forget rows." if relearn.get("evaluated_forget_rows") is not None
                     else "the whole forget split."), "",
                  "| step | " + " | ".join(label(m) for m in shown) + " |", "|---|" + "---|" * len(shown)]
        for i, step in enumerate(steps):
            lines.append(f"| {step} | " + " | ".join(_fmt(curve[m][i]) for m in shown) + " |")
        lines.append("| area (normalised) | " + " | ".join(_fmt(relearn["area"].get(m)) for m in shown) + " |")
        lines.append("| gain (area − step 0) | " + " | ".join(_fmt(relearn["gain"].get(m)) for m in shown) + " |")
        lines.append("")
    if section.get("files", {}).get("png"):
        lines += [f"![quantization results and relearning recovery curves]({Path(section['files']['png']).name})", ""]
    lines.append(f"Runtime: {_fmt(section.get('runtime_s'))} s.")
    return "\n".join(lines) + "\n"


def plot_robustness(section: Mapping[str, Any]) -> bytes:
    """PNG bytes: the relearning recovery curves (metric vs relearning step), and the quantization results as
    bars (metric vs precision)."""
    from matplotlib.figure import Figure

    panels = [p for p in ("relearn", "quantize") if section.get(p)]
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 3.6))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "relearn":
            relearn = section["relearn"]
            for m in _curve_metrics(relearn["curve"]):
                values = relearn["curve"].get(m)
                if values and all(v is not None for v in values):
                    ax.plot(relearn["steps"], values, marker="o", label=label(m))
            ax.set_xlabel("relearning steps")
            ax.set_ylabel("forget metric (higher = more recovered)")
            ax.set_title("relearning attack: recovery curve")
        else:
            results = section["quantize"]["results"]
            names = list(results)
            metrics = _curve_metrics(dict.fromkeys(k for r in results.values() for k in r))
            width = 0.8 / max(1, len(metrics))
            for j, m in enumerate(metrics):
                values = [results[n].get(m) or 0.0 for n in names]
                ax.bar([i + j * width for i in range(len(names))], values, width=width, label=label(m))
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
            ax.set_xlabel("weight precision")
            ax.set_ylabel("forget metric")
            ax.set_title(f"quantization attack ({section['quantize']['backend']})")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    if not panels:
        axes[0].set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_robustness(section: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.md`` and ``robustness.png`` to ``out_dir`` (atomically)."""
    out = Path(out_dir)
    data = {k: v for k, v in section.items() if k != "files"}
    png = atomic_write_bytes(out / "robustness.png", plot_robustness(section))
    return {"json": atomic_write_json(out / "robustness.json", data),
            "md": atomic_write_text(out / "robustness.md", render_markdown({**section, "files": {"png": str(png)}})),
            "png": png}


#: the line after which ``report.md`` holds the robustness section (replaced when the attack runs again)
REPORT_MARK = "<!-- robustness section: lit-unlearn attack -->"


def resolve_report(path: str | os.PathLike) -> Path:
    """The ``report.json`` named by ``path`` (the file or its folder); ``FileNotFoundError``/``ValueError``
    naming the path when it is missing or not an evaluation report. Call before any attack runs."""
    file = Path(path)
    if file.is_dir():
        file = file / "report.json"
    if not file.is_file():
        raise FileNotFoundError(f"report: no evaluation report at {str(path)!r} (a report.json of `lit-unlearn"
                                " validate`/the demo, or its folder).")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"report: {file} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or "summary" not in data:
        raise ValueError(f"report: {file} is not an evaluation report (no 'summary'); pass the report.json of the"
                         " attacked model's evaluation.")
    return file


def attach_to_report(section: Mapping[str, Any], report: str | os.PathLike) -> dict[str, Path]:
    """Add the robustness section to an evaluation report: ``report.json`` gains ``"robustness"`` (the section,
    its files as paths relative to the report's folder) and ``report.md`` the before/after tables and the
    figure, after :data:`REPORT_MARK` (an earlier robustness section is replaced). Returns the two paths."""
    file = resolve_report(report)
    folder = file.parent
    data = json.loads(file.read_text(encoding="utf-8"))
    files = {k: os.path.relpath(v, folder) for k, v in (section.get("files") or {}).items()}
    data["robustness"] = {**{k: v for k, v in section.items() if k != "files"}, "files": files}
    markdown = folder / "report.md"
    text = markdown.read_text(encoding="utf-8").split(REPORT_MARK)[0].rstrip("\n") if markdown.is_file() else ""
    body = render_markdown({**section, "files": {}}).replace("\n## ", "\n### ").replace("# Robustness", "## Robustness", 1)
    if files.get("png"):
        body += f"\n![quantization results and relearning recovery curves]({files['png']})\n"
    return {"json": atomic_write_json(file, data),
            "md": atomic_write_text(markdown, (text + "\n\n" if text else "") + REPORT_MARK + "\n" + body)}

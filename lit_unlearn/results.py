"""Results over seeds: aggregate the demo's runs, render the tables and the UC-vs-UT plot, update docs pages.

Every number in ``docs/results.md`` comes from a recorded ``summary.json`` of ``lit-unlearn demo`` through
this module; nothing is typed by hand::

    python -m lit_unlearn.results outputs/demo/summary.json --page docs/results.md --block demo
    python -m lit_unlearn.results outputs/demo/summary.json --compare outputs/demo_1thread/summary.json \\
        --page docs/results.md --block threads

A page holds generated blocks between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``;
``--page`` rewrites only that block (``--check`` fails instead when the page is out of date).

Spread: with n seeds the table gives mean ± sample standard deviation (ddof = 1) and ``summary.json``
keeps min and max too. A difference between two configurations is called *separated* only when their
min–max ranges over the seeds do not overlap; with 3 seeds that is a conservative rule of thumb, not a
significance test, and the pages say so.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: (summary key, column label) of the headline numbers, in table order
METRICS: tuple[tuple[str, str], ...] = (
    ("forget_quality", "FQ"),
    ("model_utility", "MU"),
    ("forget_rouge_l_recall", "forget ROUGE-L"),
    ("forget_memorization_accuracy", "forget MA"),
    ("forget_extraction_likelihood", "forget EL"),
    ("mia_min_k_auc", "MIA min-k AUC"),
)
#: the robustness columns of a record (``record["robustness"]``, :func:`lit_unlearn.attacks.robustness_summary`):
#: (before key, after key, label of the before/after pair)
ROBUSTNESS: tuple[tuple[str, str, str], ...] = (
    ("forget_ma", "int4_forget_ma", "forget MA → int4"),
    ("forget_rouge", "int4_forget_rouge", "forget ROUGE-L → int4"),
    ("relearn_forget_ma_before", "relearn_forget_ma", "held-out MA → relearned"),
    ("relearn_forget_rouge_before", "relearn_forget_rouge", "held-out ROUGE-L → relearned"),
)
ROBUSTNESS_KEYS = tuple(k for before, after, _ in ROBUSTNESS for k in (before, after))
PROTOCOL_TITLES = {
    "budget": "Fixed budget (every objective trains the same number of steps)",
    "matched": "Matched forgetting (each objective trains until the forget-set MA falls to the retain model's)",
}


# ----------------------------------------------------------------------------- statistics


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof = 1; 0 for one value), min, max and n of the non-missing values."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{run name: {protocol: {metric or "steps": spread}}}`` over the seeds of each (name, protocol).

    ``records`` are the demo's per-run entries: ``name``, ``protocol``, ``seed``, ``steps``, ``reached``
    and ``summary`` (the report's headline numbers). Run names keep their first-seen order.
    """
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for record in records:
        grouped.setdefault(record["name"], {}).setdefault(record["protocol"], []).append(record)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, protocols in grouped.items():
        for protocol, rows in protocols.items():
            stats = {key: spread([r["summary"].get(key) for r in rows]) for key, _ in METRICS}
            stats["steps"] = spread([r.get("steps") for r in rows])
            stats["reached"] = sum(bool(r.get("reached", True)) for r in rows)
            stats["seeds"] = [r["seed"] for r in rows]
            attacked = [r["robustness"] for r in rows if r.get("robustness")]
            if attacked:  # the robustness columns (summaries recorded before them have none)
                stats["robustness"] = {key: spread([a.get(key) for a in attacked]) for key in ROBUSTNESS_KEYS}
                stats["robustness"]["relearn_steps"] = attacked[0].get("relearn_steps")
            out.setdefault(name, {})[protocol] = stats
    return out


def separated(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two spreads' min–max ranges do not overlap (both need at least one value)."""
    if not a.get("n") or not b.get("n"):
        return False
    return a["max"] < b["min"] or b["max"] < a["min"]


# ----------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def cell(stats: Mapping[str, Any], digits: int = 3) -> str:
    """``mean ± std`` (or ``–``)."""
    if not stats.get("n"):
        return "–"
    if stats["n"] == 1:
        return _num(stats["mean"], digits)
    return f"{_num(stats['mean'], digits)} ± {_num(stats['std'], digits)}"


def reference_rows(summary: Mapping[str, Any]) -> list[str]:
    rows = []
    for name in ("retain", "target"):
        ref = summary.get("references", {}).get(name)
        if ref is None:
            continue
        rows.append(f"| {name} (reference) | – | " + " | ".join(_num(ref.get(key)) for key, _ in METRICS) + " |")
    return rows


def protocol_table(summary: Mapping[str, Any], protocol: str) -> list[str]:
    """One Markdown table: a row per configuration with mean ± std over seeds."""
    stats = summary["aggregate"]
    steps_label = "steps" if protocol == "budget" else "steps to match (reached)"
    lines = ["| run | " + steps_label + " | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|---:|" + "---:|" * len(METRICS)]
    lines += reference_rows(summary)
    for name, protocols in stats.items():
        if protocol not in protocols:
            continue
        s = protocols[protocol]
        steps = cell(s["steps"], 1)
        if protocol == "matched":
            steps += f" ({s['reached']}/{s['steps']['n']})"
        lines.append(f"| {name} | {steps} | " + " | ".join(cell(s[key]) for key, _ in METRICS) + " |")
    return lines


#: above this many configurations the separated pairs are not listed one by one (only the ties)
MAX_LISTED_CONFIGS = 6


def separation_text(summary: Mapping[str, Any], protocol: str, key: str = "model_utility") -> list[str]:
    """Which configurations differ in ``key`` beyond the seed spread (non-overlapping min–max ranges)."""
    stats = {name: p[protocol][key] for name, p in summary["aggregate"].items() if protocol in p and p[protocol][key]["n"]}
    if len(stats) < 2:
        return []
    label = dict(METRICS)[key]
    ranked = sorted(stats, key=lambda n: -stats[n]["mean"])
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if separated(stats[a], stats[b])]
    total = len(ranked) * (len(ranked) - 1) // 2
    lines = [f"{label} ranking (mean over seeds, highest first): " + ", ".join(
        f"{n} {_num(stats[n]['mean'])}" for n in ranked) + "."]
    unseparated = [f"{a} vs {b}" for i, a in enumerate(ranked) for b in ranked[i + 1:] if (a, b) not in pairs]
    if pairs and len(ranked) > MAX_LISTED_CONFIGS:  # many pairs: the ranking says who is above; list the ties only
        lines.append(f"{len(pairs)} of {total} pairs are separated beyond the seed spread (min–max ranges do not "
                     "overlap): every pair of the ranking except those listed next.")
        if unseparated:
            lines.append("Not separated (cannot be told apart at this scale): " + "; ".join(unseparated) + ".")
    elif pairs:
        lines.append(f"Pairs separated beyond the seed spread ({len(pairs)} of {total}; min–max ranges do not "
                     "overlap): " + "; ".join(f"{a} > {b}" for a, b in pairs) + ".")
        if unseparated:
            lines.append("Not separated (cannot be told apart at this scale): " + "; ".join(unseparated) + ".")
    else:
        lines.append(f"No pair is separated beyond the seed spread: the {len(ranked)} configurations cannot be "
                     f"told apart by {label} at this scale.")
    return lines


def _pair(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    return f"{cell(before)} → {cell(after)}"


def robustness_table(summary: Mapping[str, Any], protocol: str) -> list[str]:
    """The robustness columns of ``protocol``'s configurations (mean ± sd over seeds, before → after) with
    the retain and target models' values as references; empty when no record has them."""
    stats = {name: p[protocol]["robustness"] for name, p in summary["aggregate"].items()
             if "robustness" in p.get(protocol, {})}
    if not stats:
        return []
    steps = next(iter(stats.values())).get("relearn_steps")
    lines = [f"**Robustness of the {protocol}-protocol models**: forget-split MA and ROUGE-L before → after 4-bit"
             f" RTN quantization (whole forget split), and on the held-out half of the forget split before → after"
             f" {steps} relearning steps on the other half (mean ± sd over seeds; higher after = knowledge recovered).",
             "", "| run | " + " | ".join(text for _, _, text in ROBUSTNESS) + " |", "|---|" + "---:|" * len(ROBUSTNESS)]
    for name in ("retain", "target"):
        ref = summary.get("robustness_references", {}).get(name)
        if ref:
            lines.append(f"| {name} (reference) | " + " | ".join(
                f"{_num(ref.get(b))} → {_num(ref.get(a))}" for b, a, _ in ROBUSTNESS) + " |")
    for name, s in stats.items():
        lines.append(f"| {name} | " + " | ".join(_pair(s[b], s[a]) for b, a, _ in ROBUSTNESS) + " |")
    return lines


def recovery_text(summary: Mapping[str, Any], protocol: str) -> list[str]:
    """For each attack, which configurations' forget MA rises beyond the seed spread (after > before and the
    min–max ranges over seeds do not overlap: :func:`separated`)."""
    stats = {name: p[protocol]["robustness"] for name, p in summary["aggregate"].items()
             if "robustness" in p.get(protocol, {})}
    if not stats:
        return []
    steps = next(iter(stats.values())).get("relearn_steps")
    lines = []
    for before, after, attack in (("forget_ma", "int4_forget_ma", "4-bit RTN quantization"),
                                  ("relearn_forget_ma_before", "relearn_forget_ma", f"{steps} relearning steps")):
        usable = {n: s for n, s in stats.items() if s[before]["n"] and s[after]["n"]}
        up = [n for n, s in usable.items() if s[after]["mean"] > s[before]["mean"] and separated(s[before], s[after])]
        rest = [n for n in usable if n not in up]
        if not usable:
            continue
        if up:
            text = (f"After {attack}, forget MA recovers beyond the seed spread (min–max ranges before and after do not"
                    f" overlap) for {len(up)} of {len(usable)} configurations: " + ", ".join(up))
            text += f"; not for {', '.join(rest)}." if rest else "."
        else:
            text = (f"After {attack}, forget MA recovers beyond the seed spread for none of the {len(usable)}"
                    " configurations (the min–max ranges before and after overlap, or MA does not rise).")
        lines.append(text)
    return lines


def robustness_statement(summary: Mapping[str, Any], protocol: str = "matched") -> str:
    """The README's robustness paragraph, generated from a demo summary: the recovery sentences of
    :func:`recovery_text`, whether the quantization finding (4 bits undo weak unlearning) holds here, and which
    configurations relearn beyond what the retain model (never trained on the forget split) learns from the same
    relearning steps. Empty when the summary has no robustness columns."""
    stats = {name: p[protocol]["robustness"] for name, p in summary["aggregate"].items()
             if "robustness" in p.get(protocol, {})}
    if not stats:
        return ""
    seeds = len(summary.get("settings", {}).get("seeds", []))
    lines = [environment_line(summary) + f" {len(stats)} configurations x {seeds} seeds, {protocol} protocol.", ""]
    lines += [f"- {text}" for text in recovery_text(summary, protocol)]
    int4_up = [n for n, s in stats.items() if s["forget_ma"]["n"] and s["int4_forget_ma"]["n"]
               and s["int4_forget_ma"]["mean"] > s["forget_ma"]["mean"] and separated(s["forget_ma"], s["int4_forget_ma"])]
    lines.append("- The quantization finding (Zhang et al., ICLR 2025: 4-bit quantization restores knowledge that"
                 " weak unlearning only suppressed) " + (
                     f"reproduces here for {len(int4_up)} of {len(stats)} configurations ({', '.join(int4_up)})."
                     if int4_up else f"does not reproduce at this scale: no configuration's forget MA rises beyond the"
                     f" seed spread after 4-bit RTN quantization."))
    retain = summary.get("robustness_references", {}).get("retain", {})
    base, after = retain.get("relearn_forget_ma_before"), retain.get("relearn_forget_ma")
    if base is not None and after is not None:
        above = [n for n, s in stats.items() if s["relearn_forget_ma"]["n"] and s["relearn_forget_ma"]["min"] > after]
        steps = next(iter(stats.values())).get("relearn_steps")
        lines.append(
            f"- Reference: the retain model, which never saw the forget split, goes from held-out forget MA "
            f"{_num(base)} to {_num(after)} after the same {steps} relearning steps (what relearning teaches any model)."
            " Above that level on every seed, i.e. the unlearned knowledge itself comes back: " +
            (f"{', '.join(above)} ({len(above)} of {len(stats)})." if above else "none of the configurations."))
    return "\n".join(lines) + "\n"


def environment_line(summary: Mapping[str, Any]) -> str:
    env = summary.get("environment", {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers", "lightning") if k in packages)
    return (f"Recorded {summary.get('date', '?')} on {env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs), "
            f"torch threads: {env.get('torch_num_threads', '?')}, Python {env.get('python', '?')}, {versions}; "
            f"data `{summary.get('data_version', '?')}`.")


def render(summary: Mapping[str, Any]) -> str:
    """The results section of one demo run: settings, environment, a table per protocol, the separations."""
    settings = summary.get("settings", {})
    seeds = settings.get("seeds", [])
    lines = [environment_line(summary), "",
             f"Seeds {', '.join(map(str, seeds))} (each seed orders the batches and seeds dropout, RMU's control "
             f"vector and MRD's perturbations; the target and retain models are the same for every seed). "
             f"Cells: mean ± standard deviation over the {len(seeds)} seeds. Budget: "
             f"{settings.get('unlearn_epochs', '?')} epochs of batch {settings.get('batch_size', '?')}; matched: "
             f"stop when the forget-set MA ≤ the retain model's "
             f"({_num(summary.get('matched_threshold'))}), checked every {settings.get('matched_check_every', '?')} "
             f"steps, at most {settings.get('matched_max_epochs', '?')} epochs.", ""]
    for protocol in settings.get("protocols", ["budget"]):
        lines += [f"**{PROTOCOL_TITLES.get(protocol, protocol)}**", "", *protocol_table(summary, protocol), ""]
        lines += [f"- {text}" for text in separation_text(summary, protocol)] + [""]
        if protocol == "matched":
            lines += [f"- {text}" for text in separation_text(summary, protocol, "forget_quality")] + [""]
        table = robustness_table(summary, protocol)
        if table:
            lines += [*table, ""] + [f"- {text}" for text in recovery_text(summary, protocol)] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _setting(summary: Mapping[str, Any]) -> str:
    env = summary.get("environment", {})
    return (f"{env.get('cpu', '?')}, {env.get('torch_num_threads', '?')} torch thread(s), "
            f"recorded {summary.get('date', '?')}")


def render_comparison(base: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """The same demo in another setting (thread count or processor): per configuration and protocol, the
    change of MU and FQ against the seed spread. A is ``base``, B is ``other``."""
    env0, env1 = base.get("environment", {}), other.get("environment", {})
    changed = [what for what, key in (("torch thread count", "torch_num_threads"), ("processor", "cpu"))
               if env0.get(key) != env1.get(key)]
    lines = [f"A: {_setting(base)}. B: {_setting(other)}. What differs: {' and '.join(changed) or 'nothing recorded'}"
             " (same code, lock file, data and seeds). Δ = mean of B − mean of A; 'within spread' when |Δ| ≤ the "
             "larger of the two standard deviations over seeds.", "",
             "| run | protocol | MU (A) | MU (B) | Δ MU | FQ (A) | FQ (B) | Δ FQ |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    within = total = 0
    for name, protocols in base["aggregate"].items():
        for protocol, s in protocols.items():
            o = other.get("aggregate", {}).get(name, {}).get(protocol)
            if o is None:
                continue
            cells = []
            for key in ("model_utility", "forget_quality"):
                a, b = s[key], o[key]
                if not a["n"] or not b["n"]:
                    cells += [cell(a), cell(b), "–"]
                    continue
                delta = b["mean"] - a["mean"]
                ok = abs(delta) <= max(a["std"], b["std"])
                within += ok
                total += 1
                cells += [cell(a), cell(b), f"{delta:+.3f} ({'within spread' if ok else 'beyond spread'})"]
            lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    lines += ["", f"{within} of {total} differences lie within the seed spread."]
    return "\n".join(lines) + "\n"


render_thread_comparison = render_comparison  # the name of the first release of this page


# ----------------------------------------------------------------------------- plot


def plot_uc_ut(summary: Mapping[str, Any]) -> bytes:
    """UC (forget quality, log scale) against UT (model utility), one panel per protocol: each configuration's
    mean with ±1 standard deviation error bars, and every seed as a faint dot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    protocols = list(summary.get("settings", {}).get("protocols", ["budget"]))
    fig = Figure(figsize=(6 * len(protocols), 4.6))
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    colors = {}
    palette = matplotlib.colormaps["tab20"]
    for ax, protocol in zip(axes, protocols):
        for name, ref in summary.get("references", {}).items():
            if ref.get("model_utility") is not None and ref.get("forget_quality"):
                ax.scatter(ref["model_utility"], ref["forget_quality"], marker="*", s=120, color="black")
                ax.annotate(name, (ref["model_utility"], ref["forget_quality"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        for record in summary.get("records", []):
            if record["protocol"] != protocol:
                continue
            color = colors.setdefault(record["name"], palette(len(colors) % 20))
            fq, mu = record["summary"].get("forget_quality"), record["summary"].get("model_utility")
            if fq and mu is not None:
                ax.scatter(mu, fq, s=12, alpha=0.35, color=color)
        for name, protocols_stats in summary["aggregate"].items():
            s = protocols_stats.get(protocol)
            if s is None or not s["forget_quality"]["n"] or not s["model_utility"]["n"]:
                continue
            color = colors.setdefault(name, palette(len(colors) % 20))
            mu, fq = s["model_utility"], s["forget_quality"]
            ax.errorbar(mu["mean"], fq["mean"], xerr=mu["std"], yerr=[[min(fq["std"], fq["mean"] * 0.99)], [fq["std"]]],
                        fmt="o", color=color, capsize=3, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("UT: model utility")
        ax.set_ylabel("UC: forget quality (log)")
        ax.set_title(PROTOCOL_TITLES.get(protocol, protocol).split(" (")[0] + " (mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- pages


def _block_pattern(block: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN GENERATED: {re.escape(block)} -->\n)(.*?)(<!-- END GENERATED: {re.escape(block)} -->)",
                      re.DOTALL)


def replace_block(page_text: str, block: str, content: str) -> str:
    """``page_text`` with the generated block ``block`` replaced by ``content`` (the markers must exist)."""
    pattern = _block_pattern(block)
    if not pattern.search(page_text):
        raise ValueError(f"no generated block {block!r}: the page needs the lines '<!-- BEGIN GENERATED: {block} -->' "
                         f"and '<!-- END GENERATED: {block} -->'")
    return pattern.sub(lambda m: m.group(1) + content + m.group(3), page_text, count=1)


def load_summary(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no demo summary here; run `lit-unlearn demo --out {p.parent}` first")
    summary = json.loads(p.read_text(encoding="utf-8"))
    if "aggregate" not in summary:
        raise ValueError(f"{p} is not a summary of this demo version (no 'aggregate'); rerun `lit-unlearn demo`")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit_unlearn.results",
                                     description="Render a demo summary.json as Markdown (results over seeds).")
    parser.add_argument("summary", help="the demo's summary.json (or its folder)")
    parser.add_argument("--compare", help="a second summary.json of the same demo in another setting (thread count, processor)")
    parser.add_argument("--page", help="a Markdown page whose generated block to rewrite (default: print)")
    parser.add_argument("--block", default="demo", help="the generated block's name (default: demo)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page's block differs, write nothing")
    parser.add_argument("--section", choices=("all", "robustness"), default="all",
                        help="robustness: only the generated robustness statement (the README's block)")
    args = parser.parse_args(argv)
    summary = load_summary(args.summary)
    if args.compare:
        text = render_comparison(summary, load_summary(args.compare))
    elif args.section == "robustness":
        text = robustness_statement(summary)
        if not text:
            parser.error(f"{args.summary} has no robustness columns (run the demo without --no-robustness)")
    else:
        text = render(summary)
    if not args.page:
        sys.stdout.write(text)
        return 0
    page = Path(args.page)
    old = page.read_text(encoding="utf-8")
    new = replace_block(old, args.block, text)
    if args.check:
        if new != old:
            print(f"{page}: block {args.block!r} is out of date; rerun without --check", file=sys.stderr)
            return 1
        return 0
    from lit_unlearn.utils.io import atomic_write_text

    atomic_write_text(page, new)
    print(f"{page}: block {args.block!r} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

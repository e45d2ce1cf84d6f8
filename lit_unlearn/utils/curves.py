"""Plot a run's curves from the ``metrics.csv`` that Lightning's ``CSVLogger`` writes.

The shipped configs log through :class:`~lit_unlearn.loggers.RunCSVLogger`, so every ``lit-unlearn fit``
leaves ``<default_root_dir>/lightning_logs/version_<n>/metrics.csv``: one row per logging call, a ``step``
column, an ``epoch`` column and one column per logged key (``train/loss``, ``train/forget_loss``,
``eval/...``), empty where a row did not log that key.

    >>> from lit_unlearn.utils.curves import latest_metrics_csv, plot_curves
    >>> plot_curves(latest_metrics_csv("outputs/tofu_mini/unlearn"), "curves.png")  # doctest: +SKIP

or from the shell: ``python -m lit_unlearn.utils.curves outputs/tofu_mini/unlearn --out curves.png``.
Reading is plain ``csv`` (no pandas); plotting uses matplotlib's object API (no pyplot state, no display).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
from pathlib import Path

#: columns of ``metrics.csv`` that index the rows rather than hold a metric
INDEX_COLUMNS = ("step", "epoch")


def read_metrics(metrics_csv: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of a CSVLogger ``metrics.csv``, in file order; empty cells skipped.

    Raises ``FileNotFoundError``/``ValueError`` naming the file when it is missing, has no ``step`` column or
    holds a value that is not a number (with its row).
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file (a CSVLogger writes <save_dir>/<name>/version_<n>/"
                                "metrics.csv; the run needs a logger, see configs/tofu_mini/unlearn.yaml)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'step' column (header {reader.fieldnames}); not a CSVLogger metrics.csv")
        series: dict[str, list[tuple[int, float]]] = {k: [] for k in reader.fieldnames if k not in INDEX_COLUMNS}
        for row_number, row in enumerate(reader, start=2):  # line 1 is the header
            try:
                step = int(float(row["step"]))
                for key in series:
                    cell = (row.get(key) or "").strip()
                    if cell:
                        series[key].append((step, float(cell)))
            except ValueError as error:
                raise ValueError(f"{path}, line {row_number}: {error}") from None
    return {k: v for k, v in series.items() if v}


def latest_metrics_csv(run_dir: str | os.PathLike, name: str = "lightning_logs") -> Path:
    """``<run_dir>/<name>/version_<n>/metrics.csv`` of the highest ``n`` (the latest run in that folder)."""
    root = Path(run_dir) / name
    versions = []
    for folder in root.glob("version_*"):
        match = re.fullmatch(r"version_(\d+)", folder.name)
        if match and (folder / "metrics.csv").is_file():
            versions.append((int(match.group(1)), folder))
    if not versions:
        raise FileNotFoundError(f"{root}: no version_<n>/metrics.csv; was the run logged with a CSVLogger "
                                f"(trainer.logger) and default_root_dir {str(run_dir)!r}?")
    return max(versions)[1] / "metrics.csv"


def plot_curves(
    metrics_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    keys: list[str] | None = None,
    columns: int = 2,
) -> Path:
    """One panel per metric (value against optimizer step), written to ``out_png``; returns its path.

    Args:
        metrics_csv: a CSVLogger ``metrics.csv`` (see :func:`latest_metrics_csv`).
        out_png: the image to write (its folder is created).
        keys: the metrics to draw, in order (default: every logged metric, ``train/*`` first).
        columns: panels per row.
    """
    from matplotlib.figure import Figure

    series = read_metrics(metrics_csv)
    if keys is None:
        keys = sorted(series, key=lambda k: (not k.startswith("train/"), k))
    missing = [k for k in keys if k not in series]
    if missing:
        raise ValueError(f"{metrics_csv}: no values logged for {missing}; logged: {sorted(series)}")
    if not keys:
        raise ValueError(f"{metrics_csv}: no metric has a value yet (set trainer.log_every_n_steps below the "
                         "number of steps, or run longer)")
    columns = max(1, min(columns, len(keys)))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(4.5 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m lit_unlearn.utils.curves",
                                     description="Plot a run's logged curves (CSVLogger metrics.csv) to a PNG.")
    parser.add_argument("run", help="a metrics.csv, or a run's default_root_dir (its latest lightning_logs version)")
    parser.add_argument("--out", default=None, help="the PNG to write (default: curves.png next to metrics.csv)")
    parser.add_argument("--keys", nargs="*", default=None, help="metrics to draw (default: all)")
    args = parser.parse_args(argv)
    source = Path(args.run)
    metrics_csv = source if source.is_file() else latest_metrics_csv(source)
    out = plot_curves(metrics_csv, args.out or metrics_csv.with_name("curves.png"), args.keys)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

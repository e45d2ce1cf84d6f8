"""``lit-unlearn report RUN1 RUN2 ... --out DIR``: compare evaluation reports.

Each RUN is a ``report.json``, a folder holding one, or a run folder with ``report/report.json``. Writes
``comparison.md``, ``comparison.json`` and ``uc_ut.png`` (unlearning completeness vs model utility) to DIR.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn report",
        description="Compare the report.json files of several evaluated runs: a Markdown/JSON table and a"
        " UC-vs-UT scatter (UC = forget quality, or 1 − forget ROUGE-L recall when a run lacks it).",
    )
    parser.add_argument("runs", nargs="+", help="report.json files or folders that hold one")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--names", nargs="+", default=None, help="a display name per run (default: folder names)")
    return parser


def report_main(argv: list[str] | None = None) -> dict:
    from lit_unlearn.evaluation.report import compare_reports

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.names is not None and len(args.names) != len(args.runs):
        build_parser().error(f"--names gives {len(args.names)} names for {len(args.runs)} runs.")
    try:
        result = compare_reports(args.runs, args.out, names=args.names)
    except (FileNotFoundError, ValueError) as err:
        print(f"lit-unlearn report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(open(result["paths"]["md"], encoding="utf-8").read())
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    return result


if __name__ == "__main__":
    report_main()

"""The ``lit-unlearn`` command (``lit-unlearn --help`` lists the commands without importing Lightning).

* ``lit-unlearn fit|validate|test --config ...`` — LightningCLI (:mod:`lit_unlearn.lightning_cli`): every
  module under :mod:`lit_unlearn.objectives` is selectable by short name (``--model NPO``), every datamodule
  under :mod:`lit_unlearn.data` too (``--data UnlearningDataModule``); ``data.tokenizer`` is linked to
  ``model.tokenizer`` so the two always agree. ``--model my_module.Class`` imports from the working directory;
  installed packages add objectives through the ``lit_unlearn.objectives`` entry points
  (:mod:`lit_unlearn.registry`); ``fit --model NPO --help`` prints that objective's parameters.
* ``lit-unlearn demo`` — the embedded-default pipeline (see :mod:`lit_unlearn.pipeline`).
* ``lit-unlearn demo-benchmarks`` — the same on builtin MUSE and WMDP data (see :mod:`lit_unlearn.benchmark_demo`).
* ``lit-unlearn report RUN1 RUN2 ... --out DIR`` — compare evaluation reports (table + UC-vs-UT scatter).
* ``lit-unlearn export --ckpt_path CKPT --out DIR`` — a Hugging Face folder from a checkpoint file or a
  DeepSpeed ZeRO checkpoint folder (see :mod:`lit_unlearn.export`).
* ``lit-unlearn attack --model MODEL --attacks relearn,quantize --out DIR`` — quantization and relearning
  attacks on copies of a model (see :mod:`lit_unlearn.attacks`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

# Stdlib only at import time: `lit-unlearn --help` must not import Lightning or transformers (seconds). The
# Lightning commands live in lit_unlearn.lightning_cli (UnlearnCLI, lightning_cli: edit them there), the other
# commands in the modules named by COMMANDS; each is imported when its command runs.

PROG = "lit-unlearn"
LIGHTNING_COMMANDS = ("fit", "validate", "test")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, a one-line summary, and ``module:function(argv)`` (None: a LightningCLI one)."""

    name: str
    summary: str
    target: str | None = None


#: every subcommand, in the order the help lists them (a new one, e.g. ``attack``, is one more entry)
COMMANDS: tuple[Command, ...] = (
    Command("fit", "train or unlearn: a model (--model OBJECTIVE) on a datamodule (--data), set by --config YAML"),
    Command("validate", "evaluate a model on the TOFU suite in a validation loop (report.json, report.md)"),
    Command("test", "the same evaluation in a test loop"),
    Command("demo", "the builtin end-to-end run: data, target and retain models, unlearning, evaluation, report",
            "lit_unlearn.pipeline:demo_main"),
    Command("demo-benchmarks", "the builtin demo on MUSE and WMDP: trained target models, one objective each, reports",
            "lit_unlearn.benchmark_demo:demo_benchmarks_main"),
    Command("report", "compare the report.json of several runs: a table and a utility-vs-forgetting scatter",
            "lit_unlearn.evaluation.cli:report_main"),
    Command("export", "write a Hugging Face folder from a Lightning checkpoint or a DeepSpeed ZeRO checkpoint",
            "lit_unlearn.export:export_main"),
    Command("attack", "robustness of an unlearned model: quantization and relearning attacks, before/after table",
            "lit_unlearn.attacks.cli:attack_main"),
)
EXTRA_COMMANDS = tuple(c.name for c in COMMANDS if c.target is not None)


def __getattr__(name: str):
    # `from lit_unlearn.cli import lightning_cli, UnlearnCLI` keeps working (imports Lightning on first use)
    if name in ("UnlearnCLI", "lightning_cli"):
        from lit_unlearn import lightning_cli as module

        return getattr(module, name)
    raise AttributeError(f"module 'lit_unlearn.cli' has no attribute {name!r}")


def top_level_help() -> str:
    """The text of ``lit-unlearn --help`` (built without importing Lightning)."""
    from lit_unlearn import __version__
    from lit_unlearn.registry import ENTRY_POINT_GROUP

    width = max(len(c.name) for c in COMMANDS)
    commands = "\n".join(f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS)
    return f"""{PROG}: machine unlearning for LLMs on PyTorch Lightning (lit_unlearn {__version__})

usage: {PROG} COMMAND [OPTIONS]

commands:
{commands}

help:
  {PROG} COMMAND --help                 the options of one command
  {PROG} fit --model NPO --help         the parameters of one objective (same as: fit --model.help NPO)
  {PROG} fit --config configs/tofu_mini/unlearn.yaml --print_config    the full resolved configuration
  negative numbers: --model.init_args.lr=-1e-3 (the separate form --model.init_args.lr -1e-3 works too)

objectives (--model NAME): the classes of lit_unlearn.objectives (GA, GradDiff, NPO, SimNPO, IdkDPO, RMU, ...),
  your own as --model my_module.MyObjective (my_module.py in the current directory or on PYTHONPATH), or
  any installed package's objectives registered under the entry-point group '{ENTRY_POINT_GROUP}'.

curves: the shipped configs log train/* and eval/* to DEFAULT_ROOT_DIR/lightning_logs/version_N/metrics.csv;
  plot them with: python -m lit_unlearn.utils.curves DEFAULT_ROOT_DIR --out curves.png
"""


def objective_help_argv(argv: list[str]) -> list[str] | None:
    """``fit --model NPO --help`` -> ``fit --model.help NPO`` (LightningCLI's help on one class's init
    parameters); None when ``argv`` asks for no help or names no ``--model``. A ``--model`` YAML file is
    replaced by its ``class_path``."""
    if not argv or argv[0] not in LIGHTNING_COMMANDS or not any(a in ("-h", "--help") for a in argv[1:]):
        return None
    model = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--model" and i + 1 < len(argv):
            model = argv[i + 1]
        elif arg.startswith("--model="):
            model = arg.split("=", 1)[1]
    if not model:
        return None
    if model.endswith((".yaml", ".yml")) and os.path.isfile(model):
        import yaml

        with open(model, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
        if not (isinstance(loaded, dict) and isinstance(loaded.get("class_path"), str)):
            return None
        model = loaded["class_path"]
    return [argv[0], "--model.help", model]


def make_cwd_importable() -> None:
    """Append the working directory to ``sys.path`` (as ``python -m`` puts it first), so ``--model
    my_module.Class`` finds ``./my_module.py`` from the console script too. Appended, so a local file cannot
    shadow an installed package."""
    cwd = os.getcwd()
    if "" not in sys.path and not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.append(cwd)


def _call(target: str, argv: list[str]):
    import importlib

    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(argv)


def main(argv: list[str] | None = None) -> None:
    from lit_unlearn.utils.cpu_kernels import pin_portable_cpu_kernels

    pin_portable_cpu_kernels()  # before anything imports torch: AVX2 kernels on every x86 CPU
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return
    if argv[0] in ("-V", "--version"):
        from lit_unlearn import __version__

        print(f"lit_unlearn {__version__}")
        return
    command = next((c for c in COMMANDS if c.name == argv[0]), None)
    if command is None and not argv[0].startswith("-"):
        import difflib

        close = difflib.get_close_matches(argv[0], [c.name for c in COMMANDS], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"{PROG}: unknown command {argv[0]!r}.{hint} Commands: {', '.join(c.name for c in COMMANDS)} "
              f"(see `{PROG} --help`).", file=sys.stderr)
        raise SystemExit(2)
    from lit_unlearn.utils.warnings import silence_known_noise

    silence_known_noise()
    make_cwd_importable()
    if command is not None and command.target is not None:
        _call(command.target, argv[1:])
    else:
        from lit_unlearn.registry import load_objective_plugins

        load_objective_plugins()
        from lit_unlearn.lightning_cli import lightning_cli

        lightning_cli(objective_help_argv(argv) or argv)
    _release_process_groups()


def _release_process_groups() -> None:
    """Under torchrun: destroy the process groups before exit (see strategies.release_process_groups)."""
    if "torch.distributed" in sys.modules:  # nothing to do (and no torch import) for single-process commands
        from lit_unlearn.strategies import release_process_groups

        release_process_groups()


if __name__ == "__main__":
    main()

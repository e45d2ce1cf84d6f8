"""The ``fit``/``validate``/``test`` commands: Lightning's ``LightningCLI`` set up for lit_unlearn.

Kept apart from :mod:`lit_unlearn.cli` (the ``lit-unlearn`` front door) because importing Lightning and every
module takes seconds: the front door imports this module only for these three commands.

* every module under :mod:`lit_unlearn.objectives` (and every objective registered by an installed plugin,
  see :mod:`lit_unlearn.registry`) is selectable by class name (``--model NPO``), every datamodule under
  :mod:`lit_unlearn.data` too (``--data UnlearningDataModule``);
* ``data.tokenizer`` is linked to ``model.tokenizer`` so the two always agree;
* a logger left without ``save_dir`` (the shipped configs'
  :class:`~lit_unlearn.loggers.RunCSVLogger`) writes under ``trainer.default_root_dir``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch.cli import LightningCLI

import lit_unlearn.data  # noqa: F401  (registers the datamodules for short names)
import lit_unlearn.evaluation.benchmarks.muse  # noqa: F401  (MUSEDataModule by short name)
import lit_unlearn.evaluation.benchmarks.wmdp  # noqa: F401  (WMDPDataModule by short name)
import lit_unlearn.objectives  # noqa: F401  (registers the objectives for short names)
from lit_unlearn.cli_support import VersionedSaveConfigCallback
from lit_unlearn.data.tofu import TOFUDataModule
from lit_unlearn.objectives.lm import CausalLMModule


def fill_logger_save_dirs(trainer_config: Any) -> None:
    """Set ``save_dir`` of every configured logger that has it ``None`` to ``trainer.default_root_dir``
    (the current directory when that is unset too), in place on the parsed ``trainer`` namespace."""
    loggers = trainer_config.get("logger")
    if not isinstance(loggers, list):
        loggers = [loggers]
    root = trainer_config.get("default_root_dir") or os.getcwd()
    for logger in loggers:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") is None:
            init_args["save_dir"] = str(root)


class UnlearnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        from lit_unlearn.utils.environment import DEFAULT_NUM_THREADS, NUM_THREADS_ENV

        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")
        parser.add_argument(
            "--num_threads", type=Optional[int], default=None,
            help=f"torch CPU threads of this run (default: ${NUM_THREADS_ENV} or {DEFAULT_NUM_THREADS}); results "
                 "are bit-reproducible only at the same thread count, so it is fixed and recorded")
        # deterministic kernels where torch has them; a warning (not an error) for ops that have none
        parser.set_defaults({"trainer.deterministic": "warn"})
        parser.add_argument(
            "--strict", type=bool, default=False,
            help="a retain report (eval_config.retain_report) of other data than this run (source, data version,"
                 " forget split or samples) is an error; by default forget quality is then 'unavailable' with a"
                 " warning (see docs/reliability.md)")

    def before_instantiate_classes(self) -> None:
        from lit_unlearn.utils.environment import set_num_threads

        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        set_num_threads(config.get("num_threads"))
        if config.get("trainer") is not None:
            fill_logger_save_dirs(config["trainer"])

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("strict") and self.model is not None:
            self.model.strict_evaluation = True

    def parse_arguments(self, parser, args) -> None:
        # the arguments always arrive explicitly (lit_unlearn.cli.main passes sys.argv[1:]); Lightning warns
        # about "args and command line" whenever sys.argv also holds arguments, so hide them while parsing.
        # `--opt -1e-3` is joined to `--opt=-1e-3` (argparse reads -1e-3 as an option), see cli_support.
        import sys
        from unittest import mock

        from lit_unlearn.cli_support import join_negative_values

        if args is None:
            args = sys.argv[1:]
        if isinstance(args, (list, tuple)):
            args = join_negative_values(list(args))
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # an empty/truncated/foreign --ckpt_path is named before Lightning unpickles it (a bare EOFError)
        from lit_unlearn.cli_support import check_ckpt_path

        if self.config.get("subcommand"):
            try:
                check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
            except (FileNotFoundError, ValueError) as err:
                self.parser.error(f"--ckpt_path: {err}")  # usage + message, exit code 2
        super()._parse_ckpt_path()


def lightning_cli(args: list[str] | None = None, run: bool = True) -> UnlearnCLI:
    return UnlearnCLI(
        CausalLMModule,
        TOFUDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=VersionedSaveConfigCallback,  # never overwrites a previous run's config.yaml
        args=args,
        run=run,
    )

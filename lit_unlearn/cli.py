"""The ``lit-unlearn`` command.

* ``lit-unlearn fit|validate|test --config ...`` — LightningCLI: every module under
  :mod:`lit_unlearn.objectives` is selectable by short name (``--model NPO``), every datamodule under
  :mod:`lit_unlearn.data` too (``--data UnlearningDataModule``); ``data.tokenizer`` is linked to
  ``model.tokenizer`` so the two always agree.
* ``lit-unlearn demo`` — the embedded-default pipeline (see :mod:`lit_unlearn.pipeline`).
* ``lit-unlearn report RUN1 RUN2 ... --out DIR`` — compare evaluation reports (table + UC-vs-UT scatter).
* ``lit-unlearn export --ckpt_path CKPT --out DIR`` — a Hugging Face folder from a checkpoint file or a
  DeepSpeed ZeRO checkpoint folder (see :mod:`lit_unlearn.export`).
"""
from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

import lit_unlearn.data  # noqa: F401  (registers the datamodules for short names)
import lit_unlearn.objectives  # noqa: F401  (registers the objectives for short names)
from lit_unlearn.data.tofu import TOFUDataModule
from lit_unlearn.objectives.lm import CausalLMModule

EXTRA_COMMANDS = ("demo", "report", "export")


class UnlearnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")


def lightning_cli(args: list[str] | None = None, run: bool = True) -> UnlearnCLI:
    return UnlearnCLI(
        CausalLMModule,
        TOFUDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from lit_unlearn.pipeline import demo_main

        demo_main(argv[1:])
        return
    if argv and argv[0] == "report":
        from lit_unlearn.evaluation.cli import report_main

        report_main(argv[1:])
        return
    if argv and argv[0] == "export":
        from lit_unlearn.export import export_main

        export_main(argv[1:])
        return
    lightning_cli(argv)


if __name__ == "__main__":
    main()

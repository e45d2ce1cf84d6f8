"""The shipped configs' logger: Lightning's ``CSVLogger`` placed under the run's ``default_root_dir``.

``RunCSVLogger`` differs from ``lightning.pytorch.loggers.CSVLogger`` only in that ``save_dir`` may be left
out: the ``lit-unlearn`` command then fills in ``trainer.default_root_dir`` (so ``--trainer.default_root_dir
X`` moves the logs with the run), and plain Python falls back to the current directory, as the Trainer's own
``default_root_dir`` does. Each run writes ``<save_dir>/<name>/version_<n>/metrics.csv`` (one row per logging
step, a column per logged key such as ``train/loss``) and ``hparams.yaml``; plot it with
:func:`lit_unlearn.utils.curves.plot_curves`.
"""
from __future__ import annotations

import os

from lightning.pytorch.loggers import CSVLogger


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``save_dir`` defaults to the run's ``default_root_dir`` (CLI) or the current directory.

    Args:
        save_dir: the folder holding ``name/version_<n>/``; ``None``: see the module docstring.
        name, version, prefix, flush_logs_every_n_steps: as in Lightning's ``CSVLogger``.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir=os.getcwd() if save_dir is None else save_dir, name=name, version=version,
                         prefix=prefix, flush_logs_every_n_steps=flush_logs_every_n_steps)

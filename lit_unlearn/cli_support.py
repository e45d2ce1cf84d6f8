"""Helpers of the ``lit-unlearn`` LightningCLI that keep a user's files and mistakes safe.

* :class:`VersionedSaveConfigCallback` — the run's ``config.yaml`` never overwrites a previous run's: when
  ``<log_dir>/config.yaml`` exists, this run's config is saved as ``config_v2.yaml``, ``config_v3.yaml`` ...
  (the name is chosen on rank 0 and broadcast).
* :func:`join_negative_values` — ``--model.init_args.lr -1e-3`` becomes ``--model.init_args.lr=-1e-3``:
  argparse takes a value such as ``-1e-3`` for an option flag (its negative-number pattern knows no
  exponents), so the separate form would fail with a confusing message.
* :func:`check_ckpt_path` — a ``--ckpt_path`` that is empty, truncated or not a checkpoint is reported with
  the file's name before Lightning tries to unpickle it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

#: a negative decimal number, with optional fraction and exponent (what argparse mistakes for a flag)
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$", re.IGNORECASE)


def join_negative_values(args: list[str]) -> list[str]:
    """Write ``--option -1e-3`` as ``--option=-1e-3`` (a long option followed by a negative number).

    Only long options without ``=`` are joined, and only when the next token is a plain negative number, which
    can never be an option name.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if (arg.startswith("--") and "=" not in arg and len(arg) > 2 and i + 1 < len(args)
                and NEGATIVE_NUMBER.match(args[i + 1])):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def next_free_name(directory: str, filename: str, exists) -> str:
    """``filename`` if ``exists(directory/filename)`` is false, else the first free ``stem_vN.suffix`` (N ≥ 2)."""
    if not exists(str(Path(directory) / filename)):
        return filename
    stem, suffix = Path(filename).stem, Path(filename).suffix
    n = 2
    while exists(str(Path(directory) / f"{stem}_v{n}{suffix}")):
        n += 1
    return f"{stem}_v{n}{suffix}"


class VersionedSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` that saves under a new versioned name instead of overwriting.

    A second run into the same ``default_root_dir`` (without a logger that versions its folder) keeps the
    first run's ``config.yaml`` and writes ``config_v2.yaml`` (then ``config_v3.yaml`` ...), with a message.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir  # broadcasts the directory
            name = None
            if trainer.is_global_zero:
                fs = get_filesystem(log_dir)
                name = next_free_name(log_dir, self.config_filename, fs.isfile)
            name = trainer.strategy.broadcast(name)
            if name != self.config_filename:
                rank_zero_info(f"{Path(log_dir) / self.config_filename} holds a previous run's config; this run's"
                               f" config is saved as {Path(log_dir) / name}.")
                self.config_filename = name
            self.overwrite = False
        super().setup(trainer, pl_module, stage)


def check_ckpt_path(ckpt_path: Any) -> None:
    """Raise a clear error for a ``--ckpt_path`` that is not a checkpoint; ``"last"``/``"best"``/None pass."""
    if not ckpt_path or not isinstance(ckpt_path, (str, Path)) or str(ckpt_path) in ("last", "best", "hpc",
                                                                                      "registry"):
        return
    if "://" in str(ckpt_path):  # remote (fsspec) paths are Lightning's to open
        return
    from lit_unlearn.utils.checkpoints import check_checkpoint_path

    check_checkpoint_path(ckpt_path)

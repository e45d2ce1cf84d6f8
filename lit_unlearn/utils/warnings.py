"""Targeted filters for known third-party noise, installed by the ``lit-unlearn`` command at start-up.

Only messages listed here are dropped; every other warning and log record passes unchanged:

* Lightning's "💡 Tip: ... litlogger / litmodels ..." advertisement, logged (INFO) by every ``Trainer``.
* torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated", raised from Lightning's own
  pytree helper (nothing a user can change).
* DeepSpeed's "Setting accelerator to CPU" notice on machines without a GPU.

Stdlib only, so the command's top-level help stays quick to import.
"""
from __future__ import annotations

import logging
import re
import warnings

#: (category, message regex) of the third-party warnings dropped by :func:`silence_known_noise`
NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)

#: (logger name, message regex) of the third-party log records dropped by :func:`silence_known_noise`;
#: Lightning's rank-zero helpers log through whichever of these loggers was imported last
NOISY_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: .*(litlogger|litmodels)"),
    ("lightning.fabric.utilities.rank_zero", r"💡 Tip: .*(litlogger|litmodels)"),
    ("lightning_utilities.core.rank_zero", r"💡 Tip: .*(litlogger|litmodels)"),
    ("DeepSpeed", r"Setting accelerator to CPU"),
)


class DropMatching(logging.Filter):
    """A logging filter that drops the records whose formatted message matches ``pattern`` (``re.search``)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return self.pattern.search(message) is None


def silence_known_noise() -> None:
    """Install the filters of :data:`NOISY_WARNINGS` and :data:`NOISY_LOG_RECORDS` (idempotent)."""
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in NOISY_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(DropMatching(pattern))

"""The objective record saved in a model folder's ``lit_unlearn.json``: which class trained it, with what.

``objective_record(module)`` is ``{"class_path": "pkg.module.Class", "init_args": {...}}`` — the same shape as
a ``--model`` section of a ``lit-unlearn`` config, so the record can be pasted back as one. ``init_args`` are
the module's ``self.hparams`` (its ``__init__`` arguments, saved by ``save_hyperparameters``) made JSON-safe;
Lightning's private entries (names starting with ``_``, e.g. the CLI's ``_instantiator``) are left out.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON types: dataclasses and mappings -> dicts, sequences -> lists, paths -> str,
    non-finite floats -> str (``"nan"``, ``"inf"``), anything else not JSON-native -> ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return jsonable(item())
    return repr(value)


def objective_record(module: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a LightningModule (see the module docstring)."""
    cls = type(module)
    hparams = dict(getattr(module, "hparams", {}) or {})
    return {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": {k: jsonable(v) for k, v in sorted(hparams.items()) if not str(k).startswith("_")},
    }


def coerce_settings(cls: type, value: Any, what: str, unknown: str, mapping: type = Mapping) -> Any:
    """A settings dataclass from ``value``: ``None`` → the defaults, an instance of ``cls`` → itself, a ``mapping``
    → ``cls(**value)`` once every key is a field (else ``ValueError(unknown.format(unknown=..., known=...))``).
    Anything else is a ``TypeError`` naming ``what``. One place for the ``coerce`` classmethods of the
    evaluation and attack settings (MUSE, WMDP, relearning, quantization, attack evaluation)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, mapping):
        known = sorted(cls.__dataclass_fields__)
        extra = sorted(set(value) - set(known))
        if extra:
            raise ValueError(unknown.format(unknown=extra, known=known))
        return cls(**value)
    article = "an" if cls.__name__[:1] in "AEIOU" else "a"
    raise TypeError(f"{what} must be {article} {cls.__name__}, a dict or None, got {type(value).__name__}.")

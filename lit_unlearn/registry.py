"""Objective plugins: installed packages register their objectives under the entry-point group
``lit_unlearn.objectives``; the ``lit-unlearn`` command loads them so ``--model MyObjective`` finds them.

A plugin package declares, e.g. in its ``pyproject.toml``::

    [project.entry-points."lit_unlearn.objectives"]
    CappedGA = "my_package.objectives:CappedGA"

The entry's value is ``module:Class``; the class must be a ``LightningModule`` subclass (normally of
:class:`~lit_unlearn.objectives.UnlearningModule`). The CLI selects a class by its class name or its full
import path, the way it selects the builtin objectives; loading the entry point imports the class, which is
what makes the short name known. Naive equivalent: ``import my_package.objectives`` before parsing.

Stdlib only at import time (the command's top-level help imports this module's constants).
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

#: the entry-point group that installed packages use to register objectives
ENTRY_POINT_GROUP = "lit_unlearn.objectives"


class PluginError(RuntimeError):
    """An entry point of :data:`ENTRY_POINT_GROUP` cannot be loaded or is not an objective class."""


def _describe(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    where = f" of the installed distribution {dist.name!r}" if dist is not None else ""
    return f"entry point {entry.name!r} = {entry.value!r}{where} (group {ENTRY_POINT_GROUP!r})"


def objective_entry_points() -> list[EntryPoint]:
    """The entry points registered under :data:`ENTRY_POINT_GROUP`, sorted by name (none imported)."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))


def load_objective_plugins() -> dict[str, type]:
    """Import every registered objective class; returns ``{entry name: class}``.

    Raises :class:`PluginError` naming the entry point and its distribution when the import fails or the
    object is not a ``LightningModule`` subclass, so a broken plugin is reported before argument parsing
    instead of as an unknown ``--model`` value.
    """
    from lightning.pytorch import LightningModule

    loaded: dict[str, type] = {}
    for entry in objective_entry_points():
        try:
            obj = entry.load()
        except Exception as error:
            raise PluginError(
                f"Cannot load the {_describe(entry)}: {type(error).__name__}: {error}. Fix the package's entry "
                "point (module:Class, importable) or uninstall the package."
            ) from error
        if not (isinstance(obj, type) and issubclass(obj, LightningModule)):
            raise PluginError(
                f"The {_describe(entry)} points to {obj!r}, not a LightningModule subclass; an objective plugin "
                "must name its class (for example `MyObjective = my_package.objectives:MyObjective`)."
            )
        loaded[entry.name] = obj
    return loaded

"""Where TOFU-format rows come from: a builtin generator, a local folder, or a hub dataset.

``source`` is one of

* ``builtin:tofu-mini`` / ``builtin:tofu-full`` — generated here, deterministic from ``seed``;
* a local folder holding ``<split>.json``, ``<split>.jsonl`` or ``<split>.parquet`` files;
* a hub dataset name such as ``locuslab/TOFU`` (``datasets.load_dataset(source, split_name)``, TOFU's
  layout: one configuration per split). Only this branch touches the network.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from lit_unlearn.data.tokenize import DataValidationError

BUILTIN_PREFIX = "builtin:"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_builtin(source: str) -> bool:
    return source.startswith(BUILTIN_PREFIX)


@lru_cache(maxsize=4)
def _builtin(name: str, seed: int):
    from lit_unlearn.data import builtin

    try:
        return builtin.generate(name, seed=seed)
    except ValueError as err:
        raise DataValidationError(f"Unknown builtin source 'builtin:{name}': {err}") from None


def source_version(source: str, seed: int = 0) -> str:
    """A string that changes whenever the rows of ``source`` can change (recorded in every output)."""
    if is_builtin(source):
        return _builtin(source[len(BUILTIN_PREFIX) :], seed).version
    path = Path(source)
    if path.is_dir():
        meta = path / "meta.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("version", str(path.resolve()))
        stamp = max((f.stat().st_mtime_ns for f in path.iterdir()), default=0)
        return f"local:{path.resolve()}@{stamp}"
    return f"hub:{source}"


def available_splits(source: str, seed: int = 0) -> list[str] | None:
    """Split names a source offers, or None when that cannot be known offline (hub sources)."""
    if is_builtin(source):
        return sorted(_builtin(source[len(BUILTIN_PREFIX) :], seed).splits)
    path = Path(source)
    if path.is_dir():
        return sorted({f.name[: -len(s)] for f in path.iterdir() for s in LOCAL_SUFFIXES if f.name.endswith(s)})
    return None


def load_rows(source: str, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """Every row of ``split`` as a list of dicts; unknown sources and splits raise with the choices."""
    if is_builtin(source):
        data = _builtin(source[len(BUILTIN_PREFIX) :], seed)
        if split not in data.splits:
            raise DataValidationError(
                f"Unknown split {split!r} for source {source!r}. Available: {', '.join(sorted(data.splits))}"
            )
        return [dict(row) for row in data.splits[split]]
    path = Path(source)
    if path.is_dir():
        return _load_local(path, split)
    if not _looks_like_hub_name(source):
        raise DataValidationError(
            f"Unknown data source {source!r}: not a builtin name (builtin:tofu-mini, builtin:tofu-full),"
            " not an existing folder, and not a hub dataset name like 'locuslab/TOFU'."
        )
    return _load_hub(source, split)


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/"))


def _load_local(folder: Path, split: str) -> list[dict[str, Any]]:
    for suffix in LOCAL_SUFFIXES:
        file = folder / f"{split}{suffix}"
        if file.is_file():
            return _read_file(file)
    raise DataValidationError(
        f"Unknown split {split!r} in folder {str(folder)!r}: expected {split}.json, {split}.jsonl or"
        f" {split}.parquet. Available: {', '.join(available_splits(str(folder)) or []) or 'none'}"
    )


def _read_file(file: Path) -> list[dict[str, Any]]:
    """JSON (a list of rows), JSON Lines (a row per line) or Parquet (through ``datasets``)."""
    if file.suffix == ".parquet":
        import datasets

        return [dict(row) for row in datasets.Dataset.from_parquet(str(file))]
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{file} is not valid JSON: {err}") from err
    if isinstance(rows, dict):  # {"data": [...]} or {"train": [...]}: take the single list inside
        lists = [v for v in rows.values() if isinstance(v, list)]
        rows = lists[0] if len(lists) == 1 else None
    if not isinstance(rows, list):
        raise DataValidationError(f"{file} must hold a list of rows (objects with question/answer fields).")
    return rows


def _load_hub(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split, split="train")
    except Exception as err:  # the hub raises many types; name the source and split in one message
        raise DataValidationError(f"Could not load split {split!r} of hub dataset {name!r}: {err}") from err
    return [dict(row) for row in ds]


def load_refusals(source: str, seed: int = 0, path: str | None = None) -> list[str]:
    """Refusal answers ("I don't know") for IdkNLL/IdkDPO: a text file (one per line) or the builtin bank."""
    if path is not None:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise DataValidationError(f"Refusal file {path!r} is empty.")
        return lines
    if is_builtin(source):
        return list(_builtin(source[len(BUILTIN_PREFIX) :], seed).refusals)
    local = Path(source) / "refusals.txt"
    if local.is_file():
        return load_refusals(source, seed, str(local))
    from lit_unlearn.data import builtin

    return list(builtin.generate("tofu-mini", seed=0).refusals)

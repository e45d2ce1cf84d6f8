"""Where TOFU-format rows come from: a builtin generator, a local folder, or a hub dataset.

``source`` is one of

* ``builtin:tofu-mini`` / ``builtin:tofu-full`` — generated here, deterministic from ``seed``
  (``builtin:muse-mini`` too, in MUSE's layout with splits named ``<config>/<split>``: see ``data/muse.py``);
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
    from lit_unlearn.data import builtin, builtin_muse

    try:
        if name in builtin_muse.NAMES:  # MUSE layout: splits keyed "<config>/<split>" (data/muse.py)
            return builtin_muse.generate(name, seed=seed)
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
            try:
                info = json.loads(read_text_file(meta))
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{meta}: line {err.lineno} column {err.colno}: not valid JSON"
                                          f" ({err.msg}).") from None
            if not isinstance(info, dict):
                raise DataValidationError(f"{meta} must hold an object such as {{\"version\": \"my-data-v1\"}}.")
            return info.get("version", str(path.resolve()))
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


def read_text_file(file: str | Path) -> str:
    """The text of ``file`` decoded as UTF-8 (a leading byte-order mark is dropped).

    A file that is not UTF-8 raises :class:`DataValidationError` naming the file, the line and the byte.
    """
    file = Path(file)
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataValidationError(
            f"{file}: line {line}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}: {err.reason})."
            " Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`."
        ) from None


def _row(row: Any, file: Path, where: str) -> dict[str, Any]:
    """``row`` when it is a JSON object, else :class:`DataValidationError` saying what it is instead."""
    if isinstance(row, dict):
        return row
    kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(row), "null" if row is None else type(row).__name__)
    raise DataValidationError(
        f"{file}: {where}: the row is {kind} ({json.dumps(row, default=str)[:80]}), expected an object such as"
        ' {"question": "...", "answer": "..."}.'
    )


def read_jsonl(file: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file (one per non-blank line); errors name the file and the line number."""
    file = Path(file)
    rows = []
    for number, line in enumerate(read_text_file(file).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataValidationError(
                f"{file}: line {number}: not valid JSON ({err.msg} at column {err.colno}). JSON Lines needs one"
                " complete JSON object per line."
            ) from None
        rows.append(_row(row, file, f"line {number}"))
    return rows


def read_parquet(file: str | Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file as dicts; a file that cannot be read names itself and the reason."""
    import pyarrow.parquet as pq

    file = Path(file)
    try:
        return pq.read_table(file).to_pylist()
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError ... for damaged or foreign files
        raise DataValidationError(
            f"{file}: cannot be read as Parquet ({type(err).__name__}: {err}). Write it with pandas/pyarrow"
            " (`df.to_parquet(...)`) or use a .json / .jsonl file."
        ) from None


def _read_file(file: Path) -> list[dict[str, Any]]:
    """JSON (a list of rows), JSON Lines (a row per line) or Parquet; errors name the file, line and problem."""
    if file.suffix == ".parquet":
        return read_parquet(file)
    if file.suffix == ".jsonl":
        return read_jsonl(file)
    text = read_text_file(file)
    try:
        rows = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise DataValidationError(
            f"{file}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})."
            + (" (One object per line? Name the file .jsonl.)" if err.msg == "Extra data" else "")
        ) from None
    if isinstance(rows, dict):  # {"data": [...]} or {"train": [...]}: take the single list inside
        lists = [v for v in rows.values() if isinstance(v, list)]
        rows = lists[0] if len(lists) == 1 else None
    if not isinstance(rows, list):
        raise DataValidationError(f"{file} must hold a list of rows (objects with question/answer fields).")
    return [_row(row, file, f"row {i} (0-based position in the list)") for i, row in enumerate(rows)]


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
        lines = [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
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

"""MUSE data in its real layout, from the hub, a local folder or the builtin generator.

MUSE (Shi et al., 2024, *MUSE: Machine Unlearning Six-Way Evaluation for Language Models*) ships each
corpus (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``) as hub configurations with splits:

========  ===========================================================  ====================
config    splits                                                       fields
========  ===========================================================  ====================
raw       forget, retain1, retain2, holdout                            text
verbmem   forget                                                       prompt, gt
knowmem   forget_qa, forget_qa_icl, retain_qa, retain_qa_icl (News);   question, answer
          retain2_qa, retain2_qa_icl instead of retain_qa* (Books)
privleak  forget, retain, holdout                                      text
scal      forget_1, forget_2, forget_3, forget_4                       text
sust      forget_1, forget_2, forget_3, forget_4                       text
========  ===========================================================  ====================

``source`` is

* a hub name (``muse-bench/MUSE-News``): ``datasets.load_dataset(source, config, split=split)``, the only
  branch that touches the network;
* a local folder with the same names: ``<folder>/<config>/<split>.jsonl`` (or ``.json``, ``.parquet``; for
  the text configs also ``.txt``, one document per file), e.g. written by :func:`export_muse`;
* ``builtin:muse-mini`` (``data/builtin_muse.py``), deterministic and versioned like ``builtin:tofu-mini``.

Every row is checked when loaded (:class:`DataValidationError` naming the source, config, split, row and
how to fix it). The forget/retain texts train through ``TextDataModule`` (export them to a folder first).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_unlearn.data.sources import (
    BUILTIN_PREFIX,
    _builtin,
    _looks_like_hub_name,
    is_builtin,
    read_jsonl,
    read_parquet,
    read_text_file,
)
from lit_unlearn.data.tokenize import DataValidationError

#: MUSE's configurations -> their splits (the News names; Books uses retain2_qa[_icl], see RETAIN_QA_NAMES)
MUSE_LAYOUT: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
    "scal": ("forget_1", "forget_2", "forget_3", "forget_4"),
    "sust": ("forget_1", "forget_2", "forget_3", "forget_4"),
}
#: the retain knowmem split's names: MUSE-News ``retain_qa``, MUSE-Books ``retain2_qa``
RETAIN_QA_NAMES = ("retain_qa", "retain2_qa")
#: the fields every row of a configuration must have (non-empty strings)
MUSE_FIELDS: dict[str, tuple[str, ...]] = {
    "raw": ("text",), "verbmem": ("prompt", "gt"), "knowmem": ("question", "answer"),
    "privleak": ("text",), "scal": ("text",), "sust": ("text",),
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
MUSE_HUB_NAMES = ("muse-bench/MUSE-News", "muse-bench/MUSE-Books")


def _known_split(config: str, split: str) -> bool:
    if config == "knowmem":
        return split in MUSE_LAYOUT["knowmem"] or split in ("retain2_qa", "retain2_qa_icl")
    return split in MUSE_LAYOUT.get(config, ())


def _check_names(config: str, split: str) -> None:
    if config not in MUSE_LAYOUT:
        raise DataValidationError(f"Unknown MUSE configuration {config!r}; MUSE has {list(MUSE_LAYOUT)}.")
    if not _known_split(config, split):
        extra = " (or retain2_qa, retain2_qa_icl for MUSE-Books)" if config == "knowmem" else ""
        raise DataValidationError(f"Unknown split {split!r} of MUSE configuration {config!r}; it has"
                                  f" {list(MUSE_LAYOUT[config])}{extra}.")


# ----------------------------------------------------------------------------- raw rows per source


def _read_local(file: Path) -> list[dict[str, Any]]:
    if file.suffix == ".jsonl":
        return read_jsonl(file)
    if file.suffix == ".parquet":
        return read_parquet(file)
    if file.suffix == ".txt":
        return [{"text": read_text_file(file)}]
    text = read_text_file(file)
    try:
        rows = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{file}: line {err.lineno} column {err.colno}: not valid JSON"
                                  f" ({err.msg}).") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataValidationError(f"{file} must hold a JSON list of objects (MUSE rows such as"
                                  ' {"question": "...", "answer": "..."}).')
    return rows


def _local_file(folder: Path, config: str, split: str) -> Path | None:
    for suffix in LOCAL_SUFFIXES:
        if suffix == ".txt" and MUSE_FIELDS[config] != ("text",):
            continue
        file = folder / config / f"{split}{suffix}"
        if file.is_file():
            return file
    return None


def _load_local(folder: Path, config: str, split: str) -> tuple[list[dict[str, Any]], str]:
    if not (folder / config).is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise DataValidationError(
            f"MUSE folder {str(folder)!r} has no configuration folder {config!r} (expected {folder / config}/"
            f"{split}.jsonl; configuration folders present: {present or 'none'}). Write MUSE's layout"
            " <folder>/<config>/<split>.jsonl, e.g. with lit_unlearn.data.muse.export_muse(source, folder)."
        )
    file = _local_file(folder, config, split)
    if file is None:
        present = sorted({f.stem for f in (folder / config).iterdir() if f.suffix in LOCAL_SUFFIXES})
        raise DataValidationError(
            f"MUSE folder {str(folder)!r}: configuration {config!r} has no split {split!r} (expected"
            f" {folder / config / split}.jsonl, .json or .parquet; splits present: {present or 'none'})."
        )
    return _read_local(file), str(file)


def _load_hub(name: str, config: str, split: str) -> tuple[list[dict[str, Any]], str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the hub raises many types; name the source, config and split in one message
        raise DataValidationError(f"Could not load MUSE configuration {config!r}, split {split!r} of hub dataset"
                                  f" {name!r}: {err}") from err
    return [dict(row) for row in ds], f"hub:{name}/{config}/{split}"


def _raw_rows(source: str, config: str, split: str, seed: int) -> tuple[list[dict[str, Any]], str]:
    if is_builtin(source):
        data = _builtin(source[len(BUILTIN_PREFIX):], seed)
        key = f"{config}/{split}"
        if key not in data.splits:
            have = sorted(k for k in data.splits if "/" in k)
            raise DataValidationError(f"{source} has no MUSE split {key!r}" + (
                f"; it has {have}." if have else " (it is not in MUSE's layout; use builtin:muse-mini)."))
        return [dict(row) for row in data.splits[key]], f"{source}:{key}"
    path = Path(source)
    if path.is_dir():
        return _load_local(path, config, split)
    if not _looks_like_hub_name(source):
        raise DataValidationError(
            f"Unknown MUSE source {source!r}: not builtin:muse-mini, not an existing folder, and not a hub dataset"
            f" name such as {MUSE_HUB_NAMES[0]!r}."
        )
    return _load_hub(source, config, split)


# ----------------------------------------------------------------------------- validated loading


def validate_rows(rows: list[dict[str, Any]], config: str, split: str, where: str) -> list[dict[str, Any]]:
    """Check that every row has MUSE's fields of ``config`` as non-empty strings; raise naming the row."""
    if not rows:
        raise DataValidationError(f"{where}: MUSE {config}/{split} is empty.")
    for i, row in enumerate(rows):
        for name in MUSE_FIELDS[config]:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                what = "has no" if name not in row else f"has an empty or non-string ({type(value).__name__})"
                hint = (" A knowmem row needs the true answer: fill in its 'answer' or drop the row."
                        if (config, name) == ("knowmem", "answer") else "")
                raise DataValidationError(
                    f"{where}: row {i} of MUSE {config}/{split} {what} {name!r} field (fields: {sorted(row)});"
                    f" every {config} row needs {list(MUSE_FIELDS[config])}.{hint}"
                )
    return rows


def load_muse(source: str, config: str, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """The validated rows of MUSE ``config``/``split`` from ``source`` (hub name, folder or builtin)."""
    _check_names(config, split)
    rows, where = _raw_rows(source, config, split, seed)
    return validate_rows(rows, config, split, where)


def retain_qa_split(source: str, seed: int = 0) -> str:
    """``retain_qa`` (MUSE-News, builtin) or ``retain2_qa`` (MUSE-Books): whichever ``source`` has.

    Offline sources are inspected; for a hub name, ``MUSE-Books`` gives ``retain2_qa``.
    """
    if is_builtin(source):
        data = _builtin(source[len(BUILTIN_PREFIX):], seed)
        found = [n for n in RETAIN_QA_NAMES if f"knowmem/{n}" in data.splits]
    elif Path(source).is_dir():
        found = [n for n in RETAIN_QA_NAMES if _local_file(Path(source), "knowmem", n) is not None]
    else:
        return "retain2_qa" if source.rstrip("/").lower().endswith("books") else "retain_qa"
    if not found:
        raise DataValidationError(f"MUSE source {source!r} has no retain knowmem split: expected knowmem/retain_qa"
                                  " (MUSE-News) or knowmem/retain2_qa (MUSE-Books).")
    return found[0]


def verbmem_pairs(source: str, seed: int = 0) -> list[tuple[str, str]]:
    """``[(prompt, gt)]`` of ``verbmem/forget``."""
    return [(r["prompt"], r["gt"]) for r in load_muse(source, "verbmem", "forget", seed)]


QAPairs = list[tuple[str, str]]


def knowmem_qa(source: str, which: str = "forget", seed: int = 0) -> tuple[QAPairs, QAPairs]:
    """``(qa, icl)``: the ``(question, answer)`` pairs of ``which`` (``forget`` or ``retain``) and their few-shot
    examples (``<split>_icl``)."""
    if which == "forget":
        split = "forget_qa"
    elif which == "retain":
        split = retain_qa_split(source, seed)
    else:
        raise ValueError(f"which must be 'forget' or 'retain', got {which!r}")
    qa = [(r["question"], r["answer"]) for r in load_muse(source, "knowmem", split, seed)]
    icl = [(r["question"], r["answer"]) for r in load_muse(source, "knowmem", f"{split}_icl", seed)]
    return qa, icl


def muse_texts(source: str, config: str, split: str, seed: int = 0) -> list[str]:
    """The ``text`` of every row of a text configuration (``raw``, ``privleak``, ``scal``, ``sust``)."""
    if MUSE_FIELDS.get(config) != ("text",):
        text_configs = [c for c, f in MUSE_FIELDS.items() if f == ("text",)]
        raise ValueError(f"muse_texts reads the text configurations {text_configs}, not {config!r}")
    return [r["text"] for r in load_muse(source, config, split, seed)]


def required_splits(source: str, configs: list[str] | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``[(config, split)]`` of MUSE's layout for ``configs`` (default all), the retain QA name resolved."""
    out = []
    for config in configs or list(MUSE_LAYOUT):
        if config not in MUSE_LAYOUT:
            raise DataValidationError(f"Unknown MUSE configuration {config!r}; MUSE has {list(MUSE_LAYOUT)}.")
        for split in MUSE_LAYOUT[config]:
            if config == "knowmem" and split.startswith("retain_qa"):
                split = split.replace("retain_qa", retain_qa_split(source, seed))
            out.append((config, split))
    return out


def check_muse_source(source: str, configs: list[str] | None = None, seed: int = 0) -> None:
    """Raise one :class:`DataValidationError` listing every missing configuration/split of an offline source
    (a folder or builtin), before any evaluation; hub sources are checked when loaded."""
    if not is_builtin(source) and not Path(source).is_dir():
        return
    missing = []
    for config, split in required_splits(source, configs, seed):
        try:
            _raw_rows(source, config, split, seed)
        except DataValidationError as err:
            missing.append(f"{config}/{split} ({err})")
    if missing:
        raise DataValidationError(f"MUSE source {source!r} lacks {len(missing)} split(s): " + "; ".join(missing))


def export_muse(source: str, folder: str | Path, configs: list[str] | None = None, seed: int = 0) -> Path:
    """Write ``source``'s MUSE splits to ``<folder>/<config>/<split>.jsonl`` (validated), e.g. a hub corpus
    once, for offline use and for ``TextDataModule(forget_files=".../raw/forget.jsonl")``."""
    from lit_unlearn.data.builtin import _write_atomic

    out = Path(folder)
    for config, split in required_splits(source, configs, seed):
        rows = load_muse(source, config, split, seed)
        (out / config).mkdir(parents=True, exist_ok=True)
        _write_atomic(out / config / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out

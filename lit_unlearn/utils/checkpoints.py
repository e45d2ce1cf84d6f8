"""Tell early, with the file's name, when a ``--ckpt_path`` is not a checkpoint (instead of a bare ``EOFError``).

A Lightning checkpoint is written by ``torch.save``: a zip archive (the default since torch 1.6) or, from
older versions, a pickle stream. A DeepSpeed ZeRO checkpoint is a folder (``latest`` + ``*/…model_states.pt``).
:func:`check_checkpoint_path` looks only at the first/last bytes (no loading); :func:`load_checkpoint_file`
loads and turns any unpickling error into a message that names the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2 starts with PROTO (0x80)


class NotACheckpointError(ValueError):
    """The path exists but does not hold a checkpoint (empty, truncated, or another kind of file)."""


def check_checkpoint_path(path: str | Path) -> Path:
    """Return ``path`` when it plausibly holds a checkpoint, else raise naming the file and the problem.

    * missing → ``FileNotFoundError``;
    * a folder → must be a DeepSpeed checkpoint folder (``latest`` file or ``*/*model_states.pt``);
    * a file → non-empty and a zip archive (``torch.save``) or a pickle stream (legacy ``torch.save``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {str(path)!r}: no such file or folder.")
    if path.is_dir():
        if (path / "latest").is_file() or any(path.glob("*/*model_states.pt")):
            return path
        raise NotACheckpointError(f"{str(path)!r} is a folder but not a DeepSpeed checkpoint (no 'latest' file, no"
                                  " */*model_states.pt); pass a .ckpt file or a DeepSpeed checkpoint folder.")
    size = path.stat().st_size
    if size == 0:
        raise NotACheckpointError(f"{str(path)!r} is empty (0 bytes): not a checkpoint. Was its save interrupted?"
                                  " Use an earlier checkpoint.")
    if zipfile.is_zipfile(path):
        return path
    with open(path, "rb") as f:
        head = f.read(1)
    if head == PICKLE_MAGIC:
        return path
    with open(path, "rb") as f:
        zip_head = f.read(4) == b"PK\x03\x04"
    problem = ("a truncated zip archive (the save was probably interrupted)" if zip_head
               else "neither a torch.save zip archive nor a pickle")
    raise NotACheckpointError(f"{str(path)!r} ({size} bytes) is not a checkpoint: {problem}. Use an earlier"
                              " checkpoint.")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint file on the CPU; errors name the file (see :func:`check_checkpoint_path`)."""
    import torch

    path = check_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt archives raise RuntimeError, EOFError, UnpicklingError ...
        raise NotACheckpointError(f"{str(path)!r} could not be read as a checkpoint ({type(err).__name__}: {err})."
                                  " Use an earlier checkpoint.") from err
    if not isinstance(checkpoint, dict):
        raise NotACheckpointError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    return checkpoint

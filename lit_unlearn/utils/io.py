"""Atomic output: a file or folder either appears complete or not at all, and what was there survives a crash.

Temporary files and folders are written beside the target as ``.NAME.<host>-<pid>.<random>.tmp`` and renamed
into place. They get the permissions ``open``/``os.makedirs`` would give (``0o666`` / ``0o777`` minus the
umask), not ``tempfile``'s private ``0o600`` / ``0o700``, so a shared cache stays readable. A temporary left by a
killed save (its process is gone) is removed by the next save to the same place.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: a temporary written on another host is removed only when it is older than this (its process is unknowable)
FOREIGN_TMP_MAX_AGE_S = 24 * 3600
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` tells it; else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove ``.NAME.<host>-<pid>.*.tmp`` beside ``path`` whose writer is gone; return what was removed.

    A temporary of this host whose pid no longer runs is stale; one of another host (shared filesystem) is
    stale when it is older than :data:`FOREIGN_TMP_MAX_AGE_S`; one of this process is never touched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        writer = tmp.name[len(path.name) + 2 : -len(".tmp")].rpartition(".")[0]  # "<host>-<pid>", or "" (old)
        tmp_host, _, pid = writer.rpartition("-")
        if tmp_host == host and pid.isdigit():
            stale = int(pid) != os.getpid() and not _pid_alive(int(pid))
        else:
            try:
                stale = time.time() - tmp.lstat().st_mtime > FOREIGN_TMP_MAX_AGE_S or not tmp_host
            except OSError:
                continue
        if stale:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` (the old one kept until then).

    The folder gets the user's normal permissions (``0o777`` minus the umask, like ``os.makedirs``); stale
    temporaries of earlier, killed saves to ``path`` are removed first (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_dir() -> Path:
    """Where built tokenizers and models are cached: ``$LIT_UNLEARN_HOME`` or ``~/.cache/lit_unlearn``."""
    root = os.environ.get("LIT_UNLEARN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "lit_unlearn")
    return Path(root)


def payload_key(payload: object) -> str:
    """A 16-hex-digit cache key of a JSON-serialisable ``payload`` (keys sorted, so dict order does not matter):
    ``sha256(json.dumps(payload, sort_keys=True))[:16]``."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

"""An inter-process file lock (``fcntl.flock``) with a timeout and a message saying who holds it.

Used around building a cached artefact (e.g. a target model under ``$LIT_UNLEARN_HOME/models``), so two
processes that need the same one do not both build it: the first builds, the second waits and then loads.

The lock is advisory and held on an open file descriptor: the kernel releases it when its process exits
(also when killed), so a crashed builder never leaves a stale lock. The holder writes
``pid``/``host``/``since``/``what`` into the lock file, which the waiting process quotes.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: default seconds to wait for a lock (override with ``$LIT_UNLEARN_LOCK_TIMEOUT``)
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0
LOCK_TIMEOUT_ENV = "LIT_UNLEARN_LOCK_TIMEOUT"
POLL_INTERVAL_S = 0.2


class LockTimeoutError(TimeoutError):
    """The lock was not acquired within the timeout."""


def lock_timeout() -> float:
    """Seconds to wait for a lock: ``$LIT_UNLEARN_LOCK_TIMEOUT`` or :data:`DEFAULT_LOCK_TIMEOUT_S`."""
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    if not value:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"${LOCK_TIMEOUT_ENV} must be a number of seconds, got {value!r}.") from None


def _holder(path: Path) -> str:
    """Who holds the lock, as written in the lock file by its holder ("unknown" when unreadable)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    if not info:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {since} ({info.get('what', '?')})"


@contextmanager
def file_lock(path: str | Path, timeout: float | None = None, what: str = "", verbose: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    Waits up to ``timeout`` seconds (default :func:`lock_timeout`), printing once to stderr who holds it;
    then raises :class:`LockTimeoutError` naming the lock file and its holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout() if timeout is None else float(timeout)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"Timed out after {timeout:g} s waiting for the lock {str(path)!r}, held by {_holder(path)}."
                        f" If that process is gone, the lock is free again; otherwise wait for it or raise"
                        f" ${LOCK_TIMEOUT_ENV}."
                    ) from None
                if verbose and not announced:
                    print(f"[lit-unlearn] waiting for {str(path)!r}, held by {_holder(path)} ...", file=sys.stderr,
                          flush=True)
                    announced = True
                time.sleep(POLL_INTERVAL_S)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

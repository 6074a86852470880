"""One barmaid per data directory: an exclusive lock taken before anything else happens.

Two processes writing one barmaid.db each keep their own levels in memory and overwrite the
other's; worse, the second one would reach the pump daemon. `serve` takes this lock first, so a
second barmaid stops before it binds a port or touches a pump, saying which process holds it.
The lock is `fcntl.flock` on `barmaid.lock` (holding the holder's PID): the kernel drops it when
the process ends, however it ends, so a kill -9 or a power cut never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Optional

from .errors import StoreError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FILENAME = "barmaid.lock"


class DataDirLocked(StoreError):
    """Another process holds the data directory."""


class DataDirLock:
    """The exclusive lock on one data directory, held until `release` or the process ends."""

    def __init__(self, data_dir: Path) -> None:
        """Creates data_dir if needed and locks it.

        Raises:
            DataDirLocked: another process holds it; the message names the folder and its PID.
            StoreError: the folder cannot be created or written (read-only, not ours).
        """
        self.folder = Path(data_dir)
        self.path = self.folder / FILENAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                f"the data directory {self.folder} cannot be written ({exc.strerror}): make it writable"
                " by the user barmaid runs as, or choose another data_dir"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"cannot lock the data directory {self.folder}: {exc.strerror}") from None
            raise DataDirLocked(
                f"the data directory {self.folder} is in use by another barmaid"
                f" ({'PID ' + holder if holder else 'PID unknown'}): stop that one first, or give this one"
                " its own data_dir"
            ) from None
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: the lock holds all the same, only the PID is missing
            log.warning("locked %s but could not write the PID into it: %s", self.path, exc.strerror)

    def release(self) -> None:
        """Unlocks; idempotent. The file stays (removing it would race a process locking it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _holder(self) -> str:
        if self._fd is None:
            return ""
        try:
            return os.pread(self._fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            return ""

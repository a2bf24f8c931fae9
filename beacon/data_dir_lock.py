"""The data directory's lock: one Beacon process runs the private Redis of a data directory at a time.

A second `beacon serve` on the same directory used to start its own server on the same files, which
stopped the first one's Redis under it (the first kept running, answering 500). The lock is an
exclusive `flock` on `<data_dir>/beacon.lock`, held for the process's lifetime: the kernel drops it
when the process dies however it dies, so a stale lock is never in the way, and the pid written in the
file only names the holder in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from beacon.errors import BeaconError

LOCK_FILE = "beacon.lock"


class DataDirInUse(BeaconError):
    """Another live process holds the data directory."""

    status = 409
    code = "data_dir_in_use"


class DataDirLock:
    """One start (`acquire`) and one stop (`release`) around the private server's life."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.path.parent} is in use by another Beacon process (pid {holder}); "
                "stop it, or give this one another BEACON_DATA_DIR or a REDIS_URL"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

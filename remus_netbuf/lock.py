"""The pickifb lock: the only lock, taken while IFBs are chosen, claimed or freed.

The file is ``<lock_dir>/pickifb`` (``/var/run/xen-hotplug/pickifb``: the name Xen's own hotplug
scripts use, so the old shell script and this one exclude each other on a host that has both).
It is an flock, so a holder killed with SIGKILL releases it with its last descriptor and a stale
file never blocks. The directory is created root-only; a lock path or directory that is a
symbolic link is refused (filelock also opens with O_NOFOLLOW).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import LockError

LOCK_NAME = "pickifb"
LOCK_TIMEOUT = 30.0  # libxl kills the script after 40 s; leave time to report


@contextmanager
def pickifb_lock(lock_dir: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive pickifb lock for the ``with`` body."""
    from filelock import FileLock, Timeout

    path = os.path.join(lock_dir, LOCK_NAME)
    _ensure_dir(lock_dir)
    _refuse_link(path)
    lock = FileLock(path, timeout=timeout, mode=0o600, fallback_to_soft=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        detail = f"still held by another process after {timeout:g} s"
        raise LockError(path=path, detail=detail) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LockError(path=path, detail="is a symbolic link; refusing") from None
        raise LockError(path=path, detail=err.strerror or str(err)) from None
    try:
        yield
    finally:
        lock.release()


def _ensure_dir(lock_dir: str) -> None:
    try:
        info = os.lstat(lock_dir)
    except FileNotFoundError:
        parent = os.path.dirname(lock_dir.rstrip("/")) or "/"
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            os.mkdir(lock_dir, 0o700)
        except FileExistsError:
            pass  # another process made it first
        except OSError as err:
            raise LockError(path=lock_dir, detail=f"cannot create: {err.strerror}") from None
        info = os.lstat(lock_dir)
    if stat.S_ISLNK(info.st_mode):
        raise LockError(path=lock_dir, detail="is a symbolic link; refusing")
    if not stat.S_ISDIR(info.st_mode):
        raise LockError(path=lock_dir, detail="is not a directory")


def _refuse_link(path: str) -> None:
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise LockError(path=path, detail="is a symbolic link; refusing")
    except FileNotFoundError:
        pass


def check_lock_dir(lock_dir: str) -> bool:
    """Whether ``lock_dir`` exists, having passed the checks :func:`pickifb_lock` makes of it and
    its lock file, without creating anything (``check``); raises the LockError it would raise.
    False: it does not exist yet, and the first setup creates it root-only."""
    if not os.path.lexists(lock_dir):
        return False
    _ensure_dir(lock_dir)  # an existing path is only checked, never changed
    _refuse_link(os.path.join(lock_dir, LOCK_NAME))
    return True

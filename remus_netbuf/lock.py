"""The pickifb lock: the only lock, taken while IFBs are chosen, claimed or freed.

The file is ``<lock_dir>/pickifb`` (``/var/run/xen-hotplug/pickifb``: the name Xen's own hotplug
scripts use, so the old shell script and this one exclude each other on a host that has both).
It is an flock, so a holder killed with SIGKILL releases it with its last descriptor and a stale
file never blocks. Xen's locking.sh removes the file when it releases (with-lock-ex from
chiark-utils), so a lock won on a descriptor whose file is no longer the one at the path is no
lock at all: as locking.sh does, we then open the path again and retry. The directory is
created root-only; a lock path or directory that is a symbolic link, or a directory not owned by
root or writable by group or others, is refused (the file is opened with O_NOFOLLOW). After a
second of waiting it says whom it waits for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import LockError
from .log import log

LOCK_NAME = "pickifb"
LOCK_TIMEOUT = 30.0  # libxl kills the script after 40 s; leave time to report
WAIT_NOTICE = 1.0  # seconds of waiting after which we say whom we wait for
POLL = 0.01  # seconds between tries while another process holds the lock
PROC_LOCKS = "/proc/locks"


@contextmanager
def pickifb_lock(lock_dir: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive pickifb lock for the ``with`` body."""
    path = os.path.join(lock_dir, LOCK_NAME)
    _ensure_dir(lock_dir)
    _refuse_link(path)
    deadline = time.monotonic() + timeout
    try:
        fd = _acquire(path, min(deadline, time.monotonic() + WAIT_NOTICE))
        if fd is None:
            log.warning("lock %s: waiting for %s", path, holders(path))
            fd = _acquire(path, deadline)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LockError(path=path, detail="is a symbolic link; refusing") from None
        raise LockError(path=path, detail=err.strerror or str(err)) from None
    if fd is None:
        detail = f"still held by another process after {timeout:g} s"
        raise LockError(path=path, detail=detail)
    try:
        yield
    finally:
        os.close(fd)


def _acquire(path: str, deadline: float) -> int | None:
    """A descriptor holding the flock on the file that is at ``path``; None at the deadline."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return None
                    time.sleep(POLL)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed the file before it let go: lock the new one


def _same_file(fd: int, path: str) -> bool:
    held = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


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
    # As sshd's StrictModes: whoever else may write here could swap the lock file.
    if info.st_uid != 0:
        raise LockError(path=lock_dir, detail=f"is owned by uid {info.st_uid}, not root; refusing")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise LockError(
            path=lock_dir, detail=f"is group- or world-writable (mode {mode:04o}); refusing"
        )


def holders(path: str) -> str:
    """Who holds the flock on ``path``, from /proc/locks: 'pid N (comm)', or why unknown."""
    try:
        inode = os.stat(path).st_ino
        with open(PROC_LOCKS) as table:
            rows = table.read().splitlines()
    except OSError:
        return "another process"
    pids = []
    for row in rows:
        fields = row.split()  # 1: FLOCK ADVISORY WRITE 4242 08:01:1234 0 EOF
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(inode):
            pids.append(fields[4])
    if not pids:
        return "another process"
    return ", ".join(f"pid {pid} ({_comm(pid)})" for pid in dict.fromkeys(pids))


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "gone"


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

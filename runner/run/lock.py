"""One writer per run folder: an fcntl lock on <run folder>/.lock that names its holder.

    RunLock(run_dir).acquire()   flock(LOCK_EX | LOCK_NB) on .lock, then writes "PID HOST" in it
      held by a live process     -> RunInUseError: "run folder X is in use by PID N (host H)"
      held, but the PID is dead  -> stale (a child process that outlived a killed runner keeps
                                    the old file locked): the file is replaced and locked anew
      free                       -> ours; `previous` says who held it last (a run killed with
                                    kill -9 leaves its PID behind, and is reported as such)
    release()                    unlinks .lock, then closes it (a clean run leaves no .lock)

After taking the lock the file at the path is checked to be the one locked (same inode), so two
processes that both replace a stale file cannot both win. The lock file is opened with
O_NOFOLLOW: a symlink named .lock is refused, never followed.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

LOCK_NAME = ".lock"


class RunInUseError(RuntimeError):
    """Another live process holds the run folder's lock."""


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_holder(path: Path) -> tuple[Optional[int], Optional[str]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, None
    try:
        text = os.read(fd, 256).decode("utf-8", "replace").split()
    finally:
        os.close(fd)
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, (text[1] if len(text) > 1 else None)


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: Optional[int] = None
        self.previous: tuple[Optional[int], Optional[str]] = (None, None)
        self.took_over_stale = False

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunInUseError(f"{self.path} is a symlink; refusing to follow it") from None
            raise

    def acquire(self) -> "RunLock":
        host = socket.gethostname()
        for _ in range(5):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, holder_host = read_holder(self.path)
                os.close(fd)
                if pid is None or holder_host not in (None, host) or pid_alive(pid):
                    who = f"PID {pid}" if pid is not None else "another process"
                    where = f" on {holder_host}" if holder_host and holder_host != host else ""
                    raise RunInUseError(
                        f"run folder {self.path.parent} is in use by {who}{where}; wait for it "
                        "to finish, or choose another run_id") from None
                # the holder is dead; whatever keeps the old file locked is not a runner
                self.took_over_stale = True
                self.previous = (pid, holder_host)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            if not self._is_current(fd):
                os.close(fd)  # someone replaced the file between open and flock
                continue
            if not self.took_over_stale:
                self.previous = read_holder(self.path)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {host}\n".encode())
            os.fsync(fd)
            self.fd = fd
            return self
        raise RunInUseError(f"could not lock {self.path}: it keeps being replaced")

    def _is_current(self, fd: int) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self._is_current(self.fd):
                os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_is_held(run_dir: str | os.PathLike) -> bool:
    """Whether a live process holds the run folder's lock (for a 'running' status check)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, host = read_holder(path)
        return not (pid is not None and host in (None, socket.gethostname())
                    and not pid_alive(pid))
    finally:
        os.close(fd)
    return False

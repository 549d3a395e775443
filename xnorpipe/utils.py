"""Small shared helpers: atomic file writes (with stale-temp cleanup), OS-error wording, hashing."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from xnorpipe.errors import XnorpipeError

# A temp file of unknown owner (the pre-PID naming, or another host's) older than this is debris.
STALE_TMP_SECONDS = 15 * 60


class WriteError(XnorpipeError, OSError):
    """Writing a file failed: one line naming the cause and the real target path.

    Also an OSError, so callers that tolerate a failed write (the dataset cache) still can.
    """


def os_error_reason(e: OSError) -> str:
    """A short, lower-case cause for an OSError: 'no space left on device', 'permission denied', ..."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.ENOENT: "no such file or directory",
               errno.ENOTDIR: "a parent is not a directory", errno.EISDIR: "is a directory",
               errno.EFBIG: "file too large", errno.EIO: "input/output error",
               errno.ENAMETOOLONG: "file name too long"}
    if e.errno in reasons:
        return reasons[e.errno]
    return (e.strerror or type(e).__name__).lower()


def write_error(e: OSError, path: str | os.PathLike) -> WriteError:
    err = WriteError(f"{os_error_reason(e)} writing {path}")
    err.errno, err.strerror, err.filename = e.errno, e.strerror, str(path)
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; fsync and rename it onto `path` only if the block succeeds.

    A crash or Ctrl-C leaves the old file (or nothing) in place, never a half-written one. The
    temp name carries this process's id (`.<name>.<host>-<pid>.<random>.tmp`), so a later write
    to the same target removes what a killed writer (SIGKILL, power loss) left, and never the
    file of a writer that is still alive. An OSError while writing (disk full, permissions)
    becomes a WriteError naming the cause and `path`.
    """
    path = Path(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(e, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artefacts are for sharing
        # Some file systems (NFS, delayed allocation) report a full disk only at flush time.
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and not isinstance(e, XnorpipeError):
            raise write_error(e, path) from None
        raise


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """8 hex digits naming this host, boot and PID namespace: where a PID in a temp name is valid."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: assume alive, the age rule applies
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that dead writers left beside `path`; returns what was removed.

    Ours on this host: removed when their PID is gone. Another host's (shared file system) and
    the older PID-less names: removed once older than STALE_TMP_SECONDS.
    """
    path = Path(path)
    name = re.escape(path.name)
    with_pid = re.compile(rf"\.{name}\.(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)\.[a-z0-9_]+\.tmp")
    pidless = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    except OSError:
        return removed
    now = time.time()
    for p in candidates:
        m = with_pid.fullmatch(p.name)
        if m is not None and m["host"] == _host_tag():
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        elif m is not None or pidless.fullmatch(p.name):
            try:
                stale = now - p.lstat().st_mtime > STALE_TMP_SECONDS
            except OSError:
                continue
        else:
            continue
        if stale and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log file; an OSError becomes a WriteError naming the cause and the path."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        raise write_error(e, path) from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def progress_interval() -> float:
    """Seconds between progress-bar updates: live on a terminal, sparse in a log file."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


def arch_file_stem(arch: str) -> str:
    """The part of an arch's name its files carry: a user model `FILE.py:NAME` is NAME (no path
    separators or colons in file names)."""
    return arch.rpartition(":")[2]

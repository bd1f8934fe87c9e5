"""Small file helpers: atomic writes, locks, stale temporary files and content hashes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from vitqbench.errors import DiskFull, VitqbenchError

CACHE_ENV = "VITQBENCH_CACHE"

# What reading a damaged or foreign cache file raises (np.load of a zero-length file: EOFError).
# Such an entry is a cache miss, recomputed, never trusted.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def default_cache_dir() -> Path:
    """The cache root shared by every part (decoded images, model outputs, score state, demo checkpoints)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitqbench"


def safe_name(text: str) -> str:
    """``text`` as one file name: no separators, so a label such as ``../../x`` stays in its folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def check_output_file(path: str | Path) -> Path:
    """``path`` if a file can be written there; otherwise one clear error (call it before long work)."""
    path = Path(path)
    if path.is_dir():
        raise VitqbenchError(f"cannot write {path}: it is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VitqbenchError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VitqbenchError(f"cannot write {path}: directory {parent} is not writable")
    try:  # os.access misses a read-only mount seen by root, and a full disk
        with tempfile.TemporaryFile(dir=parent) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise VitqbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def check_output_dir(path: str | Path) -> Path:
    """``path`` if it is a folder or can become one; otherwise one clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VitqbenchError(f"{path} is a file; give a folder for the results")
    return path


LOCK_NAME = ".vitqbench.lock"
_HELD: set[str] = set()  # output folders this process has locked


@contextlib.contextmanager
def output_folder(path: str | Path) -> Iterator[Path]:
    """Hold ``path`` for one run: created and proved writable up front, then locked.

    The lock is an flock on ``path/.vitqbench.lock``: a second run into the same folder fails with
    one line naming the holder's pid, and the kernel drops the lock when the holder exits or is
    killed, so it can never go stale.
    """
    path = check_output_dir(path)
    held = os.path.realpath(path)
    if held in _HELD:  # this process holds it already (the demo around its eval): nothing more to take
        yield path
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:  # a read-only or full filesystem fails here
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise VitqbenchError(f"cannot write to {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise VitqbenchError(f"{path} is in use by pid {holder} (another vitqbench run writes there)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD.add(held)
        try:
            yield path
        except BaseException:
            if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:  # a run that wrote nothing
                (path / LOCK_NAME).unlink()
                path.rmdir()
            raise
        finally:
            _HELD.discard(held)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on any exception the temporary file is removed. The
    temporary file is locked while it is written, so that a later run can tell a killed run's
    leftover (unlocked: see ``remove_stale_temps``) from a concurrent run's file in progress.
    A full disk is one clear error naming the path.
    """
    path = check_output_file(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:  # a full disk is DiskFull, below
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise
            raise VitqbenchError(f"cannot write {path}: {exc.strerror}") from None
        if tmp_path.is_file():  # mkstemp creates 0600; give the result the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            tmp_path.chmod(0o666 & ~umask)
            with open(tmp_path, "rb") as f:  # on disk before the rename, so a crash never leaves zeros
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left on the device writing {path}: free space there") from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        os.close(fd)


def remove_stale_temps(folder: str | Path, before: float | None = None, pattern: str = ".*") -> int:
    """Remove temporary files that killed runs left in ``folder`` (``atomic_path``'s dot files, or
    ``pattern``): only those older than this process (or ``before``) and not locked by a live run."""
    import psutil

    before = psutil.Process().create_time() if before is None else before
    removed = 0
    for entry in Path(folder).glob(pattern):
        try:
            if not entry.is_file() or entry.stat().st_mtime >= before:
                continue
            with open(entry, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
                entry.unlink()
                removed += 1
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive use of ``path`` across processes (an advisory lock); the lock file is removed on release.

    Removing it is safe because a waiter that wakes up on a file that is no longer at ``path`` (the
    holder unlinked it) starts over on the new file."""
    path = Path(path)
    while True:
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        handle.close()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

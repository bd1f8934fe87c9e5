"""Small file helpers: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vitqbench.errors import VitqbenchError

CACHE_ENV = "VITQBENCH_CACHE"


def default_cache_dir() -> Path:
    """The cache root shared by every part (decoded images, model outputs, score state, demo checkpoints)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitqbench"


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
    return path


def check_output_dir(path: str | Path) -> Path:
    """``path`` if it is a folder or can become one; otherwise one clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VitqbenchError(f"{path} is a file; give a folder for the results")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on any exception the temporary file is removed.
    """
    path = check_output_file(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():  # mkstemp creates 0600; give the result the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            tmp_path.chmod(0o666 & ~umask)
            with open(tmp_path, "rb") as f:  # on disk before the rename, so a crash never leaves zeros
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

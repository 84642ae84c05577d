"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file a party, the server or a signer writes for later use (agreements, key pins, audit
bundles, reports) goes through :func:`atomic_write`: a temporary file in the same directory,
flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vfm_flower.errors import ConfigurationError

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically, with permission bits ``mode``.

    Raises
    ------
    ConfigurationError
        The directory cannot take a temporary file (naming the path and the reason).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

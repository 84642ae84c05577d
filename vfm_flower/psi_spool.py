"""The files under the streamed alignment (:mod:`vfm_flower.psi_stream`): a party's private
spool directory, points files of fixed 32-byte records read a block at a time, their
checks (size, canonical encodings, duplicates) and their scattering into bucket files.

Nothing here logs or puts in an exception an id, a point or a secret: errors name a party,
a file's name and row numbers.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vfm_flower.errors import ConfigurationError, DataError
from vfm_flower.psi_group import POINT_BYTES

__all__ = ["AlignmentSpool", "Progress", "record_count"]

#: ``progress(stage, done, total)``: called after every block of a long step.
Progress = Callable[[str, int, int], None]

_ROW = np.dtype("<i8")
_RECORD = np.dtype([("point", np.uint8, (POINT_BYTES,)), ("row", "<i8")])


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class AlignmentSpool:
    """A party's private working directory for one alignment (mode 0700).

    Parameters
    ----------
    parent : path-like, optional
        Where to create it (the party's work directory); default the system's temporary
        directory. Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="vfm-align-", dir=parent))

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> AlignmentSpool:
        """The spool at a fixed path (created, mode 0700, if missing): for a party whose
        steps run in separate processes, as a SuperNode runs each message."""
        spool = cls.__new__(cls)
        spool.root = Path(root)
        spool.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = spool.root.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigurationError(f"alignment spool {root} is not a directory of this user")
        if stat.S_IMODE(info.st_mode) != 0o700:
            spool.root.chmod(0o700)  # an existing directory: made private before any file
        return spool

    def path(self, name: str) -> Path:
        return self.root / name

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AlignmentSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def record_count(path: Path, *, party: str) -> int:
    """Number of 32-byte records in a points file; refuses a truncated one."""
    size = path.stat().st_size
    if size % POINT_BYTES:
        raise DataError(
            f"points from party '{party}' hold {size} bytes, not a multiple of {POINT_BYTES}: "
            "truncated or malformed"
        )
    return size // POINT_BYTES


def _read_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    """The records of a points file, ``block`` at a time (``(k, 32)`` uint8 arrays)."""
    with path.open("rb") as handle:
        while chunk := handle.read(block * POINT_BYTES):
            if len(chunk) % POINT_BYTES:
                raise DataError(f"{path.name} was truncated while being read: refused")
            yield np.frombuffer(chunk, dtype=np.uint8).reshape(-1, POINT_BYTES)


def _check_unique_records(path: Path, keys: np.ndarray, party: str) -> None:
    """Refuse duplicated records (hence ids): sorted 64-bit prefixes, ties compared in full."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    tied = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not tied.size:
        return
    rows = np.unique(np.concatenate([order[tied], order[tied + 1]]))
    records = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, POINT_BYTES)
    full = {}
    duplicates: list[int] = []
    for row in rows.tolist():
        value = bytes(records[row])
        if value in full:
            duplicates.extend((full[value], row))
        else:
            full[value] = row
    del records
    if duplicates:
        shown = ", ".join(str(r + 1) for r in sorted(set(duplicates))[:6])
        raise DataError(
            f"party '{party}' has duplicate ids after normalization (rows {shown}): ids must "
            "be unique"
        )


def _check_canonical(points: np.ndarray, sender: str, first_row: int) -> None:
    """Refuse records that are not canonical X25519 u-coordinates (top bit set)."""
    bad = np.flatnonzero(points[:, POINT_BYTES - 1] & 0x80)
    if bad.size:
        raise DataError(
            f"points from party '{sender}': {bad.size} points are not canonical X25519 "
            f"u-coordinates (first row: {first_row + int(bad[0]) + 1})"
        )


def _scatter_records(
    source: Path,
    paths: list[Path],
    bucket_of: Callable[[np.ndarray], np.ndarray],
    block: int,
    check: Callable[[np.ndarray, int], None] | None = None,
) -> None:
    """Append each point of ``source``, with its row, to the bucket file ``bucket_of`` picks
    (``check(points, first_row)`` first, on every block, when given)."""
    buckets = len(paths)
    handles = [p.open("wb") for p in paths]
    try:
        start = 0
        for points in _read_blocks(source, block):
            if check is not None:
                check(points, start)
            record = np.empty(points.shape[0], dtype=_RECORD)
            record["point"] = points
            record["row"] = np.arange(start, start + points.shape[0], dtype=np.int64)
            start += points.shape[0]
            if buckets == 1:
                handles[0].write(record.tobytes())
                continue
            key = bucket_of(points)
            order = np.argsort(key, kind="stable")
            bounds = np.searchsorted(key[order], np.arange(buckets + 1))
            for b in range(buckets):
                part = order[bounds[b] : bounds[b + 1]]
                if part.size:
                    handles[b].write(record[part].tobytes())
    finally:
        for handle in handles:
            handle.close()

"""A party's per-run state between messages, in a form any runtime can persist.

In Flower's Deployment Engine every message runs in a fresh process, so nothing may live in
Python globals: the client adapter loads a ``PartyState`` from ``context.state`` before a step
and stores it back after. Values are scalars, strings, bytes or numpy arrays only; arrays of
1 MiB or more are kept in files of the party's work directory (:class:`StateFiles`) and only
their references in ``context.state``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vfm_flower.errors import ProtocolAbort

Scalar = int | float | str | bool | bytes


class PartyState:
    """Typed key-value store of scalars and numpy arrays."""

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.arrays: dict[str, np.ndarray] = dict(arrays or {})

    def __contains__(self, key: str) -> bool:
        return key in self.values or key in self.arrays

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Scalar | list[str]) -> None:
        self.values[key] = value

    def array(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError as exc:
            raise KeyError(f"party state has no '{key}' (was an earlier phase skipped?)") from exc

    def set_array(self, key: str, value: np.ndarray) -> None:
        self.arrays[key] = np.ascontiguousarray(value)

    def pop_array(self, key: str) -> np.ndarray | None:
        return self.arrays.pop(key, None)

    def array_keys(self) -> Iterator[str]:
        return iter(self.arrays)

    def set_group(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        """Store several arrays under ``prefix.NAME`` (e.g. an optimizer's ``to_state()``)."""
        for name, value in arrays.items():
            self.set_array(f"{prefix}.{name}", np.asarray(value))

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays stored with ``set_group(prefix, ...)``, by their own names."""
        head = f"{prefix}."
        return {k[len(head) :]: v for k, v in self.arrays.items() if k.startswith(head)}

    def tokens(self, key: str) -> set[str]:
        """A set of strings kept under ``key`` (one per line; tokens hold no newline)."""
        text = str(self.values.get(key, ""))
        return set(text.split("\n")) if text else set()

    def set_tokens(self, key: str, tokens: set[str]) -> None:
        self.values[key] = "\n".join(sorted(tokens))

    def set_bytes(self, key: str, blob: bytes) -> None:
        """Store a (possibly large) byte string as a uint8 array."""
        self.arrays[key] = np.frombuffer(blob, dtype=np.uint8).copy()

    def get_bytes(self, key: str) -> bytes:
        return self.array(key).tobytes()


#: Arrays at least this large live in files of the party's work directory (:class:`StateFiles`),
#: not in the runtime's state record: a SuperNode keeps ``context.state`` in memory for the
#: whole run and ships it to and from the ClientApp process with every message, so a
#: set-sized array there (blinded ids, the feature matrix) costs memory and time each round.
#: 1 MiB keeps the scalars and small vectors in the record and moves what grows with rows.
STATE_FILE_MIN_BYTES = 1 << 20

#: A run directory untouched this long belongs to a run that ended without its seal (an
#: abort, a lost node): the next run of the party removes it (7 days: longer than any job).
STATE_RETENTION_SECONDS = 7 * 24 * 3600

_RUN_DIRECTORY = re.compile(r"^run-[0-9]+$")
_STATE_FILE = re.compile(r"^([0-9a-f]{64})\.npy$")


def run_directory(work_dir: Path, run_id: int | str) -> Path:
    """A run's private directory in a party's work dir: ``<work-dir>/state/run-<run id>``
    (its state files, and the spools of steps that span messages, such as the alignment's)."""
    return Path(work_dir) / "state" / f"run-{run_id}"


class StateFiles:
    """The large arrays of a party's per-run state, as ``.npy`` files in its own directory.

    Each file is named by the SHA-256 of its bytes and checked against it when read back
    (read once, into memory, then parsed: no second open to race), so a reference in the
    state record names exactly one content: a file changed on disk is refused, a reference
    outside this run's directory too. An array unchanged since the last message is hashed in
    memory but not written again (unless its file is missing or of another size).

    Crash safety: :meth:`store` only adds files (each written to a partial file, flushed,
    then renamed); the files the committed record no longer references are removed by
    :meth:`load` of the next message (:meth:`collect`), so a message whose state never
    reached the SuperNode leaves the previous state readable. :meth:`discard` removes the
    directory at the run's end; :meth:`sweep_stale_runs` removes what runs that never ended
    left behind.

    Parameters
    ----------
    directory : pathlib.Path
        The run's directory, ``<work-dir>/state/run-<run id>`` (created with mode 0700 on
        the first file, and set to 0700 if it exists): nobody else reads it.
    min_bytes : int, optional
        Arrays of at least this many bytes go to files.
    """

    def __init__(self, directory: Path, min_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.min_bytes = STATE_FILE_MIN_BYTES if min_bytes is None else int(min_bytes)

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ProtocolAbort(
                "state", None, f"{self.directory} is not a directory of this user: refused"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            self.directory.chmod(0o700)

    def store(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Split ``arrays`` into those kept in the record and references to files.

        Returns
        -------
        kept : dict of str to numpy.ndarray
            The small arrays, for the state record.
        references : dict of str to str
            ``key -> "<absolute path>|<sha256>"`` of every array written to a file.
        """
        kept: dict[str, np.ndarray] = {}
        references: dict[str, str] = {}
        for index, (key, value) in enumerate(arrays.items()):
            if value.nbytes < self.min_bytes:
                kept[key] = value
                continue
            self._ensure_directory()
            value = np.ascontiguousarray(value)
            sink = _HashingSink()
            np.save(sink, value, allow_pickle=False)
            digest = sink.hexdigest()
            path = self.directory / f"{digest}.npy"
            if not (path.is_file() and path.stat().st_size == sink.size):
                partial = self.directory / f"partial-{os.getpid()}-{index}.tmp"
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, value, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(partial, path)
            references[key] = f"{path.resolve()}|{digest}"
        if references:
            os.utime(self.directory)  # the run is alive (see sweep_stale_runs)
        return kept, references

    def _checked_path(self, key: str, reference: str) -> tuple[Path, str]:
        path_text, _, digest = str(reference).rpartition("|")
        path = Path(path_text)
        match = _STATE_FILE.match(path.name)
        if match is None or match.group(1) != digest or path.parent != self.directory.resolve():
            raise ProtocolAbort(
                "state", None, f"the state file reference of '{key}' is not a file of this run"
            )
        return path, digest

    def load(self, references: dict[str, str]) -> dict[str, np.ndarray]:
        """Read the referenced arrays back, each checked against its digest.

        Raises
        ------
        ProtocolAbort
            A reference points outside this run's directory, or a file is missing or its
            content is not the one referenced.
        """
        out: dict[str, np.ndarray] = {}
        for key, ref in references.items():
            path, digest = self._checked_path(key, ref)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' cannot be read ({exc.strerror})"
                ) from exc
            if hashlib.sha256(data).hexdigest() != digest:
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' changed on disk: refused"
                )
            out[key] = np.load(io.BytesIO(data), allow_pickle=False)
        return out

    def collect(self, references: dict[str, str]) -> None:
        """Remove the files the committed record does not reference (a later message's that
        never committed, an earlier state's), and the directory when nothing is left."""
        if not self.directory.is_dir():
            return
        wanted = {Path(str(ref).rpartition("|")[0]).name for ref in references.values()}
        for entry in self.directory.iterdir():
            if entry.name not in wanted and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
        if not wanted and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def discard(self) -> None:
        """Remove the run's directory and every file in it (the run is over)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def sweep_stale_runs(self, retention: float | None = None) -> list[Path]:
        """Remove sibling ``run-<id>`` directories untouched for ``retention`` seconds
        (default :data:`STATE_RETENTION_SECONDS`); returns what was removed."""
        limit = STATE_RETENTION_SECONDS if retention is None else float(retention)
        parent = self.directory.parent
        if not parent.is_dir():
            return []
        removed = []
        now = time.time()
        for entry in parent.iterdir():
            if (
                entry != self.directory
                and _RUN_DIRECTORY.match(entry.name)
                and entry.is_dir()
                and not entry.is_symlink()
                and now - entry.stat().st_mtime > limit
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed


class _HashingSink:
    """A write-only file object that hashes (and counts) what :func:`numpy.save` writes."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

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
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from vfm_flower.errors import ProtocolAbort

Scalar = int | float | str | bool | bytes


class StateArrays(MutableMapping[str, np.ndarray]):
    """A party's state arrays: those in memory, and those still in their state files, read
    (and checked against their digests) only when a step first asks for them.

    A message that does not need an array does not read it: the alignment's rounds and the
    training iterations leave the set-sized tokens and permutations on disk. An array never
    read keeps its file reference at the next save (:meth:`StateFiles.store`).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | None = None,
        references: Mapping[str, str] | None = None,
        read: Callable[[str, str], np.ndarray] | None = None,
    ) -> None:
        self._loaded: dict[str, np.ndarray] = dict(arrays or {})
        #: key -> file reference of the arrays not read yet; ``read(key, reference)`` reads one
        self._pending: dict[str, str] = dict(references or {})
        if self._pending and read is None:
            raise ValueError("StateArrays with file references needs a read function")
        self._read = read

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._loaded:
            reference = self._pending[key]  # KeyError for an unknown key
            assert self._read is not None
            self._loaded[key] = self._read(key, reference)  # a refused file keeps its key
            del self._pending[key]
        return self._loaded[key]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        self._pending.pop(key, None)
        self._loaded[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._pending:
            del self._pending[key]
        else:
            del self._loaded[key]

    def __contains__(self, key: object) -> bool:
        return key in self._loaded or key in self._pending

    def __iter__(self) -> Iterator[str]:
        yield from [*self._loaded, *self._pending]  # a snapshot: reading a key moves it

    def __len__(self) -> int:
        return len(self._loaded) + len(self._pending)

    def discard(self, key: str) -> None:
        """Remove ``key`` if present, without reading its file."""
        if key in self:
            del self[key]

    def in_memory(self) -> dict[str, np.ndarray]:
        """The arrays read or set in this message (the others are still in their files)."""
        return dict(self._loaded)

    def unread_references(self) -> dict[str, str]:
        """``key -> reference`` of the file-backed arrays no step read in this message."""
        return dict(self._pending)


class PartyState:
    """Typed key-value store of scalars and numpy arrays."""

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        arrays: Mapping[str, np.ndarray] | StateArrays | None = None,
    ) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.arrays: StateArrays = (
            arrays if isinstance(arrays, StateArrays) else StateArrays(arrays or {})
        )

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

    def drop_array(self, key: str) -> None:
        """Remove an array the step no longer needs (its file is not read)."""
        self.arrays.discard(key)

    def array_keys(self) -> Iterator[str]:
        return iter(self.arrays)

    def set_group(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        """Store several arrays under ``prefix.NAME`` (e.g. an optimizer's ``to_state()``)."""
        for name, value in arrays.items():
            self.set_array(f"{prefix}.{name}", np.asarray(value))

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays stored with ``set_group(prefix, ...)``, by their own names."""
        head = f"{prefix}."
        return {k[len(head) :]: self.arrays[k] for k in list(self.arrays) if k.startswith(head)}

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

    def store(
        self, arrays: Mapping[str, np.ndarray] | StateArrays
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Split ``arrays`` into those kept in the record and references to files (the
        arrays of a :class:`StateArrays` that no step read keep their references unread).

        Returns
        -------
        kept : dict of str to numpy.ndarray
            The small arrays, for the state record.
        references : dict of str to str
            ``key -> "<absolute path>|<sha256>"`` of every array written to a file.
        """
        kept: dict[str, np.ndarray] = {}
        references: dict[str, str] = {}
        if isinstance(arrays, StateArrays):
            references.update(arrays.unread_references())
            arrays = arrays.in_memory()
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
        return {key: self._read(key, ref) for key, ref in references.items()}

    def load_lazily(
        self, references: dict[str, str], arrays: Mapping[str, np.ndarray] | None = None
    ) -> StateArrays:
        """The referenced arrays as a :class:`StateArrays` that reads (and checks) each file
        when a step first asks for it; every reference is checked to be a file of this run
        now, its content when it is read."""
        for key, ref in references.items():
            path, _ = self._checked_path(key, ref)
            try:
                info = path.lstat()
            except OSError as exc:
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' cannot be read ({exc.strerror})"
                ) from exc
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' is not a file of this party"
                )
        return StateArrays(arrays, references, read=self._read)

    def _read(self, key: str, reference: str) -> np.ndarray:
        """One state file, read once, checked against its digest, parsed from memory."""
        path, digest = self._checked_path(key, reference)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise ProtocolAbort(
                        "state", None, f"the state file of '{key}' is not a regular file"
                    )
                data = bytearray(info.st_size)
                size = handle.readinto(data)
        except OSError as exc:
            raise ProtocolAbort(
                "state", None, f"the state file of '{key}' cannot be read ({exc.strerror})"
            ) from exc
        if size != len(data) or hashlib.sha256(data).hexdigest() != digest:
            raise ProtocolAbort(
                "state", None, f"the state file of '{key}' changed on disk: refused"
            )
        return _array_over(data, key)

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


#: More than any header ``np.save`` writes for the plain dtypes of party state.
_MAX_HEADER = 1 << 16


def _array_over(data: bytearray, key: str) -> np.ndarray:
    """The array of an ``.npy`` image, over ``data`` itself (writable, no second copy)."""
    stream = io.BytesIO(bytes(data[:_MAX_HEADER]))  # the header only, not the array
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as exc:
        raise ProtocolAbort("state", None, f"the state file of '{key}' is not an array") from exc
    if dtype.hasobject:
        raise ProtocolAbort("state", None, f"the state file of '{key}' holds objects: refused")
    count = math.prod(int(d) for d in shape)
    if any(int(d) < 0 for d in shape) or stream.tell() + count * dtype.itemsize != len(data):
        raise ProtocolAbort("state", None, f"the state file of '{key}' is not a whole array")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")


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

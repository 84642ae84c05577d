"""A party's per-run state between messages, in a form any runtime can persist.

In Flower's Deployment Engine every message runs in a fresh process, so nothing may live in
Python globals: the client adapter loads a ``PartyState`` from ``context.state`` before a step
and stores it back after. Values are scalars, strings, bytes or numpy arrays only; arrays of
1 MiB or more are kept in files of the party's work directory (:class:`StateFiles`) and only
their references in ``context.state``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


class StateFiles:
    """The large arrays of a party's per-run state, as ``.npy`` files in its own directory.

    Each file is named by the SHA-256 of its bytes and checked against it when read back, so
    a reference in the state record names exactly one content (a file left by another run or
    changed on disk is refused, not used). Files no longer referenced are removed when the
    state is saved, and the directory when nothing is left in it.

    Parameters
    ----------
    directory : pathlib.Path
        The run's directory under the party's work directory (created, mode 0700, on the first
        file): nobody else reads it.
    min_bytes : int, optional
        Arrays of at least this many bytes go to files.
    """

    def __init__(self, directory: Path, min_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.min_bytes = STATE_FILE_MIN_BYTES if min_bytes is None else int(min_bytes)

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
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = self.directory / f"partial-{os.getpid()}-{index}.npy"
            with partial.open("wb") as handle:
                np.save(handle, np.ascontiguousarray(value), allow_pickle=False)
            digest = _file_digest(partial)
            path = self.directory / f"{digest}.npy"
            os.replace(partial, path)
            references[key] = f"{path.resolve()}|{digest}"
        self._remove_unreferenced(references)
        return kept, references

    def _remove_unreferenced(self, references: dict[str, str]) -> None:
        if not self.directory.is_dir():
            return
        wanted = {Path(ref.split("|", 1)[0]).name for ref in references.values()}
        for entry in self.directory.iterdir():
            if entry.name not in wanted:
                entry.unlink(missing_ok=True)
        if not wanted:
            shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def load(references: dict[str, str]) -> dict[str, np.ndarray]:
        """Read the referenced arrays back, each checked against its digest.

        Raises
        ------
        ProtocolAbort
            A file is missing or its content is not the one referenced.
        """
        out: dict[str, np.ndarray] = {}
        for key, ref in references.items():
            path_text, _, digest = str(ref).rpartition("|")
            path = Path(path_text)
            try:
                actual = _file_digest(path)
            except OSError as exc:
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' cannot be read ({exc.strerror})"
                ) from exc
            if actual != digest:
                raise ProtocolAbort(
                    "state", None, f"the state file of '{key}' changed on disk: refused"
                )
            out[key] = np.load(path, allow_pickle=False)
        return out


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, read 8 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()

"""A party's per-run state between messages, in a form any runtime can persist.

In Flower's Deployment Engine every message runs in a fresh process, so nothing may live in
Python globals: the client adapter loads a ``PartyState`` from ``context.state`` before a step
and stores it back after. Values are scalars, strings, bytes or numpy arrays only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

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

"""The homomorphic-encryption backend interface: what a protocol step may ask of a scheme.

Two backends implement it: :class:`vfm_flower.paillier.PaillierContext` (one ciphertext per
value; the scheme every built-in job uses today) and :class:`vfm_flower.lattice.LatticeContext`
(BFV: thousands of values per ciphertext; needs the ``lattice`` extra). A protocol written
against this interface runs on either: the backend is a choice, the protocol is the same.

Who may call what: the key holder builds the context with its key pair and sends
:meth:`HEBackend.public_bytes`; every other party builds a public context from those bytes.
Only the key holder decrypts. Every ciphertext a party sends back to the key holder goes
through :meth:`HEBackend.rerandomize` first: Paillier then hides its randomness, BFV its
noise (which would otherwise reveal the plaintexts it was multiplied by).

Values are signed integers under a public bound ``|v| < 2**value_bits`` (fixed-point values
are quantized by the caller). Both backends refuse a bound that could wrap around their
plaintext space, and a decrypted value outside its bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["HEBackend"]


class HEBackend(ABC):
    """Encrypt, compute on and decrypt integer vectors under one key (pair).

    Subclasses are immutable and hold their keys; ``name`` says the scheme (``"paillier"``,
    ``"bfv"``).
    """

    __slots__ = ()
    name: str = ""

    @abstractmethod
    def public_bytes(self) -> bytes:
        """The public material another party needs (key, parameters, evaluation keys)."""

    @property
    @abstractmethod
    def has_private_key(self) -> bool:
        """Whether this context can decrypt."""

    @property
    @abstractmethod
    def security_bits(self) -> int:
        """The classical security level of the key (bits)."""

    @abstractmethod
    def encrypt_integers(self, values: np.ndarray, *, value_bits: int) -> Any:
        """``[[v]]`` for signed integers with ``|v| < 2**value_bits``."""

    @abstractmethod
    def decrypt(self, encrypted: Any) -> np.ndarray:
        """The plaintexts (key holder only)."""

    @abstractmethod
    def add(self, a: Any, b: Any) -> Any:
        """``[[a + b]]``."""

    @abstractmethod
    def add_plain(self, encrypted: Any, values: np.ndarray) -> Any:
        """``[[v + k]]`` for a plaintext vector ``k``."""

    @abstractmethod
    def dot(self, X: np.ndarray, encrypted: Any) -> Any:
        """``[[X^T d]]`` for an integer ``rows x m`` matrix and ``[[d]]`` of ``rows`` values."""

    @abstractmethod
    def matvec(self, X: np.ndarray, encrypted: Any) -> Any:
        """``[[X w]]`` for an integer ``rows x m`` matrix and ``[[w]]`` of ``m`` values (as
        :meth:`dot` returns them)."""

    @abstractmethod
    def rerandomize(self, encrypted: Any) -> Any:
        """The same plaintexts, safe to send to the key holder."""

    @abstractmethod
    def ciphertexts_to_bytes(self, encrypted: Any) -> bytes:
        """Serialize a vector (with its bound)."""

    @abstractmethod
    def ciphertexts_from_bytes(
        self, data: bytes, *, max_count: int, count: int | None = None
    ) -> Any:
        """Parse a vector from an untrusted sender, with count, size and range checks."""

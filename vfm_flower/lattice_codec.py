"""Lattice vectors: the ``LatticeVector`` record, integers to residues and back, and bytes.

Values enter as signed integers (int64, or Python ints when wider than 63 bits; never
floats), become residues modulo each plaintext prime, and come back by the Chinese remainder
theorem, checked against the vector's public bound before anything is converted. The wire
format is a fixed header (length, bound, layout, depth, level, primes, ciphertext count,
noise bound) and the SEAL ciphertexts; :func:`vector_from_bytes` checks every field against
the receiver's parameters and every ciphertext's size, level and form before it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.errors import CiphertextError
from vfm_flower.hazmat import seal_bfv as _bfv
from vfm_flower.lattice_parameters import (
    FRESH_NOISE_BITS,
    LatticeParameters,
    sanitized_noise_bits,
)

if TYPE_CHECKING:
    from vfm_flower.lattice import LatticeContext

__all__ = ["LatticeVector", "vector_to_bytes", "vector_from_bytes"]

_VECTOR_MAGIC = b"VFMLATV1"
_VECTOR_HEADER = struct.Struct("<8sQHBBBBIH")


@dataclass(frozen=True, eq=False)
class LatticeVector:
    """An encrypted vector under one :class:`LatticeContext` (immutable).

    Attributes
    ----------
    parts : tuple of tuple
        Per plaintext prime, its SEAL ciphertexts.
    length : int
        Values in the vector.
    value_bits : int
        Public bound ``|v| < 2**value_bits``.
    replicated : bool
        One ciphertext per value (in every slot) instead of ``N`` values per ciphertext.
    depth : int
        Plaintext products this vector went through.
    sanitized : bool
        Re-randomized and switched down: it can go to the key holder, and only be added to.
    noise_bits : int
        The noise model's bound (``log2``) on the ciphertexts' noise: every operation adds
        its share and is refused where the vector could no longer decrypt or be sanitized.
    """

    parts: tuple[tuple[Any, ...], ...]
    length: int
    value_bits: int
    replicated: bool = False
    depth: int = 0
    sanitized: bool = False
    noise_bits: int = FRESH_NOISE_BITS

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        layout = "replicated" if self.replicated else "packed"
        return (
            f"LatticeVector(len={self.length}, value_bits={self.value_bits}, {layout}, "
            f"depth={self.depth}, sanitized={self.sanitized}, noise<=2**{self.noise_bits})"
        )


def magnitude_bits(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    top = max(abs(int(values.max())), abs(int(values.min())))
    return top.bit_length()


def integer_values(values: Any, what: str) -> np.ndarray:
    """``values`` as int64, or as Python ints (object) when wider; never floats."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if arr.dtype == object:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr.flat):
            raise ValueError(f"{what} must be integers (quantize fixed-point values first)")
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers (quantize fixed-point values first)")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 1 << 63:
        return arr.astype(object)
    return arr.astype(np.int64, copy=False)


def declared_bits(values: np.ndarray, declared: int | None, what: str) -> int:
    """The public bound of ``values``: ``declared`` (checked) or their own magnitude."""
    actual = magnitude_bits(values)
    if declared is None:
        return actual
    if actual > declared:
        raise ValueError(f"{what} break the declared bound 2**{declared}")
    return declared


def residues_mod(values: np.ndarray, modulus: int) -> np.ndarray:
    """``values mod t`` in ``[0, t)`` as uint64 (int64 or Python-int object arrays)."""
    if values.dtype == object:
        return np.array([int(v) % modulus for v in values.ravel()], dtype=np.uint64).reshape(
            values.shape
        )
    return np.mod(values.astype(np.int64, copy=False), np.int64(modulus)).astype(np.uint64)


def crt_centered(residues: list[np.ndarray], moduli: list[int], value_bits: int) -> np.ndarray:
    """The integers in ``(-T/2, T/2)`` with these residues (Garner).

    Raises :class:`CiphertextError` for a value outside ``2**value_bits`` (checked before any
    conversion); int64 when the bound is at most ``2**62``.
    """
    if len(moduli) == 1:
        t = moduli[0]
        r = residues[0].astype(np.int64)  # residues are below t < 2**60
        x = np.where(r > t // 2, r - t, r)
        if magnitude_bits(x) > value_bits:
            raise CiphertextError(
                "bound", f"a decrypted value breaks the vector's bound 2**{value_bits}"
            )
        return x if value_bits <= 62 else x.astype(object)
    x = residues[0].astype(object)
    product = moduli[0]
    for r, t in zip(residues[1:], moduli[1:]):
        inverse = pow(product % t, -1, t)
        x = x + product * (((r.astype(object) - x) * inverse) % t)
        product *= t
    x = np.where(x > product // 2, x - product, x)
    if magnitude_bits(x) > value_bits:
        raise CiphertextError(
            "bound", f"a decrypted value breaks the vector's bound 2**{value_bits}"
        )
    if value_bits <= 62:
        return x.astype(np.int64)
    return x


def _max_ciphertext_bytes(params: LatticeParameters, sanitized: bool) -> int:
    primes = params.sanitize_primes if sanitized else len(params.coeff_bits) - 1
    return 2 * params.slots * primes * 8 + 4096


def vector_to_bytes(encrypted: LatticeVector) -> bytes:
    """Header (length, bound, layout, depth, level), then every SEAL ciphertext."""
    count = len(encrypted.parts[0])
    head = _VECTOR_HEADER.pack(
        _VECTOR_MAGIC,
        encrypted.length,
        encrypted.value_bits,
        int(encrypted.replicated),
        encrypted.depth,
        int(encrypted.sanitized),
        len(encrypted.parts),
        count,
        encrypted.noise_bits,
    )
    chunks = [head]
    for cts in encrypted.parts:
        for ct in cts:
            data = _bfv.to_bytes(ct)
            chunks.append(struct.pack("<I", len(data)))
            chunks.append(data)
    return b"".join(chunks)


def vector_from_bytes(
    context: LatticeContext,
    data: bytes,
    *,
    max_count: int,
    count: int | None = None,
    sanitized: bool | None = None,
) -> LatticeVector:
    """Parse :func:`vector_to_bytes` output from an untrusted sender.

    Parameters
    ----------
    max_count : int
        Most values accepted (the sender's signed row count, or the column count).
    count : int, optional
        Exactly this many values expected.
    sanitized : bool, optional
        Require (``True``) or refuse (``False``) a re-randomized vector: the key holder
        accepts for decryption only what was sanitized.

    Raises
    ------
    CiphertextError
        Malformed header, counts, sizes or levels, or ciphertexts SEAL refuses.
    """
    params = context.parameters
    view = memoryview(data)
    if len(view) < _VECTOR_HEADER.size:
        raise CiphertextError("header", "a lattice vector needs its header")
    magic, length, value_bits, rep, depth, san, moduli, cts_count, noise = (
        _VECTOR_HEADER.unpack_from(view)
    )
    if magic != _VECTOR_MAGIC or rep > 1 or san > 1:
        raise CiphertextError("header", "not a lattice vector")
    replicated, is_sanitized = bool(rep), bool(san)
    if length > max_count or (count is not None and length != count) or length < 1:
        raise CiphertextError("count", f"{length} values, expected at most {max_count}")
    if moduli != len(context.kits):
        raise CiphertextError("header", f"{moduli} plaintext primes, expected {len(context.kits)}")
    expected = length if replicated else -(-length // params.slots)
    if cts_count != expected:
        raise CiphertextError("count", f"{cts_count} ciphertexts for {length} values")
    if value_bits > params.value_capacity_bits or depth > params.plain_depth:
        raise CiphertextError("bound", "a bound or depth these parameters do not allow")
    if sanitized is not None and is_sanitized != sanitized:
        raise CiphertextError(
            "header",
            "a re-randomized vector expected" if sanitized else "a fresh vector expected",
        )
    # the sender's noise bound, never below what a fresh (or sanitized) ciphertext has
    floor = sanitized_noise_bits(params.slots) if is_sanitized else FRESH_NOISE_BITS
    noise = max(noise, floor)
    if noise > params.max_decryptable_noise_bits(is_sanitized):
        raise CiphertextError("noise", "a declared noise these parameters do not hold")
    levels = context.level_ids(is_sanitized)
    primes = params.sanitize_primes if is_sanitized else len(params.coeff_bits) - 1
    limit = _max_ciphertext_bytes(params, is_sanitized)
    offset = _VECTOR_HEADER.size
    parts = []
    for kit, level in zip(context.kits, levels):
        out = []
        for _ in range(cts_count):
            if offset + 4 > len(view):
                raise CiphertextError("length", "the lattice vector is truncated")
            (size,) = struct.unpack_from("<I", view, offset)
            offset += 4
            if size > limit or offset + size > len(view):
                raise CiphertextError("length", "a ciphertext is too long or truncated")
            ct = _bfv.load(
                _bfv.new_ciphertext(),
                kit.context,
                bytes(view[offset : offset + size]),
                max_bytes=limit,
                what="ciphertext",
            )
            offset += size
            polys, ct_primes, pid = _bfv.ciphertext_shape(ct)
            if (
                polys != 2
                or ct_primes != primes
                or list(pid) != list(level)
                or ct.is_ntt_form()
                or ct.is_transparent()
            ):
                raise CiphertextError("header", "a ciphertext at the wrong level or size")
            out.append(ct)
        parts.append(tuple(out))
    if offset != len(view):
        raise CiphertextError("length", "trailing bytes after the lattice vector")
    return LatticeVector(tuple(parts), length, value_bits, replicated, depth, is_sanitized, noise)

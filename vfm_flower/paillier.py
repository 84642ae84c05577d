"""Paillier encryption for vertical federated learning: the safe API (``phe`` keys + gmpy2).

Two ways in:

* :class:`PaillierContext`, for a job-step author: an immutable object on one key that
  encrypts fixed-point or integer vectors, computes ``X^T [[d]]``, per-group sums, sums and
  plaintext products, re-randomizes, decrypts (key holder only) and (de)serializes encrypted
  vectors with size checks. Inputs are validated, value bounds are tracked so that no result
  can wrap around the plaintext space unnoticed, and failures raise typed exceptions:
  :class:`~vfm_flower.errors.PaillierKeyError` (missing or mismatched key),
  :class:`~vfm_flower.errors.CiphertextError` (malformed or out-of-bound ciphertexts),
  :class:`~vfm_flower.errors.PolicyViolation` (key shorter than the agreement allows).
* Keys, their codecs, re-randomization (:func:`rerandomize`: give a homomorphically
  computed ciphertext fresh randomness before it reaches the key holder, who could otherwise
  extract its randomness and test hypotheses against it) and the ciphertext codecs that the
  protocols of ``vfm_flower.private_gradients`` and the job steps share.

Everything is plain Paillier with ``g = n + 1`` on ``phe``'s key objects, so a ``phe`` private
key decrypts every ciphertext made here and ``phe`` ciphertexts can enter every operation here.
The fast paths (DJN short-exponent obfuscators, CRT, process pools, bucketed
multi-exponentiation, slot packing) live in :mod:`vfm_flower.hazmat`, which has no safety net:
job steps use this module only.

Nothing in this module logs a key, a plaintext, a mask or a ciphertext; debug logs carry sizes
and timings only.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import gmpy2
from gmpy2 import mpz
from phe import paillier as phe_paillier
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from vfm_flower.errors import CiphertextError, PaillierKeyError
from vfm_flower.hazmat import (
    FEATURE_FRACTION_BITS,
    FEATURE_INTEGER_BITS,
    FEATURE_VALUE_BITS,
    MAX_RESIDUAL_ABS,
    MIN_KEY_BITS,
    RESIDUAL_FRACTION_BITS,
    STATISTICAL_SECURITY_BITS,
    CRTDecryptor,
    RandomBits,
    check_key_bits,
)
from vfm_flower.hazmat import paillier_djn as _djn

__all__ = [
    # the entry point of job steps, and its errors
    "PaillierContext",
    "PaillierKeyError",
    "CiphertextError",
    # keys
    "MIN_KEY_BITS",
    "check_key_bits",
    "generate_paillier_keypair",
    "public_key_to_bytes",
    "public_key_from_bytes",
    "private_key_to_bytes",
    "private_key_from_bytes",
    # fixed point and masking parameters
    "RESIDUAL_FRACTION_BITS",
    "MAX_RESIDUAL_ABS",
    "FEATURE_FRACTION_BITS",
    "FEATURE_INTEGER_BITS",
    "FEATURE_VALUE_BITS",
    "STATISTICAL_SECURITY_BITS",
    # payloads
    "EncryptedVector",
    "RandomBits",
    "CRTDecryptor",
    "rerandomize",
    # byte codecs
    "ciphertext_width",
    "ciphertexts_to_bytes",
    "ciphertexts_from_bytes",
    "encrypted_vector_to_bytes",
    "encrypted_vector_from_bytes",
]

logger = logging.getLogger(__name__)

_EV_MAGIC = b"VEV1"
_PK_MAGIC = b"VPC1"
_SK_MAGIC = b"VSK1"
#: Largest integer feature accepted by :meth:`PaillierContext.dot` (a fixed, public bound).
_INTEGER_FEATURE_BITS = 61
#: Default public bound of :meth:`PaillierContext.encrypt_integers`: ``|v| < 2**32``.
_DEFAULT_INTEGER_BITS = 32

_Key = TypeVar("_Key", PaillierPublicKey, PaillierPrivateKey)


# --------------------------------------------------------------------------------------------
# Keys


def generate_paillier_keypair(
    bits: int = 2048,
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """Generate a Paillier key pair with ``phe`` (primes from the OS CSPRNG).

    Parameters
    ----------
    bits : int
        Modulus size; at least ``MIN_KEY_BITS``.

    Returns
    -------
    tuple[PaillierPublicKey, PaillierPrivateKey]
        ``phe`` key objects.

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"`` if ``bits < MIN_KEY_BITS``.
    """
    check_key_bits(bits)
    if bits % 16:
        raise ValueError("the Paillier modulus size must be a multiple of 16 bits")
    started = time.perf_counter()
    public, private = phe_paillier.generate_paillier_keypair(n_length=bits)
    logger.debug("generated a %d-bit Paillier key in %.2f s", bits, time.perf_counter() - started)
    return public, private


def _key_bytes(n: int) -> int:
    return (int(n).bit_length() + 7) // 8


def public_key_to_bytes(public: PaillierPublicKey) -> bytes:
    """Serialize a public key: the modulus ``n``, big-endian, in exactly ``bits / 8`` bytes."""
    n = int(public.n)
    return n.to_bytes(_key_bytes(n), "big")


def _validate_modulus(n: int, min_bits: int) -> None:
    check_key_bits(n.bit_length(), min_bits)
    if n % 2 == 0 or gmpy2.is_square(n) or gmpy2.is_prime(n):
        raise ValueError("not a Paillier modulus: n must be an odd product of two primes")
    if math.gcd(n, math.prod(_SMALL_PRIMES)) != 1:
        raise ValueError("not a Paillier modulus: n has a small prime factor")


_SMALL_PRIMES = tuple(p for p in range(3, 2000) if all(p % q for q in range(2, int(p**0.5) + 1)))


def public_key_from_bytes(data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierPublicKey:
    """Parse a public key written by :func:`public_key_to_bytes`.

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
    ValueError
        If the bytes are not a canonical modulus encoding.
    """
    if not data or data[0] == 0:
        raise ValueError("a public key is the modulus n without leading zero bytes")
    n = int.from_bytes(data, "big")
    _validate_modulus(n, min_bits)
    return PaillierPublicKey(n)


def private_key_to_bytes(private: PaillierPrivateKey) -> bytes:
    """Serialize a private key for the label owner's state: magic, then ``p`` and ``q``.

    Format: ``b"VSK1"``, 2-byte big-endian prime width ``w``, ``p`` and ``q`` big-endian in ``w``
    bytes each. Secret: store it only in the owner's private state.
    """
    p, q = int(private.p), int(private.q)
    width = max(_key_bytes(p), _key_bytes(q))
    return (
        _SK_MAGIC + width.to_bytes(2, "big") + p.to_bytes(width, "big") + q.to_bytes(width, "big")
    )


def private_key_from_bytes(data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierPrivateKey:
    """Parse a private key written by :func:`private_key_to_bytes` (checks ``p`` and ``q``).

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
    ValueError
        If the bytes are malformed or ``p``, ``q`` are not distinct primes.
    """
    if len(data) < 6 or data[:4] != _SK_MAGIC:
        raise ValueError("not a vfm Paillier private key (bad magic)")
    width = int.from_bytes(data[4:6], "big")
    if width == 0 or len(data) != 6 + 2 * width:
        raise ValueError("Paillier private key has the wrong length")
    p = int.from_bytes(data[6 : 6 + width], "big")
    q = int.from_bytes(data[6 + width :], "big")
    if p == q or not gmpy2.is_prime(p) or not gmpy2.is_prime(q):
        raise ValueError("Paillier private key: p and q must be distinct primes")
    n = p * q
    check_key_bits(n.bit_length(), min_bits)
    return PaillierPrivateKey(PaillierPublicKey(n), p, q)


# --------------------------------------------------------------------------------------------
# Payloads


@dataclass(frozen=True)
class EncryptedVector:
    """Encrypted residuals ``[[d_q]]`` sent by the label owner to a passive party.

    Attributes
    ----------
    ciphertexts : tuple[mpz, ...]
        One ciphertext per aligned row.
    value_bits : int
        Public bound ``|d_q| < 2**value_bits``.
    fraction_bits : int
        Fixed-point precision of ``d_q = round(d * 2**fraction_bits)``.
    """

    ciphertexts: tuple[mpz, ...]
    value_bits: int
    fraction_bits: int = RESIDUAL_FRACTION_BITS

    def __len__(self) -> int:
        return len(self.ciphertexts)

    def __repr__(self) -> str:
        return f"EncryptedVector(len={len(self.ciphertexts)}, value_bits={self.value_bits})"


# --------------------------------------------------------------------------------------------
# Re-randomization


def rerandomize(
    public: PaillierPublicKey,
    ciphertexts: Sequence[int],
    *,
    rng: RandomBits = secrets,
    workers: int | None = None,
) -> list[mpz]:
    """Fresh randomness for ciphertexts: same plaintexts, unlinkable ciphertexts.

    Each ciphertext is multiplied by ``rho**n mod n**2`` with a fresh full-size ``rho``
    uniform in ``Z_n^*``, so the result is a uniformly random encryption of the same plaintext,
    even to the key holder (who can extract the randomness of any ciphertext). Do it to every
    homomorphically computed ciphertext before it goes to the key holder: otherwise its
    randomness is a product of the inputs' randomness raised to your plaintext weights, which
    the key holder can test guesses against; and a ciphertext it gets back cannot be linked to
    one it sent.

    Parameters
    ----------
    public : PaillierPublicKey
        The key the ciphertexts are under.
    ciphertexts : Sequence[int]
        Ciphertexts in ``(0, n**2)``.
    rng : RandomBits
        Source of ``rho`` (default: the ``secrets`` module; another source is used in-process).
    workers : int, optional
        Processes; default: all cores from 64 ciphertexts on (one full exponentiation each,
        ~15 ms at 2048 bits).

    Returns
    -------
    list[mpz]
        The re-randomized ciphertexts, in order.

    Raises
    ------
    ValueError
        If a ciphertext is out of range for the key.
    """
    n = mpz(public.n)
    nsquare = n * n
    cts = [mpz(c) for c in ciphertexts]
    if any(not 0 < c < nsquare for c in cts):
        raise ValueError("a ciphertext is out of range for this key")
    factors = _djn.full_obfuscators(n, len(cts), rng=rng, workers=workers)
    return [c * r % nsquare for c, r in zip(cts, factors, strict=True)]


# --------------------------------------------------------------------------------------------
# High-level steps


# --------------------------------------------------------------------------------------------
# Byte codecs (big integers do not fit Flower records: fixed-width bytes it is)


def ciphertext_width(public: PaillierPublicKey) -> int:
    """Bytes of one serialized ciphertext: the byte length of ``n**2``."""
    return _djn.ciphertext_bytes_width(mpz(public.n) ** 2)


def ciphertexts_to_bytes(ciphertexts: Sequence[int], public: PaillierPublicKey) -> bytes:
    """Concatenate ciphertexts big-endian, each in exactly :func:`ciphertext_width` bytes."""
    nsquare = mpz(public.n) ** 2
    width = _djn.ciphertext_bytes_width(nsquare)
    for c in ciphertexts:
        if not 0 < c < nsquare:
            raise ValueError("a ciphertext is out of range for this key")
    return _djn.join_ciphertexts(ciphertexts, width)


def ciphertexts_from_bytes(
    data: bytes, public: PaillierPublicKey, count: int | None = None
) -> list[mpz]:
    """Parse :func:`ciphertexts_to_bytes` output; checks width, range and (optional) count."""
    nsquare = mpz(public.n) ** 2
    width = _djn.ciphertext_bytes_width(nsquare)
    if count is not None and len(data) != count * width:
        raise ValueError(f"expected {count} ciphertexts of {width} bytes, got {len(data)} bytes")
    return _djn.split_ciphertexts(data, width, nsquare)


def _header(magic: bytes, *fields: int) -> bytes:
    return magic + b"".join(f.to_bytes(4, "big") for f in fields)


def _read_header(data: bytes, magic: bytes, count: int, what: str) -> tuple[list[int], bytes]:
    size = len(magic) + 4 * count
    if len(data) < size or data[: len(magic)] != magic:
        raise ValueError(f"not a serialized {what}")
    fields = [
        int.from_bytes(data[len(magic) + 4 * i : len(magic) + 4 * i + 4], "big")
        for i in range(count)
    ]
    return fields, data[size:]


def encrypted_vector_to_bytes(vector: EncryptedVector, public: PaillierPublicKey) -> bytes:
    """Serialize encrypted residuals: header (count, value bits, fraction bits), ciphertexts."""
    head = _header(_EV_MAGIC, len(vector.ciphertexts), vector.value_bits, vector.fraction_bits)
    return head + ciphertexts_to_bytes(vector.ciphertexts, public)


def encrypted_vector_from_bytes(data: bytes, public: PaillierPublicKey) -> EncryptedVector:
    """Parse :func:`encrypted_vector_to_bytes` output (checks the count and widths)."""
    (count, value_bits, fraction_bits), body = _read_header(data, _EV_MAGIC, 3, "encrypted vector")
    if not 0 < value_bits <= 64 or fraction_bits > 64:
        raise ValueError("encrypted vector declares an invalid value bound")
    cts = ciphertexts_from_bytes(body, public, count)
    return EncryptedVector(tuple(cts), value_bits, fraction_bits)


# The entry point of job steps lives in its own module (it builds on everything above).
from vfm_flower.paillier_context import PaillierContext  # noqa: E402

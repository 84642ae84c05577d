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
* The protocol steps of the backward pass of vertical training::

    label owner (LO, holds the private key)          passive party P_k (holds X_k)
    d = residuals (floats)
    [[d]] = encrypt_residuals(public, d)      ---->
                                                     packed, state = masked_encrypted_gradient(
                                                         public, [[d]], X_k)
                                              <----  packed = pack([[X_k^T d + r_k]])
    s = decrypt_masked_gradient(private, packed)
                                              ---->  g = unmask_gradient(s, state) = X_k^T d

  The party adds a statistical mask to every ``[[g_j]]``, packs several masked values into one
  ciphertext and re-randomizes it (:func:`rerandomize`): the randomness of a homomorphically
  computed ciphertext is a product of the label owner's own obfuscators raised to the party's
  feature values, which the key owner could extract and test hypotheses against;
  re-randomization makes it a uniformly random encryption of its (masked) plaintext.

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
import operator
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import gmpy2
import numpy as np
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
from vfm_flower.hazmat import paillier_dot as _dot

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
    # payloads and protocol steps of the backward pass
    "EncryptedVector",
    "PackedCiphertexts",
    "MaskState",
    "RandomBits",
    "CRTDecryptor",
    "rerandomize",
    "encrypt_residuals",
    "masked_encrypted_gradient",
    "decrypt_masked_gradient",
    "unmask_gradient",
    # byte codecs
    "ciphertext_width",
    "ciphertexts_to_bytes",
    "ciphertexts_from_bytes",
    "encrypted_vector_to_bytes",
    "encrypted_vector_from_bytes",
    "packed_to_bytes",
    "packed_from_bytes",
    "masked_values_to_bytes",
    "masked_values_from_bytes",
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


@dataclass(frozen=True)
class PackedCiphertexts:
    """Packed, masked, re-randomized ``[[X_k^T d + r_k]]`` sent by a party to the label owner."""

    ciphertexts: tuple[mpz, ...]
    count: int
    slot_bits: int
    slots_per_ciphertext: int

    def __post_init__(self) -> None:
        if self.count < 0 or self.slot_bits < 1 or self.slots_per_ciphertext < 1:
            raise ValueError("invalid packing parameters")
        if len(self.ciphertexts) != -(-self.count // self.slots_per_ciphertext):
            raise ValueError("packed ciphertext count does not match the packing parameters")

    def __repr__(self) -> str:
        return (
            f"PackedCiphertexts(count={self.count}, ciphertexts={len(self.ciphertexts)}, "
            f"slot_bits={self.slot_bits})"
        )


@dataclass(frozen=True, repr=False)
class MaskState:
    """The passive party's secret masks of one backward step. Never leaves the party.

    Attributes
    ----------
    masks : tuple[int, ...]
        ``r_j`` per feature.
    value_bits : int
        Offset exponent: a slot holds ``g_j + 2**value_bits + r_j``.
    scale_bits : int
        ``g_j`` is ``X^T d`` scaled by ``2**scale_bits``.
    """

    masks: tuple[int, ...]
    value_bits: int
    scale_bits: int

    def __repr__(self) -> str:
        return f"MaskState(count={len(self.masks)})"


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


def encrypt_residuals(
    public: PaillierPublicKey,
    d: np.ndarray,
    *,
    bound: float | None = None,
    encryptor: _djn.DJNEncryptor | None = None,
    private: PaillierPrivateKey | None = None,
    workers: int | None = None,
) -> EncryptedVector:
    """Label owner: encrypt the residuals ``d`` in fixed point (``RESIDUAL_FRACTION_BITS``).

    Parameters
    ----------
    public : PaillierPublicKey
        The label owner's public key.
    d : np.ndarray
        1-D float residuals (``|d| <= 1`` for logistic regression).
    bound : float, optional
        Public bound on ``|d|`` (pass 1.0 for logistic regression). Default: the smallest power
        of two at least ``max |d|``.
    encryptor : vfm_flower.hazmat.DJNEncryptor, optional
        Keep one per run (made with the private key) to reuse its tables and pooled
        obfuscators.
    private : PaillierPrivateKey, optional
        Without ``encryptor``: the label owner's private key, for CRT-accelerated obfuscators.
    workers : int, optional
        Processes for the encryption (default: all cores for large vectors).
    """
    if encryptor is None:
        encryptor = _djn.DJNEncryptor(public, private=private)
    quantized, value_bits = _dot.quantize_residuals(d, bound=bound)
    cts = _djn.encrypt_vector(public, quantized, encryptor=encryptor, workers=workers)
    return EncryptedVector(tuple(cts), value_bits, RESIDUAL_FRACTION_BITS)


def masked_encrypted_gradient(
    public: PaillierPublicKey,
    enc_d: EncryptedVector,
    X: np.ndarray,
    rng: RandomBits = secrets,
    *,
    workers: int | None = None,
) -> tuple[PackedCiphertexts, MaskState]:
    """Passive party: ``[[X^T d + r]]`` masked, packed and re-randomized, and the mask state.

    Parameters
    ----------
    public : PaillierPublicKey
        The label owner's public key.
    enc_d : EncryptedVector
        Encrypted residuals from the label owner.
    X : np.ndarray
        ``n x m`` float features (quantized here to ``FEATURE_FRACTION_BITS``).
    rng : RandomBits
        Source of the masks and re-randomization (default: the ``secrets`` module).
    workers : int, optional
        Processes for the dot products.

    Returns
    -------
    tuple[PackedCiphertexts, MaskState]
        The payload for the label owner, and the secret state to keep for
        :func:`unmask_gradient`.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError("features must be a 2-D matrix (rows x features)")
    rows, cols = X.shape
    if rows != len(enc_d):
        raise ValueError(f"features have {rows} rows but {len(enc_d)} residuals were received")
    if cols == 0:
        raise ValueError("no feature column to compute a gradient for")
    n = mpz(public.n)
    nsquare = n * n
    layout = _dot.slot_layout(rows, enc_d.value_bits, n.bit_length())
    X_q = _dot.quantize_features(X)
    dots = _dot.encrypted_dot_products(enc_d.ciphertexts, X_q, nsquare, workers=workers)
    packed = _dot.pack_ciphertexts(
        dots, nsquare, slot_bits=layout.slot_bits, slots_per_ciphertext=layout.slots_per_ciphertext
    )
    masks = tuple(int(rng.randbits(layout.mask_bits)) for _ in range(cols))
    offset = 1 << layout.value_bits
    slots = layout.slots_per_ciphertext
    plains = [
        mpz(sum((offset + r) << (layout.slot_bits * i) for i, r in enumerate(group)))
        for group in (masks[k * slots : (k + 1) * slots] for k in range(len(packed)))
    ]
    # [[a]] * (1 + plain * n) = [[a + plain]]
    masked = _djn.add_plaintexts(plains, packed, n, nsquare)
    out = rerandomize(public, masked, rng=rng)
    payload = PackedCiphertexts(tuple(out), cols, layout.slot_bits, layout.slots_per_ciphertext)
    state = MaskState(masks, layout.value_bits, enc_d.fraction_bits + FEATURE_FRACTION_BITS)
    return payload, state


def decrypt_masked_gradient(
    private: PaillierPrivateKey | CRTDecryptor, packed: PackedCiphertexts
) -> np.ndarray:
    """Label owner: decrypt and unpack the masked gradient (it learns only masked values).

    Parameters
    ----------
    private : PaillierPrivateKey or CRTDecryptor
        The label owner's key (pass a :class:`CRTDecryptor` to reuse its precomputation).
    packed : PackedCiphertexts
        A passive party's reply.

    Returns
    -------
    np.ndarray
        ``object`` array of ``packed.count`` non-negative Python ints ``g_j + offset + r_j``,
        to return to the party (see :func:`masked_values_to_bytes`).
    """
    decryptor = private if isinstance(private, CRTDecryptor) else CRTDecryptor(private)
    if packed.slot_bits * packed.slots_per_ciphertext > decryptor.key_bits - 1:
        raise ValueError("packed gradient declares slots that do not fit the key")
    values: list[int] = []
    remaining = packed.count
    for c in packed.ciphertexts:
        take = min(remaining, packed.slots_per_ciphertext)
        values.extend(
            _dot.unpack_plaintext(decryptor.decrypt(c), slot_bits=packed.slot_bits, count=take)
        )
        remaining -= take
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def unmask_gradient(masked_values: np.ndarray | Sequence[int], mask_state: MaskState) -> np.ndarray:
    """Passive party: remove the masks and get ``X^T d`` as ``float64``.

    The result equals ``X_q^T d_q / 2**(RESIDUAL_FRACTION_BITS + FEATURE_FRACTION_BITS)``
    exactly (up to float rounding), i.e. ``X^T d`` to the quantization precision.

    Raises
    ------
    ValueError
        If the values do not match the mask state (wrong count, or a result out of bounds,
        which reveals a corrupted or mismatched reply).
    """
    values = [int(v) for v in masked_values]
    if len(values) != len(mask_state.masks):
        raise ValueError(f"got {len(values)} masked values for {len(mask_state.masks)} masks")
    offset = 1 << mask_state.value_bits
    out = np.empty(len(values), dtype=np.float64)
    for j, (value, mask) in enumerate(zip(values, mask_state.masks)):
        g = value - offset - mask
        if abs(g) >= offset:
            raise ValueError("masked gradient does not match this mask state")
        out[j] = math.ldexp(float(g), -mask_state.scale_bits)
    return out


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


def packed_to_bytes(packed: PackedCiphertexts, public: PaillierPublicKey) -> bytes:
    """Serialize packed ciphertexts: header (count, slot bits, slots), ciphertexts."""
    head = _header(_PK_MAGIC, packed.count, packed.slot_bits, packed.slots_per_ciphertext)
    return head + ciphertexts_to_bytes(packed.ciphertexts, public)


def packed_from_bytes(data: bytes, public: PaillierPublicKey) -> PackedCiphertexts:
    """Parse :func:`packed_to_bytes` output (checks that the slots fit the key)."""
    (count, slot_bits, slots), body = _read_header(data, _PK_MAGIC, 3, "packed gradient")
    key_bits = int(public.n).bit_length()
    if slot_bits < 1 or slots < 1 or slot_bits * slots > key_bits - 1:
        raise ValueError("packed gradient declares slots that do not fit the key")
    expected = -(-count // slots)
    cts = ciphertexts_from_bytes(body, public, expected)
    return PackedCiphertexts(tuple(cts), count, slot_bits, slots)


def masked_values_to_bytes(values: np.ndarray | Sequence[int], slot_bits: int) -> bytes:
    """Serialize decrypted masked values (non-negative, below ``2**slot_bits``) fixed width."""
    width = (slot_bits + 7) // 8
    out = []
    for v in values:
        v = int(v)
        if not 0 <= v < 1 << slot_bits:
            raise ValueError("a masked value does not fit its slot")
        out.append(v.to_bytes(width, "big"))
    return b"".join(out)


def masked_values_from_bytes(data: bytes, slot_bits: int, count: int) -> np.ndarray:
    """Parse :func:`masked_values_to_bytes` output (checks width and count)."""
    width = (slot_bits + 7) // 8
    if len(data) != width * count:
        raise ValueError(f"expected {count} masked values of {width} bytes, got {len(data)} bytes")
    values = [int.from_bytes(data[i * width : (i + 1) * width], "big") for i in range(count)]
    if any(v >> slot_bits for v in values):
        raise ValueError("a masked value does not fit its slot")
    out = np.empty(count, dtype=object)
    out[:] = values
    return out


# --------------------------------------------------------------------------------------------
# PaillierContext: the entry point of job steps


def _integers(values: Any, what: str) -> list[int]:
    """Python ints of a 1-D integer (or bool) vector; ``ValueError`` for anything else."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector, got {arr.ndim} dimensions")
    if not (arr.dtype == object or arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be integers, got {arr.dtype}: convert with astype(np.int64)")
    try:
        return [operator.index(v) for v in arr.tolist()]
    except TypeError as exc:
        raise ValueError(f"{what} must be integers") from exc


def _fixed_point(values: Any, fraction_bits: int, what: str) -> list[int]:
    """``round(v * 2**fraction_bits)`` as exact Python ints of a 1-D finite float vector."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector, got {arr.ndim} dimensions")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} hold NaN or infinite values")
    try:
        return [round(math.ldexp(v, fraction_bits)) for v in arr.tolist()]
    except OverflowError as exc:
        raise ValueError(f"{what} are too large for a 2**-{fraction_bits} fixed point") from exc


def _parse_key(parse: Callable[..., _Key], data: bytes, min_bits: int, what: str) -> _Key:
    """``parse(data, min_bits=min_bits)`` with a malformed key as :class:`PaillierKeyError`."""
    try:
        return parse(data, min_bits=min_bits)
    except ValueError as exc:
        raise PaillierKeyError(f"{what} key refused: {exc}") from exc


def _magnitude_bits(values: Sequence[int]) -> int:
    return max((abs(v) for v in values), default=0).bit_length()


class PaillierContext:
    """Paillier operations on one key, for a vertical-FL job step: the safe entry point.

    Built from a public key (any party: encrypt, compute on ciphertexts, re-randomize,
    serialize) or from a key pair (the key holder: also decrypt). Immutable: the keys cannot be
    swapped, and every operation returns a new :class:`EncryptedVector`. Each vector carries a
    public bound ``|v| < 2**value_bits`` and its fixed-point scale ``fraction_bits``
    (``0``: integers); operations derive the bound of their result and refuse one that could
    wrap around the plaintext space, and :meth:`decrypt` refuses a value outside its bound
    (the sign of a wrong key or a corrupted vector).

    The context keeps one encryptor (a table of short-exponent obfuscators, made on first
    use, computed modulo ``p**2`` and ``q**2`` when the private key is present); a lock
    serializes its use, so an obfuscator is never used twice, also across threads. A context
    is not pickled: send :meth:`public_bytes`, keep :meth:`private_bytes` in the key holder's
    private state.

    Parameters
    ----------
    public_key : PaillierPublicKey
        The ``phe`` public key.
    private_key : PaillierPrivateKey, optional
        The matching ``phe`` private key (key holder only).
    min_bits : int
        Smallest modulus accepted (default ``MIN_KEY_BITS`` = 2048; an agreement may require
        more, never less).

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
    PaillierKeyError
        If the modulus is not a Paillier modulus or the private key belongs to another key.

    Examples
    --------
    >>> holder = PaillierContext.generate(2048)  # the label owner
    >>> labels = holder.encrypt_integers(np.array([1, 0, 1, 1]), value_bits=1)
    >>> party = PaillierContext.from_public_bytes(holder.public_bytes())
    >>> sums = party.grouped_sum(labels, np.array([0, 1, 1, -1]), 2)
    >>> holder.decrypt(sums)
    array([1, 1])
    """

    __slots__ = ("_public", "_private", "_n", "_nsquare", "_lock", "_encryptor")

    def __init__(
        self,
        public_key: PaillierPublicKey,
        private_key: PaillierPrivateKey | None = None,
        *,
        min_bits: int = MIN_KEY_BITS,
    ) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise TypeError("public_key must be a phe PaillierPublicKey")
        n = int(public_key.n)
        try:
            _validate_modulus(n, min_bits)
        except ValueError as exc:
            raise PaillierKeyError(f"public key refused: {exc}") from exc
        if private_key is not None:
            if not isinstance(private_key, PaillierPrivateKey):
                raise TypeError("private_key must be a phe PaillierPrivateKey")
            if int(private_key.p) * int(private_key.q) != n:
                raise PaillierKeyError("the private key does not belong to this public key")
        for name, value in (
            ("_public", public_key),
            ("_private", private_key),
            ("_n", mpz(n)),
            ("_nsquare", mpz(n) ** 2),
            ("_lock", threading.Lock()),
            ("_encryptor", None),
        ):
            object.__setattr__(self, name, value)

    # ---------------------------------------------------------------- construction, keys

    @classmethod
    def generate(cls, bits: int = 2048) -> PaillierContext:
        """A new key pair (primes from the OS CSPRNG) and its context.

        Parameters
        ----------
        bits : int
            Modulus size: at least 2048, a multiple of 16.

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if ``bits < 2048``.
        ValueError
            If ``bits`` is not a multiple of 16.
        """
        public, private = generate_paillier_keypair(bits)
        return cls(public, private)

    @classmethod
    def from_public_bytes(cls, data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierContext:
        """The context of a public key serialized by :meth:`public_bytes`.

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
        PaillierKeyError
            If the bytes are not a canonical Paillier modulus.
        """
        public = _parse_key(public_key_from_bytes, data, min_bits, "public")
        return cls(public, min_bits=min_bits)

    @classmethod
    def from_private_bytes(cls, data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierContext:
        """The key holder's context from :meth:`private_bytes` (checks ``p`` and ``q``).

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
        PaillierKeyError
            If the bytes are malformed or ``p``, ``q`` are not distinct primes.
        """
        private = _parse_key(private_key_from_bytes, data, min_bits, "private")
        return cls(private.public_key, private, min_bits=min_bits)

    def public_bytes(self) -> bytes:
        """The public key: the modulus ``n``, big-endian, in ``bits / 8`` bytes."""
        return public_key_to_bytes(self._public)

    def private_bytes(self) -> bytes:
        """The private key (secret: store it only in the key holder's private state).

        Raises
        ------
        PaillierKeyError
            If this context holds only the public key.
        """
        return private_key_to_bytes(self._require_private("serializing the private key"))

    def public_context(self) -> PaillierContext:
        """This key without its private half, to hand to code that must not decrypt."""
        return PaillierContext(self._public) if self.has_private_key else self

    @property
    def public_key(self) -> PaillierPublicKey:
        """The ``phe`` public key."""
        return self._public

    @property
    def has_private_key(self) -> bool:
        """Whether this context can decrypt."""
        return self._private is not None

    @property
    def key_bits(self) -> int:
        """Size of the modulus in bits."""
        return int(self._n.bit_length())

    @property
    def ciphertext_width(self) -> int:
        """Bytes of one serialized ciphertext."""
        return _djn.ciphertext_bytes_width(self._nsquare)

    def __repr__(self) -> str:
        return f"PaillierContext(bits={self.key_bits}, private_key={self.has_private_key})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a PaillierContext is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a PaillierContext is immutable")

    def __reduce__(self) -> Any:
        raise TypeError(
            "a PaillierContext is not pickled: send public_bytes(), keep private_bytes() in the "
            "key holder's private state"
        )

    def __copy__(self) -> PaillierContext:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PaillierContext:
        return self

    # ---------------------------------------------------------------- internals

    def _require_private(self, action: str) -> PaillierPrivateKey:
        if self._private is None:
            raise PaillierKeyError(
                f"{action} needs the private key: this context holds only the public key"
            )
        return self._private

    def _encryptor_in_lock(self) -> _djn.DJNEncryptor:
        """The encryptor (made on first use). Call with the lock held."""
        if self._encryptor is None:
            object.__setattr__(
                self, "_encryptor", _djn.DJNEncryptor(self._public, private=self._private)
            )
        return self._encryptor

    def _check_bounds(self, value_bits: int, fraction_bits: int) -> None:
        limit = self.key_bits - 2  # |v| < 2**(bits - 2) < n / 2: the sign decodes unambiguously
        if not 0 < value_bits <= limit:
            raise CiphertextError(
                "bound",
                f"a value bound of 2**{value_bits} does not fit a {self.key_bits}-bit key "
                f"(at most 2**{limit}): the result could wrap around",
            )
        if not 0 <= fraction_bits <= self.key_bits:
            raise CiphertextError("bound", f"invalid fixed-point scale 2**-{fraction_bits}")

    def _ciphertexts(self, encrypted: EncryptedVector) -> tuple[mpz, ...]:
        """The ciphertexts of a vector, after checking its bounds and their range."""
        if not isinstance(encrypted, EncryptedVector):
            raise TypeError("expected an EncryptedVector")
        self._check_bounds(encrypted.value_bits, encrypted.fraction_bits)
        nsquare = self._nsquare
        if any(not 0 < c < nsquare for c in encrypted.ciphertexts):
            raise CiphertextError("range", "a ciphertext is not in (0, n**2) for this key")
        return encrypted.ciphertexts

    def _result(
        self,
        cts: Sequence[mpz],
        value_bits: int,
        fraction_bits: int,
        fresh: bool,
        workers: int | None,
    ) -> EncryptedVector:
        vector = EncryptedVector(tuple(cts), value_bits, fraction_bits)
        return self.rerandomize(vector, workers=workers) if fresh else vector

    def _aligned(self, encrypted: EncryptedVector, fraction_bits: int) -> EncryptedVector:
        """``encrypted`` rescaled (by a power of two) to ``fraction_bits >= its own``."""
        shift = fraction_bits - encrypted.fraction_bits
        if shift == 0:
            return encrypted
        factor, nsquare = mpz(1) << shift, self._nsquare
        value_bits = encrypted.value_bits + shift
        self._check_bounds(value_bits, fraction_bits)
        cts = [gmpy2.powmod(c, factor, nsquare) for c in encrypted.ciphertexts]
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)

    # ---------------------------------------------------------------- encryption

    def encrypt(
        self, values: np.ndarray, *, bound: float, workers: int | None = None
    ) -> EncryptedVector:
        """Encrypt real values in fixed point (``round(v * 2**32)``) under a public bound.

        Parameters
        ----------
        values : np.ndarray
            1-D finite floats with ``|v| <= bound``.
        bound : float
            Public bound on ``|v|`` (below ``2**30``); only its bit length travels with the
            vector, so pass a data-independent bound (1.0 for probabilities and residuals of
            logistic regression).
        workers : int, optional
            Processes (default: all cores from 1024 values on).

        Returns
        -------
        EncryptedVector
            ``fraction_bits = 32``.

        Raises
        ------
        ValueError
            If ``values`` is not a 1-D finite vector within ``bound``.
        """
        quantized, value_bits = _dot.quantize_residuals(values, bound=float(bound))
        with self._lock:
            cts = _djn.encrypt_vector(
                self._public, quantized, encryptor=self._encryptor_in_lock(), workers=workers
            )
        return EncryptedVector(tuple(cts), value_bits, RESIDUAL_FRACTION_BITS)

    def encrypt_integers(
        self,
        values: np.ndarray,
        *,
        value_bits: int = _DEFAULT_INTEGER_BITS,
        workers: int | None = None,
    ) -> EncryptedVector:
        """Encrypt signed or non-negative integers (counts, 0/1 labels) exactly.

        Parameters
        ----------
        values : np.ndarray
            1-D integers or booleans.
        value_bits : int
            Public bound ``|v| < 2**value_bits``, 1 to 64 (default 32; 1 for 0/1 labels).
        workers : int, optional
            Processes (default: all cores from 1024 values on).

        Returns
        -------
        EncryptedVector
            ``fraction_bits = 0``.

        Raises
        ------
        ValueError
            If ``values`` is not a 1-D integer vector or a value is outside the bound.
        """
        if not 1 <= value_bits <= 64:
            raise ValueError("value_bits must be between 1 and 64")
        ints = _integers(values, "integers to encrypt")
        if _magnitude_bits(ints) > value_bits:
            raise ValueError(f"an integer is outside the public bound |v| < 2**{value_bits}")
        with self._lock:
            cts = _djn.encrypt_vector(
                self._public,
                np.array(ints, dtype=object),
                encryptor=self._encryptor_in_lock(),
                workers=workers,
            )
        return EncryptedVector(tuple(cts), value_bits, 0)

    def precompute(self, count: int, *, workers: int | None = None) -> None:
        """Compute ``count`` obfuscators ahead of need (e.g. while waiting for other parties).

        The next ``count`` encrypted values then cost one modular multiplication each.
        """
        with self._lock:
            self._encryptor_in_lock().fill_pool(count, workers=workers)

    # ---------------------------------------------------------------- computing on ciphertexts

    def dot(
        self,
        X: np.ndarray,
        encrypted: EncryptedVector,
        *,
        rerandomize: bool = True,
        workers: int | None = None,
    ) -> EncryptedVector:
        """``[[X^T d]]``: one ciphertext per column of ``X``, by bucketed multi-exponentiation.

        Parameters
        ----------
        X : np.ndarray
            ``rows x m`` matrix: floats (quantized to ``2**-16``, ``|x| < 2**24``) or integers
            (exact, ``|x| < 2**61``).
        encrypted : EncryptedVector
            ``[[d]]`` with one ciphertext per row of ``X``.
        rerandomize : bool
            Give the results fresh randomness (default). Turn it off only for results that are
            combined further before they leave (then re-randomize those).
        workers : int, optional
            Processes (default: all cores for large products).

        Returns
        -------
        EncryptedVector
            ``m`` ciphertexts; scale ``fraction_bits(d) + 16`` for float ``X``, that of ``d``
            for integer ``X``.

        Raises
        ------
        ValueError
            If the shapes do not match or ``X`` holds NaN, infinite or too large values.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"X must be a 2-D matrix, got {arr.ndim} dimensions")
        if arr.shape[0] != len(cts):
            raise ValueError(f"X has {arr.shape[0]} rows for {len(cts)} ciphertexts")
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            limit = 1 << _INTEGER_FEATURE_BITS
            if arr.size and not (-limit < int(arr.min()) and int(arr.max()) < limit):
                raise ValueError(f"integer features must satisfy |x| < 2**{_INTEGER_FEATURE_BITS}")
            X_int, x_bits, x_fraction = arr.astype(np.int64), _INTEGER_FEATURE_BITS, 0
        else:
            X_int, x_bits, x_fraction = (
                _dot.quantize_features(arr),
                FEATURE_VALUE_BITS,
                FEATURE_FRACTION_BITS,
            )
        value_bits = max(len(cts), 1).bit_length() + x_bits + encrypted.value_bits
        fraction_bits = encrypted.fraction_bits + x_fraction
        self._check_bounds(value_bits, fraction_bits)
        dots = _dot.encrypted_dot_products(cts, X_int, self._nsquare, workers=workers)
        return self._result(dots, value_bits, fraction_bits, rerandomize, workers)

    def grouped_sum(
        self,
        encrypted: EncryptedVector,
        groups: np.ndarray,
        n_groups: int,
        *,
        rerandomize: bool = True,
        workers: int | None = None,
    ) -> EncryptedVector:
        """Per-group homomorphic sums: ciphertext ``g`` encrypts the sum of the rows in group ``g``.

        One modular multiplication per row (rows split over processes from 60,000 on). For
        secure segment statistics: with ``[[y]]`` the key holder's encrypted labels and
        ``groups`` a party's category levels, the key holder decrypts the label sum per level.

        Parameters
        ----------
        encrypted : EncryptedVector
            One ciphertext per row.
        groups : np.ndarray
            1-D integer group id per row, in ``[-1, n_groups)``; rows with ``-1`` are skipped.
        n_groups : int
            Number of groups (the length of the result).
        rerandomize : bool
            Give the sums fresh randomness (default): otherwise their randomness is the product
            of the rows', which tells the key holder which rows are in which group.
        workers : int, optional
            Processes.

        Returns
        -------
        EncryptedVector
            ``n_groups`` ciphertexts (an empty group sums to zero), bound ``value_bits(d) +
            bits(rows)``, same scale as ``encrypted``.

        Raises
        ------
        ValueError
            If ``groups`` is not a 1-D integer vector of the right length with ids in range.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        n_groups = operator.index(n_groups)
        value_bits = encrypted.value_bits + max(len(cts), 1).bit_length()
        self._check_bounds(value_bits, encrypted.fraction_bits)
        sums = _dot.encrypted_group_sums(cts, groups, n_groups, self._nsquare, workers=workers)
        return self._result(sums, value_bits, encrypted.fraction_bits, rerandomize, workers)

    def add(self, a: EncryptedVector, b: EncryptedVector) -> EncryptedVector:
        """``[[a + b]]`` elementwise (the scales are aligned to the finer one).

        The result's randomness is the product of the inputs': :meth:`rerandomize` it before it
        goes to the key holder.

        Raises
        ------
        ValueError
            If the lengths differ.
        CiphertextError
            If an input is out of range for the key, or the result's bound would not fit.
        """
        self._ciphertexts(a)
        self._ciphertexts(b)
        if len(a) != len(b):
            raise ValueError(f"cannot add encrypted vectors of lengths {len(a)} and {len(b)}")
        fraction_bits = max(a.fraction_bits, b.fraction_bits)
        a, b = self._aligned(a, fraction_bits), self._aligned(b, fraction_bits)
        value_bits = max(a.value_bits, b.value_bits) + 1
        self._check_bounds(value_bits, fraction_bits)
        nsquare = self._nsquare
        cts = [x * y % nsquare for x, y in zip(a.ciphertexts, b.ciphertexts)]
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)

    def add_plain(self, encrypted: EncryptedVector, values: np.ndarray) -> EncryptedVector:
        """``[[d + v]]`` elementwise for plaintext ``v``: one modular multiplication each.

        ``values`` are integers for an integer vector, floats (rounded to the vector's scale)
        for a fixed-point one. The result's bound reflects ``max |v|``; its randomness is that
        of ``encrypted``: :meth:`rerandomize` it before it goes to the key holder.

        Raises
        ------
        ValueError
            If ``values`` has the wrong length or kind.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        if encrypted.fraction_bits:
            plain = _fixed_point(values, encrypted.fraction_bits, "values to add")
        else:
            plain = _integers(values, "values to add")
        if len(plain) != len(cts):
            raise ValueError(f"{len(plain)} values to add to {len(cts)} ciphertexts")
        value_bits = max(encrypted.value_bits, _magnitude_bits(plain)) + 1
        self._check_bounds(value_bits, encrypted.fraction_bits)
        n = self._n
        cts = _djn.add_plaintexts([_djn.encode_signed(v, n) for v in plain], cts, n, self._nsquare)
        return EncryptedVector(tuple(cts), value_bits, encrypted.fraction_bits)

    def multiply_plain(
        self,
        encrypted: EncryptedVector,
        factors: np.ndarray | float,
        *,
        fraction_bits: int = FEATURE_FRACTION_BITS,
    ) -> EncryptedVector:
        """``[[d * k]]`` elementwise for a plaintext scalar or vector ``k``.

        Integer factors are exact; float factors are rounded to ``2**-fraction_bits`` and add
        ``fraction_bits`` to the result's scale. One exponentiation by ``k`` per ciphertext.
        A zero factor gives the trivial encryption of zero and the result's randomness derives
        from ``encrypted``'s: :meth:`rerandomize` it before it goes to the key holder.

        Raises
        ------
        ValueError
            If ``factors`` has the wrong length, or holds NaN or infinite values.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        arr = np.asarray(factors)
        if arr.ndim == 0:
            arr = np.full(len(cts), arr.item(), dtype=arr.dtype)
        if arr.dtype == object or arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            ks, extra = _integers(arr, "factors"), 0
        else:
            ks, extra = _fixed_point(arr, fraction_bits, "factors"), fraction_bits
        if len(ks) != len(cts):
            raise ValueError(f"{len(ks)} factors for {len(cts)} ciphertexts")
        value_bits = encrypted.value_bits + _magnitude_bits(ks)
        self._check_bounds(value_bits, encrypted.fraction_bits + extra)
        nsquare = self._nsquare
        out = [gmpy2.powmod(c, k, nsquare) for c, k in zip(cts, ks)]
        return EncryptedVector(tuple(out), value_bits, encrypted.fraction_bits + extra)

    def rerandomize(
        self, encrypted: EncryptedVector, *, workers: int | None = None
    ) -> EncryptedVector:
        """The same plaintexts under fresh full-size randomness (see :func:`rerandomize`).

        A ciphertext the key holder gets back then cannot be linked to the one it sent, and
        reveals nothing through its randomness. One full exponentiation per ciphertext (~15 ms
        at 2048 bits; all cores from 64 ciphertexts on).

        Raises
        ------
        CiphertextError
            If ``encrypted`` is out of range for the key.
        """
        cts = self._ciphertexts(encrypted)
        fresh = rerandomize(self._public, cts, workers=workers)
        return EncryptedVector(tuple(fresh), encrypted.value_bits, encrypted.fraction_bits)

    # ---------------------------------------------------------------- decryption

    def decrypt(self, encrypted: EncryptedVector, *, workers: int | None = None) -> np.ndarray:
        """Decrypt (CRT) to what was encrypted: integers or fixed-point floats.

        Parameters
        ----------
        encrypted : EncryptedVector
            A vector under this key.
        workers : int, optional
            Processes (default: all cores from 256 ciphertexts on).

        Returns
        -------
        np.ndarray
            ``float64`` for a fixed-point vector (``fraction_bits > 0``); for an integer vector
            ``int64`` if its bound is at most ``2**63``, else ``object`` (Python ints).

        Raises
        ------
        PaillierKeyError
            If this context holds only the public key.
        CiphertextError
            If a ciphertext is out of range, or a decrypted value breaks the vector's bound
            (made under another key, corrupted, or a wrong bound declared).
        """
        private = self._require_private("decryption")
        cts = self._ciphertexts(encrypted)
        values = _djn.decrypt_vector(private, cts, workers=workers)
        if _magnitude_bits(values) > encrypted.value_bits:
            raise CiphertextError(
                "bound",
                f"a decrypted value breaks the vector's bound 2**{encrypted.value_bits}: made "
                "under another key, corrupted, or a wrong bound declared",
            )
        if encrypted.fraction_bits:
            scale = 1 << encrypted.fraction_bits
            return np.array([v / scale for v in values], dtype=np.float64)
        if encrypted.value_bits <= 63:
            return np.array(values, dtype=np.int64)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    # ---------------------------------------------------------------- serialization

    def ciphertexts_to_bytes(self, encrypted: EncryptedVector) -> bytes:
        """Serialize a vector: header (count, value bits, fraction bits), fixed-width ciphertexts.

        The format of :func:`encrypted_vector_to_bytes`; read it with
        :meth:`ciphertexts_from_bytes`.

        Raises
        ------
        CiphertextError
            If a ciphertext is out of range for the key or the bounds are invalid.
        """
        self._ciphertexts(encrypted)
        return encrypted_vector_to_bytes(encrypted, self._public)

    def ciphertexts_from_bytes(
        self, data: bytes, *, max_count: int, count: int | None = None
    ) -> EncryptedVector:
        """Parse :meth:`ciphertexts_to_bytes` output from an untrusted sender.

        Parameters
        ----------
        data : bytes
            The serialized vector.
        max_count : int
            Most ciphertexts accepted (checked before anything is parsed).
        count : int, optional
            Exact number of ciphertexts expected.

        Returns
        -------
        EncryptedVector

        Raises
        ------
        CiphertextError
            ``problem`` names what was wrong: ``"header"`` (not a serialized vector),
            ``"count"`` (more than ``max_count``, or not ``count``), ``"length"`` (bytes do not
            match the declared count), ``"bound"`` (declared bounds do not fit the key),
            ``"range"`` (a ciphertext is zero or ``>= n**2``).
        """
        max_count = operator.index(max_count)
        if max_count < 0:
            raise ValueError("max_count must be non-negative")
        try:
            (declared, value_bits, fraction_bits), body = _read_header(
                data, _EV_MAGIC, 3, "encrypted vector"
            )
        except ValueError as exc:
            raise CiphertextError("header", str(exc)) from exc
        if declared > max_count:
            raise CiphertextError(
                "count", f"{declared} ciphertexts declared, at most {max_count} accepted"
            )
        if count is not None and declared != count:
            raise CiphertextError("count", f"{declared} ciphertexts declared, {count} expected")
        width = self.ciphertext_width
        if len(body) != declared * width:
            raise CiphertextError(
                "length",
                f"{len(body)} bytes of ciphertexts for {declared} ciphertexts of {width} bytes",
            )
        self._check_bounds(value_bits, fraction_bits)
        try:
            cts = ciphertexts_from_bytes(body, self._public, declared)
        except ValueError as exc:
            raise CiphertextError("range", "a ciphertext is zero or >= n**2 for this key") from exc
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)

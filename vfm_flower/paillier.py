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
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

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


# The entry point of job steps lives in its own module (it builds on everything above).
from vfm_flower.paillier_context import PaillierContext  # noqa: E402

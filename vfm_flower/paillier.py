"""Paillier fast paths for the backward pass of vertical training (on ``phe`` keys + gmpy2).

Protocol step (one iteration's backward pass)::

    label owner (LO, holds the private key)          passive party P_k (holds X_k)
    d = residuals (floats)
    [[d]] = encrypt_residuals(public, d)      ---->
                                                     packed, state = masked_encrypted_gradient(
                                                         public, [[d]], X_k)
                                              <----  packed = pack([[X_k^T d + r_k]])
    s = decrypt_masked_gradient(private, packed)
                                              ---->  g = unmask_gradient(s, state) = X_k^T d

Everything is plain Paillier with ``g = n + 1`` on ``phe``'s key objects, so a ``phe`` private
key decrypts every ciphertext made here and ``phe`` ciphertexts can enter every operation here.
The speed comes from:

* **Integer fixed point.** Residuals are scaled by ``2**RESIDUAL_FRACTION_BITS`` and features by
  ``2**FEATURE_FRACTION_BITS``; a negative value ``v`` is the plaintext ``n - |v|``.
* **Short-exponent (DJN) obfuscators.** Instead of ``r**n mod n**2`` with a full-size ``r``
  (one 2048-bit exponentiation modulo a 4096-bit number, ~10 ms), the encryptor draws a random
  ``h`` and precomputes ``h_s = h**n mod n**2`` once; an obfuscator is ``h_s**alpha`` for a random
  short exponent ``alpha``, read off a fixed-base table of 8-bit windows (``alpha_bits / 8``
  modular multiplications, ~0.15 ms). ``alpha`` has :func:`djn_exponent_bits` bits: twice the
  security level, at least 256 bits. Why that size: ``h_s**alpha`` is an ``n``-th residue, so the
  ciphertext is an ordinary Paillier ciphertext with randomness ``h**alpha``; distinguishing it
  from one with full-size randomness means telling short exponents from random ones in a group
  of unknown order, and the best known attacks on that problem are generic (baby-step
  giant-step, Pollard's lambda) at ~``2**(alpha_bits / 2)`` operations, i.e. 2**128 for 256
  bits, above the ~112-bit strength of a 2048-bit modulus. DJN and SecretFlow HEU use
  ``|n| / 2`` bits (1024 for a 2048-bit key), a more conservative choice that costs 4x more per
  encryption; pass ``exponent_bits=1024`` to :class:`DJNEncryptor` for it.
* **Bucketed multi-exponentiation** for ``[[X^T d]]``: per column, rows are grouped by their
  quantized feature value (or, for columns with many distinct values, by the digits of a
  windowed Pippenger decomposition); ciphertexts of a bucket are multiplied together, and the
  buckets are combined by the running-product trick (``sum_k k B_k`` as a telescoping product),
  so a column costs about one modular multiplication per row whose value differs from the
  column's offset (mode or minimum), instead of one exponentiation per row. Negative values go
  in a separate bucket set that is inverted once; offsets and common factors (binary and small
  integer columns standardized to two or ten levels) are applied with one short exponentiation.
* **Masking and packing.** The party adds a statistical mask to every ``[[g_j]]`` and packs
  ``slots_per_ciphertext`` masked values into one ciphertext by shift-and-add
  (``[[a]]**(2**s) * [[b]] = [[a 2**s + b]]``), so the label owner decrypts ``m / slots``
  ciphertexts instead of ``m``. Each packed ciphertext is then re-randomized with a fresh
  full-size ``rho**n``: the randomness of a homomorphically computed ciphertext is a product of
  the label owner's own obfuscators raised to the party's feature values, which the key owner
  could extract and test hypotheses against; re-randomization makes the ciphertext a uniformly
  random encryption of its (masked) plaintext.
* **CRT** on the key owner's side: decryption modulo ``p**2`` and ``q**2`` with precomputed
  ``hp`` and ``hq``; and, since the label owner encrypts its own residuals, its obfuscators are
  also computed modulo ``p**2`` and ``q**2`` and recombined (``DJNEncryptor(private=...)``).
* **Process pools** across cores for large batches (encryption split by rows, dot products split
  by columns with a cost model); small batches run in-process.

Nothing in this module logs a key, a plaintext, a mask or a ciphertext; debug logs carry sizes
and timings only.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import gmpy2
import numpy as np
from gmpy2 import mpz
from phe import paillier as phe_paillier
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from vfm_flower.errors import PolicyViolation

__all__ = [
    "MIN_KEY_BITS",
    "RESIDUAL_FRACTION_BITS",
    "FEATURE_FRACTION_BITS",
    "FEATURE_INTEGER_BITS",
    "FEATURE_VALUE_BITS",
    "STATISTICAL_SECURITY_BITS",
    "FIXED_BASE_WINDOW_BITS",
    "MAX_RESIDUAL_ABS",
    "RandomBits",
    "check_key_bits",
    "generate_paillier_keypair",
    "public_key_to_bytes",
    "public_key_from_bytes",
    "private_key_to_bytes",
    "private_key_from_bytes",
    "djn_exponent_bits",
    "encode_signed",
    "decode_signed",
    "quantize_residuals",
    "quantize_features",
    "DJNEncryptor",
    "encrypt_vector",
    "CRTDecryptor",
    "decrypt_vector",
    "encrypted_dot_products",
    "SlotLayout",
    "slot_layout",
    "pack_ciphertexts",
    "unpack_plaintext",
    "EncryptedVector",
    "PackedCiphertexts",
    "MaskState",
    "encrypt_residuals",
    "masked_encrypted_gradient",
    "decrypt_masked_gradient",
    "unmask_gradient",
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

#: Smallest Paillier modulus the plugin accepts (an agreement may require more).
MIN_KEY_BITS = 2048
#: Residuals are encoded as ``round(d * 2**32)``: precision ~2.3e-10.
RESIDUAL_FRACTION_BITS = 32
#: Features are quantized to ``round(x * 2**16)`` for the gradient: precision ~1.5e-5.
FEATURE_FRACTION_BITS = 16
#: Features must satisfy ``|x| < 2**24`` (standardized features are far below).
FEATURE_INTEGER_BITS = 24
#: Public bound on a quantized feature: ``|x_q| < 2**40``. Fixed (not data dependent) so the
#: slot width does not reveal the party's largest feature value.
FEATURE_VALUE_BITS = FEATURE_FRACTION_BITS + FEATURE_INTEGER_BITS
#: Statistical hiding of the gradient masks: the masked value is within statistical distance
#: ``2**-64`` of uniform, whatever the gradient.
STATISTICAL_SECURITY_BITS = 64
#: Window of the fixed-base table for DJN obfuscators (one table row per exponent byte).
FIXED_BASE_WINDOW_BITS = 8
#: Largest residual magnitude that can be encoded (``|d| * 2**32`` must fit in 62 bits).
MAX_RESIDUAL_ABS = float(2**30)

# Below these sizes a process pool costs more than it saves.
_PARALLEL_MIN_ENCRYPTIONS = 1024
_PARALLEL_MIN_PRODUCTS = 60_000

_ONE = mpz(1)
_EV_MAGIC = b"VEV1"
_PK_MAGIC = b"VPC1"
_SK_MAGIC = b"VSK1"


class RandomBits(Protocol):
    """A source of uniformly random bits (the ``secrets`` module is one)."""

    def randbits(self, k: int) -> int:  # pragma: no cover - protocol
        """Return a uniformly random non-negative integer below ``2**k``."""
        ...


# --------------------------------------------------------------------------------------------
# Keys


def check_key_bits(bits: int, minimum: int = MIN_KEY_BITS) -> None:
    """Refuse a Paillier modulus shorter than ``minimum`` bits.

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"``.
    """
    if minimum < MIN_KEY_BITS:
        raise PolicyViolation(
            "paillier_bits", f"the minimum modulus size cannot be set below {MIN_KEY_BITS} bits"
        )
    if bits < minimum:
        raise PolicyViolation(
            "paillier_bits",
            f"a {bits}-bit Paillier modulus is refused: at least {minimum} bits are required",
        )


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
# Integer encodings


def encode_signed(value: int, n: int) -> mpz:
    """Plaintext of a signed integer: ``value`` if non-negative, ``n - |value|`` otherwise.

    Raises
    ------
    ValueError
        If ``|value| >= n // 2`` (it could not be decoded unambiguously).
    """
    v = mpz(value)
    if abs(v) >= n // 2:
        raise ValueError("integer too large for the Paillier plaintext space")
    return v if v >= 0 else mpz(n) + v


def decode_signed(plaintext: int, n: int) -> int:
    """Inverse of :func:`encode_signed`: plaintexts above ``n // 2`` are negative."""
    m = int(plaintext)
    return m - int(n) if m > int(n) // 2 else m


def quantize_residuals(
    d: np.ndarray, *, bound: float | None = None, fraction_bits: int = RESIDUAL_FRACTION_BITS
) -> tuple[np.ndarray, int]:
    """Fixed-point residuals ``round(d * 2**fraction_bits)`` and their public bit bound.

    Parameters
    ----------
    d : np.ndarray
        1-D float residuals.
    bound : float, optional
        Public bound on ``|d|`` (1.0 for logistic regression). Default: the smallest power of
        two at least ``max |d|`` (so only its bit length is revealed).
    fraction_bits : int
        Fixed-point precision.

    Returns
    -------
    tuple[np.ndarray, int]
        ``int64`` quantized residuals and ``value_bits`` with ``|d_q| < 2**value_bits``.
    """
    arr = np.asarray(d, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"residuals must be a 1-D vector, got {arr.ndim} dimensions")
    if not np.all(np.isfinite(arr)):
        raise ValueError("residuals hold NaN or infinite values")
    max_abs = float(np.max(np.abs(arr))) if arr.size else 0.0
    if bound is None:
        bound = 2.0 ** math.ceil(math.log2(max_abs)) if max_abs > 0 else 1.0
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError("the residual bound must be a positive finite number")
    if max_abs > bound:
        raise ValueError(f"a residual exceeds the declared bound {bound}")
    if bound >= MAX_RESIDUAL_ABS:
        raise ValueError(f"residual bound {bound} too large: it must stay below 2**30")
    quantized = np.rint(arr * float(2**fraction_bits)).astype(np.int64)
    value_bits = math.ceil(bound * 2**fraction_bits).bit_length()
    return quantized, value_bits


def quantize_features(X: np.ndarray, *, fraction_bits: int = FEATURE_FRACTION_BITS) -> np.ndarray:
    """Quantize features to ``round(x * 2**fraction_bits)`` as ``int64``.

    Integer-valued columns (binary, counts) stay exact. Raises ``ValueError`` for non-finite
    values or ``|x| >= 2**FEATURE_INTEGER_BITS``.
    """
    arr = np.asarray(X, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("features hold NaN or infinite values: impute them first")
    quantized = np.rint(arr * float(2**fraction_bits))
    limit = float(2 ** (FEATURE_INTEGER_BITS + fraction_bits))
    if quantized.size and float(np.max(np.abs(quantized))) >= limit:
        raise ValueError(
            f"feature values must satisfy |x| < 2**{FEATURE_INTEGER_BITS}: standardize the columns"
        )
    return quantized.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Process pools


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fork when the process has a single thread (fast), else forkserver/spawn (safe)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def _resolve_workers(workers: int | None, work: int, threshold: int) -> int:
    if multiprocessing.current_process().daemon:
        return 1  # daemonic processes cannot have children
    if workers is None:
        return max(1, os.cpu_count() or 1) if work >= threshold else 1
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return workers


def _run_pool(fn: Callable[[Any], Any], payloads: list[Any], workers: int) -> list[Any]:
    """``[fn(p) for p in payloads]`` across processes; in-process if the pool cannot work.

    A pool can break where child processes cannot start (no importable ``__main__`` under
    forkserver/spawn, resource limits): the work is then done in this process, slower but
    with the same result.
    """
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(payloads)), mp_context=_mp_context()
        ) as executor:
            return list(executor.map(fn, payloads))
    except (BrokenProcessPool, OSError) as exc:
        logger.warning("process pool unavailable (%s): computing in-process", type(exc).__name__)
        return [fn(p) for p in payloads]


def _chunks(count: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, count))
    step, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + step + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


# --------------------------------------------------------------------------------------------
# DJN encryption


def djn_exponent_bits(key_bits: int) -> int:
    """Bits of the short DJN exponent: twice the security level of the modulus, >= 256.

    Security levels follow NIST SP 800-57 (2048 -> 112, 3072 -> 128, 7680 -> 192,
    15360 -> 256 bits); the result is ``2 * max(128, level)``.
    """
    if key_bits >= 15360:
        level = 256
    elif key_bits >= 7680:
        level = 192
    else:
        level = 128
    return 2 * level


@dataclass(frozen=True)
class _DJNParams:
    """What a worker process needs to make obfuscators.

    ``p`` and ``q`` are set only when the key owner encrypts (CRT speed-up); they then travel
    to the owner's own worker processes over local pipes, nowhere else.
    """

    n: mpz
    h_s: mpz
    exponent_bytes: int
    p: mpz | None = field(default=None, repr=False)
    q: mpz | None = field(default=None, repr=False)


def _fixed_base_table(base: mpz, modulus: mpz, exponent_bytes: int) -> list[list[mpz]]:
    """``table[t][k] = base ** (k * 256**t) mod modulus``, ``k < 256``, ``t < exponent_bytes``."""
    table: list[list[mpz]] = []
    for _ in range(exponent_bytes):
        row = [_ONE, base]
        last = base
        for _ in range(254):
            last = last * base % modulus
            row.append(last)
        table.append(row)
        base = last * base % modulus
    return table


class _ObfuscatorSource:
    """Makes DJN obfuscators ``h_s ** alpha mod n**2`` from fixed-base tables.

    With the factorization (the key owner encrypting its own values), the tables and products
    live modulo ``p**2`` and ``q**2`` (2048-bit numbers for a 2048-bit key, ~3x cheaper
    multiplications) and one CRT step rebuilds the value modulo ``n**2``: same obfuscator,
    about 35% less work.
    """

    __slots__ = ("_width", "_nsquare", "_tables", "_moduli", "_crt")

    def __init__(self, params: _DJNParams) -> None:
        self._width = params.exponent_bytes
        self._nsquare = params.n * params.n
        if params.p is None or params.q is None:
            self._moduli = (self._nsquare,)
            self._crt: tuple[mpz, mpz, mpz] | None = None
        else:
            p2, q2 = params.p * params.p, params.q * params.q
            self._moduli = (p2, q2)
            self._crt = (p2, q2, gmpy2.invert(p2, q2))
        self._tables = [_fixed_base_table(params.h_s % m, m, self._width) for m in self._moduli]

    def make(self, count: int) -> list[mpz]:
        """``count`` obfuscators with ``alpha`` from ``secrets.token_bytes``."""
        out: list[mpz] = []
        width = self._width
        if self._crt is None:
            table, modulus = self._tables[0], self._moduli[0]
            for _ in range(count):
                acc = None
                while acc is None:  # alpha == 0 (probability 2**-256) is redrawn
                    for row, k in zip(table, secrets.token_bytes(width)):
                        if k:
                            acc = row[k] if acc is None else acc * row[k] % modulus
                out.append(acc)
            return out
        table_p, table_q = self._tables
        p2, q2, p2_inv = self._crt
        for _ in range(count):
            acc_p = acc_q = None
            while acc_p is None or acc_q is None:
                for row_p, row_q, k in zip(table_p, table_q, secrets.token_bytes(width)):
                    if k:
                        if acc_p is None or acc_q is None:
                            acc_p, acc_q = row_p[k], row_q[k]
                        else:
                            acc_p = acc_p * row_p[k] % p2
                            acc_q = acc_q * row_q[k] % q2
            out.append(acc_p + p2 * ((acc_q - acc_p) * p2_inv % q2))
        return out


def _apply_obfuscators(
    plaintexts: Sequence[mpz], obfuscators: Sequence[mpz], n: mpz, nsquare: mpz
) -> list[mpz]:
    """``(1 + m n) * obf mod n**2``, computed as ``obf + n * (m * obf mod n) mod n**2``."""
    out = []
    for m, obf in zip(plaintexts, obfuscators, strict=True):
        c = obf + n * (m * obf % n)
        out.append(c - nsquare if c >= nsquare else c)
    return out


def _obfuscator_worker(payload: tuple[_DJNParams, int]) -> list[mpz]:
    params, count = payload
    return _ObfuscatorSource(params).make(count)


def _encrypt_worker(payload: tuple[_DJNParams, list[int]]) -> list[mpz]:
    params, values = payload
    n = params.n
    plaintexts = [encode_signed(v, n) for v in values]
    obfuscators = _ObfuscatorSource(params).make(len(values))
    return _apply_obfuscators(plaintexts, obfuscators, n, n * n)


class DJNEncryptor:
    """Paillier encryption with short-exponent (DJN) obfuscators and a fixed-base table.

    Create one per key and run (it draws a fresh ``h``); it keeps the table and an optional
    pool of obfuscators computed ahead of need (e.g. while waiting for the passive parties).
    Obfuscators are secret randomness: each is used once and never leaves the object.

    Parameters
    ----------
    public : PaillierPublicKey
        The ``phe`` public key.
    private : PaillierPrivateKey, optional
        The matching private key, when the key owner encrypts its own values (the label owner
        encrypting residuals): obfuscators are then computed modulo ``p**2`` and ``q**2`` and
        recombined (CRT), ~35% faster. The ciphertexts are the same as without it.
    exponent_bits : int, optional
        Size of the short exponent ``alpha`` (multiple of 8, at least 224). Default:
        :func:`djn_exponent_bits` of the modulus size.
    """

    __slots__ = ("_public", "_n", "_nsquare", "_params", "_source", "_pool")

    def __init__(
        self,
        public: PaillierPublicKey,
        *,
        private: PaillierPrivateKey | None = None,
        exponent_bits: int | None = None,
    ) -> None:
        n = mpz(public.n)
        check_key_bits(n.bit_length())
        bits = djn_exponent_bits(n.bit_length()) if exponent_bits is None else exponent_bits
        if bits % 8 or bits < 224:
            raise ValueError("the DJN exponent size must be a multiple of 8 and at least 224 bits")
        p = q = None
        if private is not None:
            p, q = mpz(private.p), mpz(private.q)
            if p * q != n:
                raise ValueError("the private key does not belong to this public key")
        self._public = public
        self._n = n
        self._nsquare = n * n
        x = mpz(0)
        while x < 2 or gmpy2.gcd(x, n) != 1:
            x = mpz(secrets.randbelow(int(n)))
        h = n - x * x % n  # -x**2 mod n, as in DJN and HEU
        h_s = gmpy2.powmod(h, n, self._nsquare)
        self._params = _DJNParams(n=n, h_s=h_s, exponent_bytes=bits // 8, p=p, q=q)
        self._source: _ObfuscatorSource | None = None
        self._pool: list[mpz] = []

    def __repr__(self) -> str:
        return (
            f"DJNEncryptor(bits={self._n.bit_length()}, exponent_bits={self.exponent_bits}, "
            f"crt={self._params.p is not None}, pooled={len(self._pool)})"
        )

    @property
    def public(self) -> PaillierPublicKey:
        """The public key."""
        return self._public

    @property
    def exponent_bits(self) -> int:
        """Size of the short exponents."""
        return 8 * self._params.exponent_bytes

    @property
    def pooled(self) -> int:
        """Number of obfuscators computed ahead and not used yet."""
        return len(self._pool)

    def _make(self, count: int) -> list[mpz]:
        if self._source is None:
            self._source = _ObfuscatorSource(self._params)
        return self._source.make(count)

    def fill_pool(self, count: int, *, workers: int | None = None) -> None:
        """Compute ``count`` obfuscators ahead of need (in parallel for large counts)."""
        if count <= 0:
            return
        n_workers = _resolve_workers(workers, count, _PARALLEL_MIN_ENCRYPTIONS)
        if n_workers == 1:
            self._pool.extend(self._make(count))
            return
        payloads = [(self._params, end - start) for start, end in _chunks(count, n_workers)]
        for part in _run_pool(_obfuscator_worker, payloads, n_workers):
            self._pool.extend(part)

    def take_obfuscators(self, count: int) -> list[mpz]:
        """``count`` fresh obfuscators: from the pool first, the rest computed now."""
        take = min(count, len(self._pool))
        out = self._pool[len(self._pool) - take :]
        del self._pool[len(self._pool) - take :]
        if count > take:
            out.extend(self._make(count - take))
        return out

    def encrypt_int(self, value: int) -> mpz:
        """Encrypt one signed integer."""
        m = encode_signed(value, self._n)
        return _apply_obfuscators([m], self.take_obfuscators(1), self._n, self._nsquare)[0]

    def encrypt_ints(self, values: Sequence[int], *, workers: int | None = None) -> list[mpz]:
        """Encrypt signed integers; uses pooled obfuscators, then a process pool if large."""
        count = len(values)
        plaintexts = [encode_signed(v, self._n) for v in values]
        pooled = min(count, len(self._pool))
        out = _apply_obfuscators(
            plaintexts[:pooled], self.take_obfuscators(pooled), self._n, self._nsquare
        )
        rest = [int(v) for v in values[pooled:]]
        if not rest:
            return out
        n_workers = _resolve_workers(workers, len(rest), _PARALLEL_MIN_ENCRYPTIONS)
        if n_workers == 1:
            obfs = self._make(len(rest))
            out.extend(_apply_obfuscators(plaintexts[pooled:], obfs, self._n, self._nsquare))
            return out
        chunks = _chunks(len(rest), n_workers)
        payloads = [(self._params, rest[start:end]) for start, end in chunks]
        for part in _run_pool(_encrypt_worker, payloads, n_workers):
            out.extend(part)
        return out


def _as_int_list(values: np.ndarray | Sequence[int]) -> list[int]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError("expected a 1-D vector of integers")
    if arr.dtype == object:
        out = [int(v) for v in arr]
        if any(int(v) != v for v in arr):
            raise ValueError("expected integer values")
        return out
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer values, got {arr.dtype}: quantize them first")
    return [int(v) for v in arr.tolist()]


def encrypt_vector(
    public: PaillierPublicKey,
    values: np.ndarray | Sequence[int],
    *,
    encryptor: DJNEncryptor | None = None,
    workers: int | None = None,
) -> list[mpz]:
    """Encrypt a vector of signed integers with DJN obfuscators.

    Parameters
    ----------
    public : PaillierPublicKey
        The ``phe`` public key.
    values : np.ndarray or Sequence[int]
        1-D integers (``int64`` or Python ``int`` objects), ``|v| < n / 2``.
    encryptor : DJNEncryptor, optional
        Reuse its table and pooled obfuscators (must belong to ``public``). Default: a new one.
    workers : int, optional
        Processes to use; default ``os.cpu_count()`` for 1024 values or more, else in-process.

    Returns
    -------
    list[mpz]
        One ciphertext per value.
    """
    if encryptor is None:
        encryptor = DJNEncryptor(public)
    elif int(encryptor.public.n) != int(public.n):
        raise ValueError("the encryptor belongs to another public key")
    ints = _as_int_list(values)
    started = time.perf_counter()
    out = encryptor.encrypt_ints(ints, workers=workers)
    logger.debug("encrypted %d values in %.3f s", len(ints), time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------------------------
# CRT decryption


class CRTDecryptor:
    """Paillier decryption modulo ``p**2`` and ``q**2`` with precomputed ``hp``, ``hq``.

    Parameters
    ----------
    private : PaillierPrivateKey
        The ``phe`` private key.
    """

    __slots__ = ("_n", "_nsquare", "_p", "_q", "_p2", "_q2", "_hp", "_hq", "_p_inv")

    def __init__(self, private: PaillierPrivateKey) -> None:
        p, q = mpz(private.p), mpz(private.q)
        self._n = p * q
        self._nsquare = self._n * self._n
        self._p, self._q = p, q
        self._p2, self._q2 = p * p, q * q
        g = self._n + 1
        self._hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self._p2) - 1) // p, p)
        self._hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self._q2) - 1) // q, q)
        self._p_inv = gmpy2.invert(p, q)

    def __repr__(self) -> str:
        return f"CRTDecryptor(bits={self._n.bit_length()})"

    @property
    def key_bits(self) -> int:
        """Size of the modulus in bits."""
        return int(self._n.bit_length())

    def decrypt(self, ciphertext: int) -> mpz:
        """Raw plaintext in ``[0, n)`` of one ciphertext."""
        c = mpz(ciphertext)
        if not 0 < c < self._nsquare:
            raise ValueError("ciphertext out of range for this key")
        p, q = self._p, self._q
        mp = (gmpy2.powmod(c % self._p2, p - 1, self._p2) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(c % self._q2, q - 1, self._q2) - 1) // q * self._hq % q
        return mp + (mq - mp) * self._p_inv % q * p


def decrypt_vector(private: PaillierPrivateKey, ciphertexts: Sequence[int]) -> list[int]:
    """Decrypt ciphertexts to signed integers (plaintexts above ``n // 2`` are negative)."""
    decryptor = CRTDecryptor(private)
    n = int(private.public_key.n)
    return [decode_signed(decryptor.decrypt(c), n) for c in ciphertexts]


# --------------------------------------------------------------------------------------------
# Bucketed multi-exponentiation: [[X^T d]] per column


@dataclass(frozen=True)
class _ColumnPlan:
    """How to compute one column: ``x = offset + gcd * v``; windows for ``v > 0`` and ``v < 0``."""

    offset: int
    gcd: int
    pos_window: int
    neg_window: int
    cost: float


def _pow_cost(exponent: int) -> float:
    """Modular multiplications of a square-and-multiply exponentiation (approximate)."""
    return 0.0 if exponent <= 1 else 1.2 * exponent.bit_length()


def _part_plan(uvals: np.ndarray, counts: np.ndarray) -> tuple[float, int]:
    """Cost and window width for ``prod c_i ** v_i`` over rows with positive values ``v``.

    ``uvals`` are the distinct values (ascending, positive), ``counts`` their row counts. A
    window at least as wide as the values means plain buckets per distinct value.
    """
    if uvals.size == 0:
        return 0.0, 0
    rows = int(counts.sum())
    bits = int(uvals[-1]).bit_length()
    gaps = np.diff(uvals, prepend=0)
    big = gaps[gaps > 1]
    gap_cost = (
        float(1.2 * np.sum(np.floor(np.log2(big.astype(np.float64))) + 1)) if big.size else 0.0
    )
    best_cost, best_window = rows + uvals.size + gap_cost, bits
    centre = max(1, int(math.log2(max(rows, 2))))
    for window in range(max(1, centre - 5), min(bits - 1, centre + 1) + 1):
        n_windows = -(-bits // window)
        mask = (1 << window) - 1
        cost = float((n_windows - 1) * (window + 1))
        for t in range(n_windows):
            digits = (uvals >> (t * window)) & mask
            nonzero = digits != 0
            cost += float(counts[nonzero].sum()) + min(mask, int(nonzero.sum()))
        if cost < best_cost:
            best_cost, best_window = cost, window
    return best_cost, best_window


def _plan_column(column: np.ndarray) -> _ColumnPlan:
    values, counts = np.unique(column, return_counts=True)
    candidates = {int(values[np.argmax(counts)]), int(values[0])}
    best: _ColumnPlan | None = None
    for offset in sorted(candidates):
        shifted = values - offset
        gcd = int(np.gcd.reduce(np.abs(shifted))) or 1
        pos, neg = shifted > 0, shifted < 0
        pos_cost, pos_window = _part_plan(shifted[pos] // gcd, counts[pos])
        neg_vals = (-shifted[neg] // gcd)[::-1]
        neg_cost, neg_window = _part_plan(neg_vals, counts[neg][::-1])
        cost = pos_cost + neg_cost + _pow_cost(gcd) + _pow_cost(abs(offset))
        cost += 8.0 if neg_vals.size else 0.0  # one modular inversion
        if best is None or cost < best.cost:
            best = _ColumnPlan(offset, gcd, pos_window, neg_window, cost)
    assert best is not None
    return best


def _bucket_sum(
    cts: Sequence[mpz], rows: np.ndarray, digits: np.ndarray, nsquare: mpz
) -> mpz | None:
    """``prod cts[rows[i]] ** digits[i]`` (digits > 0) by buckets and the running product."""
    if rows.size == 0:
        return None
    order = np.argsort(digits, kind="stable")[::-1]
    sorted_digits = digits[order]
    sorted_rows = rows[order].tolist()
    cuts = (np.flatnonzero(sorted_digits[1:] != sorted_digits[:-1]) + 1).tolist()
    starts = [0, *cuts]
    ends = [*cuts, len(sorted_rows)]
    keys = sorted_digits[starts].tolist() + [0]
    running = total = None
    for index, (start, end) in enumerate(zip(starts, ends)):
        acc = cts[sorted_rows[start]]
        for row in sorted_rows[start + 1 : end]:
            acc = acc * cts[row] % nsquare
        running = acc if running is None else running * acc % nsquare
        gap = keys[index] - keys[index + 1]
        term = running if gap == 1 else gmpy2.powmod(running, gap, nsquare)
        total = term if total is None else total * term % nsquare
    return total


def _multi_exp(
    cts: Sequence[mpz], rows: np.ndarray, values: np.ndarray, window: int, nsquare: mpz
) -> mpz | None:
    """``prod cts[rows[i]] ** values[i]`` (values > 0), windowed over the bits of the values."""
    if rows.size == 0:
        return None
    bits = int(values.max()).bit_length()
    if window >= bits:
        return _bucket_sum(cts, rows, values, nsquare)
    n_windows = -(-bits // window)
    mask = (1 << window) - 1
    shift = mpz(1) << window
    result = None
    for t in range(n_windows - 1, -1, -1):
        if result is not None:
            result = gmpy2.powmod(result, shift, nsquare)
        digits = (values >> (t * window)) & mask
        nonzero = digits != 0
        part = _bucket_sum(cts, rows[nonzero], digits[nonzero], nsquare)
        if part is not None:
            result = part if result is None else result * part % nsquare
    return result


def _column_core(
    cts: Sequence[mpz], column: np.ndarray, plan: _ColumnPlan, nsquare: mpz
) -> mpz | None:
    """``[[sum_i (x_i - offset) d_i]]`` for one column (``None`` stands for ``[[0]]``)."""
    shifted = column - plan.offset
    if plan.gcd > 1:
        shifted = shifted // plan.gcd
    pos = np.flatnonzero(shifted > 0)
    neg = np.flatnonzero(shifted < 0)
    result = _multi_exp(cts, pos, shifted[pos], plan.pos_window, nsquare)
    negative = _multi_exp(cts, neg, -shifted[neg], plan.neg_window, nsquare)
    if negative is not None:
        inverse = gmpy2.invert(negative, nsquare)
        result = inverse if result is None else result * inverse % nsquare
    if result is not None and plan.gcd > 1:
        result = gmpy2.powmod(result, plan.gcd, nsquare)
    return result


def _product_all(cts: Sequence[mpz], nsquare: mpz) -> mpz:
    acc = cts[0]
    for c in cts[1:]:
        acc = acc * c % nsquare
    return acc


_SUM_ITEM = -1


def _dot_items(
    cts: Sequence[mpz], items: list[tuple[int, np.ndarray | None, _ColumnPlan | None]], nsquare: mpz
) -> list[tuple[int, mpz | None]]:
    out: list[tuple[int, mpz | None]] = []
    for index, column, plan in items:
        if index == _SUM_ITEM:
            out.append((index, _product_all(cts, nsquare)))
        else:
            assert column is not None and plan is not None
            out.append((index, _column_core(cts, column, plan, nsquare)))
    return out


def _dot_worker(
    payload: tuple[bytes, int, mpz, list[tuple[int, np.ndarray | None, _ColumnPlan | None]]],
) -> list[tuple[int, mpz | None]]:
    blob, width, nsquare, items = payload
    cts = _parse_ciphertexts(blob, width, nsquare)
    return _dot_items(cts, items, nsquare)


def _balance(costs: list[float], bins: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of items to ``bins`` workers."""
    loads = [0.0] * bins
    groups: list[list[int]] = [[] for _ in range(bins)]
    for index in sorted(range(len(costs)), key=lambda i: -costs[i]):
        target = min(range(bins), key=loads.__getitem__)
        groups[target].append(index)
        loads[target] += costs[index]
    return [g for g in groups if g]


def encrypted_dot_products(
    enc_d: Sequence[int],
    X_int: np.ndarray,
    nsquare: int,
    *,
    workers: int | None = None,
) -> list[mpz]:
    """``[[X^T d]]``: one ciphertext per column of an integer matrix, by bucketed multi-exp.

    Parameters
    ----------
    enc_d : Sequence[int]
        ``n`` ciphertexts ``[[d_i]]`` (ours or ``phe``'s raw ciphertexts).
    X_int : np.ndarray
        ``n x m`` integer matrix (``int64``, e.g. from :func:`quantize_features`), any sign,
        ``|x| < 2**61``.
    nsquare : int
        ``n**2`` of the public key.
    workers : int, optional
        Processes (columns are split by a cost model); default ``os.cpu_count()`` when
        ``n * m`` is large, else in-process.

    Returns
    -------
    list[mpz]
        ``m`` ciphertexts of ``sum_i X[i, j] d_i`` (mod ``n``). A column of zeros gives the
        trivial encryption ``1`` of zero: mask and re-randomize before sending (as
        :func:`masked_encrypted_gradient` does).
    """
    X = np.asarray(X_int)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.integer):
        raise ValueError("X_int must be a 2-D integer matrix (quantize float features first)")
    rows, cols = X.shape
    if rows != len(enc_d):
        raise ValueError(f"X has {rows} rows but {len(enc_d)} ciphertexts were given")
    if X.size and int(np.max(np.abs(X.astype(np.int64)))) >= 2**61:
        raise ValueError("X_int entries must satisfy |x| < 2**61")
    if rows == 0:
        return [_ONE] * cols
    n2 = mpz(nsquare)
    started = time.perf_counter()
    columns = np.ascontiguousarray(X.T.astype(np.int64))
    plans = [_plan_column(columns[j]) for j in range(cols)]
    items: list[tuple[int, np.ndarray | None, _ColumnPlan | None]] = [
        (j, columns[j], plans[j]) for j in range(cols)
    ]
    costs = [p.cost for p in plans]
    if any(p.offset != 0 for p in plans):
        items.append((_SUM_ITEM, None, None))
        costs.append(float(rows))
    total_cost = int(sum(costs))
    n_workers = _resolve_workers(workers, total_cost, _PARALLEL_MIN_PRODUCTS)
    cts = [mpz(c) for c in enc_d]
    if n_workers == 1 or len(items) == 1:
        results = dict(_dot_items(cts, items, n2))
    else:
        width = _ct_width(n2)
        blob = _pack_ciphertexts_bytes(cts, width)
        payloads = [
            (blob, width, n2, [items[i] for i in group])
            for group in _balance(costs, min(n_workers, len(items)))
        ]
        results = {}
        for part in _run_pool(_dot_worker, payloads, n_workers):
            results.update(part)
    total = results.get(_SUM_ITEM)
    total_inverse = None
    out: list[mpz] = []
    for j, plan in enumerate(plans):
        result = results[j]
        if plan.offset:
            assert total is not None
            if plan.offset > 0:
                correction = gmpy2.powmod(total, plan.offset, n2)
            else:
                if total_inverse is None:
                    total_inverse = gmpy2.invert(total, n2)
                correction = gmpy2.powmod(total_inverse, -plan.offset, n2)
            result = correction if result is None else result * correction % n2
        out.append(_ONE if result is None else result)
    logger.debug(
        "encrypted dot products: %d x %d, est. %d mulmods, %d workers, %.3f s",
        rows,
        cols,
        total_cost,
        n_workers,
        time.perf_counter() - started,
    )
    return out


# --------------------------------------------------------------------------------------------
# Masking and packing


@dataclass(frozen=True)
class SlotLayout:
    """Slot arithmetic of packed masked gradients (all public).

    A gradient entry ``g`` satisfies ``|g| < 2**value_bits``. Its slot holds
    ``g + 2**value_bits + r`` with ``r`` uniform in ``[0, 2**mask_bits)``,
    ``mask_bits = value_bits + 1 + statistical_bits``. Since ``0 < g + 2**value_bits <
    2**(value_bits + 1)``, a slot value is non-negative and below
    ``2**(value_bits + 1) + 2**mask_bits <= 2**(mask_bits + 1) = 2**slot_bits``: no slot borrows
    from or carries into its neighbours, and ``slots_per_ciphertext * slot_bits <= bits(n) - 1``
    keeps a packed plaintext below ``2**(bits(n) - 1) <= n``, so nothing wraps modulo ``n``. The
    masked value is within statistical distance ``2**(value_bits + 1) / 2**mask_bits =
    2**-statistical_bits`` of ``r`` alone: it reveals nothing about ``g``.
    """

    value_bits: int
    mask_bits: int
    slot_bits: int
    slots_per_ciphertext: int


def slot_layout(
    rows: int,
    residual_value_bits: int,
    key_bits: int,
    *,
    feature_value_bits: int = FEATURE_VALUE_BITS,
    statistical_bits: int = STATISTICAL_SECURITY_BITS,
) -> SlotLayout:
    """Slot layout for ``X^T d`` with ``rows`` rows, ``|d_q| < 2**residual_value_bits`` and
    ``|x_q| < 2**feature_value_bits``: ``|g| <= rows * max|x_q| * max|d_q| <
    2**(bits(rows) + feature_value_bits + residual_value_bits)``.
    """
    if rows < 1 or residual_value_bits < 1 or feature_value_bits < 1:
        raise ValueError("slot layout needs positive sizes")
    if statistical_bits < 40:
        raise ValueError("statistical masking needs at least 40 bits")
    value_bits = int(rows).bit_length() + feature_value_bits + residual_value_bits
    mask_bits = value_bits + 1 + statistical_bits
    slot_bits = mask_bits + 1
    slots = (key_bits - 1) // slot_bits
    if slots < 1:
        raise ValueError(f"a {slot_bits}-bit slot does not fit a {key_bits}-bit plaintext")
    return SlotLayout(value_bits, mask_bits, slot_bits, slots)


def pack_ciphertexts(
    ciphertexts: Sequence[int], nsquare: int, *, slot_bits: int, slots_per_ciphertext: int
) -> list[mpz]:
    """Pack ciphertexts by shift-and-add: ``[[sum_i a_i 2**(slot_bits * i)]]`` per group.

    Values ``i = 0 .. slots_per_ciphertext - 1`` of a group land in slot ``i`` (slot 0 in the
    lowest bits). The caller guarantees the plaintexts fit (see :class:`SlotLayout`).
    """
    if slot_bits < 1 or slots_per_ciphertext < 1:
        raise ValueError("slot_bits and slots_per_ciphertext must be positive")
    n2 = mpz(nsquare)
    shift = mpz(1) << slot_bits
    out = []
    for start in range(0, len(ciphertexts), slots_per_ciphertext):
        group = ciphertexts[start : start + slots_per_ciphertext]
        acc = mpz(group[-1])
        for c in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, shift, n2) * c % n2
        out.append(acc)
    return out


def unpack_plaintext(plaintext: int, *, slot_bits: int, count: int) -> list[int]:
    """Split a packed plaintext into ``count`` non-negative ``slot_bits``-bit values (slot 0
    first). Raises ``ValueError`` if bits remain above the last slot."""
    value = int(plaintext)
    if value < 0 or value >> (slot_bits * count):
        raise ValueError("packed plaintext does not fit the declared slots")
    mask = (1 << slot_bits) - 1
    return [(value >> (slot_bits * i)) & mask for i in range(count)]


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
# High-level steps


def encrypt_residuals(
    public: PaillierPublicKey,
    d: np.ndarray,
    *,
    bound: float | None = None,
    encryptor: DJNEncryptor | None = None,
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
    encryptor : DJNEncryptor, optional
        Keep one per run (made with the private key) to reuse its tables and pooled
        obfuscators.
    private : PaillierPrivateKey, optional
        Without ``encryptor``: the label owner's private key, for CRT-accelerated obfuscators.
    workers : int, optional
        Processes for the encryption (default: all cores for large vectors).
    """
    if encryptor is None:
        encryptor = DJNEncryptor(public, private=private)
    quantized, value_bits = quantize_residuals(d, bound=bound)
    cts = encrypt_vector(public, quantized, encryptor=encryptor, workers=workers)
    return EncryptedVector(tuple(cts), value_bits, RESIDUAL_FRACTION_BITS)


def _fresh_randomness(n: mpz, rng: RandomBits) -> mpz:
    while True:
        rho = mpz(rng.randbits(n.bit_length() + 128)) % n
        if rho > 1 and gmpy2.gcd(rho, n) == 1:
            return rho


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
    layout = slot_layout(rows, enc_d.value_bits, n.bit_length())
    X_q = quantize_features(X)
    dots = encrypted_dot_products(enc_d.ciphertexts, X_q, nsquare, workers=workers)
    packed = pack_ciphertexts(
        dots, nsquare, slot_bits=layout.slot_bits, slots_per_ciphertext=layout.slots_per_ciphertext
    )
    masks = tuple(int(rng.randbits(layout.mask_bits)) for _ in range(cols))
    offset = 1 << layout.value_bits
    out = []
    for k, c in enumerate(packed):
        group = masks[k * layout.slots_per_ciphertext : (k + 1) * layout.slots_per_ciphertext]
        plain = sum((offset + r) << (layout.slot_bits * i) for i, r in enumerate(group))
        masked = c + n * (mpz(plain) * c % n)  # [[a]] * (1 + plain * n) = [[a + plain]]
        masked %= nsquare
        rho = _fresh_randomness(n, rng)
        out.append(masked * gmpy2.powmod(rho, n, nsquare) % nsquare)
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
            unpack_plaintext(decryptor.decrypt(c), slot_bits=packed.slot_bits, count=take)
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


def _ct_width(nsquare: int) -> int:
    return (int(nsquare).bit_length() + 7) // 8


def ciphertext_width(public: PaillierPublicKey) -> int:
    """Bytes of one serialized ciphertext: the byte length of ``n**2``."""
    return _ct_width(mpz(public.n) ** 2)


def _pack_ciphertexts_bytes(cts: Sequence[int], width: int) -> bytes:
    return b"".join(int(c).to_bytes(width, "big") for c in cts)


def _parse_ciphertexts(data: bytes, width: int, nsquare: mpz) -> list[mpz]:
    if len(data) % width:
        raise ValueError(
            f"ciphertext bytes must be a multiple of {width} (bytes of n**2), got {len(data)}"
        )
    out = []
    for start in range(0, len(data), width):
        c = mpz(int.from_bytes(data[start : start + width], "big"))
        if not 0 < c < nsquare:
            raise ValueError("a ciphertext is out of range for this key")
        out.append(c)
    return out


def ciphertexts_to_bytes(ciphertexts: Sequence[int], public: PaillierPublicKey) -> bytes:
    """Concatenate ciphertexts big-endian, each in exactly :func:`ciphertext_width` bytes."""
    nsquare = mpz(public.n) ** 2
    width = _ct_width(nsquare)
    for c in ciphertexts:
        if not 0 < c < nsquare:
            raise ValueError("a ciphertext is out of range for this key")
    return _pack_ciphertexts_bytes(ciphertexts, width)


def ciphertexts_from_bytes(
    data: bytes, public: PaillierPublicKey, count: int | None = None
) -> list[mpz]:
    """Parse :func:`ciphertexts_to_bytes` output; checks width, range and (optional) count."""
    nsquare = mpz(public.n) ** 2
    width = _ct_width(nsquare)
    if count is not None and len(data) != count * width:
        raise ValueError(f"expected {count} ciphertexts of {width} bytes, got {len(data)} bytes")
    return _parse_ciphertexts(data, width, nsquare)


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

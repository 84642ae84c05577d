"""Hazmat: Paillier encryption and decryption fast paths (DJN obfuscators, CRT, process pools).

No safety net: these functions trust their caller for key sizes, bounds, randomness reuse and
what may be revealed to whom. Use :mod:`vfm_flower.paillier` (``PaillierContext`` and the
protocol steps) unless you are writing one of those.

Everything is plain Paillier with ``g = n + 1`` on ``phe``'s key objects, so a ``phe`` private
key decrypts every ciphertext made here. The speed comes from:

* **Signed integers.** A negative value ``v`` is the plaintext ``n - |v|``.
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
  encryption; pass ``exponent_bits=1024`` to :class:`DJNEncryptor` for it. The group order is
  unknown only to those without the factorization: towards the key owner, re-randomize with
  :func:`full_obfuscators` (full-size ``rho**n``), never with short exponents.
* **CRT** on the key owner's side: decryption modulo ``p**2`` and ``q**2`` with precomputed
  ``hp`` and ``hq``; and, when the key owner encrypts its own values, its obfuscators are also
  computed modulo ``p**2`` and ``q**2`` and recombined (``DJNEncryptor(private=...)``).
* **Process pools** across cores for large batches (encryption and decryption split by rows);
  small batches run in-process.

Nothing in this module logs a key, a plaintext, a mask or a ciphertext; debug logs carry sizes
and timings only.
"""

from __future__ import annotations

import logging
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
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from vfm_flower.errors import PolicyViolation

__all__ = [
    "MIN_KEY_BITS",
    "FIXED_BASE_WINDOW_BITS",
    "RandomBits",
    "check_key_bits",
    "encode_signed",
    "decode_signed",
    "resolve_workers",
    "run_pool",
    "chunk_bounds",
    "ciphertext_bytes_width",
    "join_ciphertexts",
    "split_ciphertexts",
    "djn_exponent_bits",
    "add_plaintexts",
    "DJNEncryptor",
    "encrypt_vector",
    "full_obfuscators",
    "CRTDecryptor",
    "decrypt_vector",
]

logger = logging.getLogger(__name__)

#: Smallest Paillier modulus the plugin accepts (an agreement may require more).
MIN_KEY_BITS = 2048
#: Window of the fixed-base table for DJN obfuscators (one table row per exponent byte).
FIXED_BASE_WINDOW_BITS = 8


# Below these sizes a process pool costs more than it saves.
_PARALLEL_MIN_ENCRYPTIONS = 1024
_PARALLEL_MIN_DECRYPTIONS = 256
_PARALLEL_MIN_RERANDOMIZATIONS = 64

_ONE = mpz(1)


class RandomBits(Protocol):
    """A source of uniformly random bits (the ``secrets`` module is one)."""

    def randbits(self, k: int) -> int:  # pragma: no cover - protocol
        """Return a uniformly random non-negative integer below ``2**k``."""
        ...


# --------------------------------------------------------------------------------------------
# Key sizes


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


def resolve_workers(workers: int | None, work: int, threshold: int) -> int:
    """Processes to use: ``workers`` if given, else all cores when ``work >= threshold``.

    Always 1 inside a daemonic process (a pool worker cannot have children).
    """
    if multiprocessing.current_process().daemon:
        return 1  # daemonic processes cannot have children
    if workers is None:
        return max(1, os.cpu_count() or 1) if work >= threshold else 1
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return workers


def run_pool(fn: Callable[[Any], Any], payloads: list[Any], workers: int) -> list[Any]:
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


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """``(start, end)`` of at most ``parts`` contiguous chunks of ``range(count)``.

    Chunk sizes differ by at most one.
    """
    parts = max(1, min(parts, count))
    step, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + step + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


# --------------------------------------------------------------------------------------------
# Ciphertext bytes (fixed width: the byte length of n**2)


def ciphertext_bytes_width(nsquare: int) -> int:
    """Bytes of one serialized ciphertext modulo ``nsquare``."""
    return (int(nsquare).bit_length() + 7) // 8


def join_ciphertexts(cts: Sequence[int], width: int) -> bytes:
    """Concatenate ciphertexts big-endian in ``width`` bytes each (no range check)."""
    return b"".join(int(c).to_bytes(width, "big") for c in cts)


def split_ciphertexts(data: bytes, width: int, nsquare: mpz) -> list[mpz]:
    """Parse :func:`join_ciphertexts` output; checks the width and ``0 < c < nsquare``."""
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


def add_plaintexts(
    plaintexts: Sequence[mpz], obfuscators: Sequence[mpz], n: mpz, nsquare: mpz
) -> list[mpz]:
    """``(1 + m n) * obf mod n**2``, computed as ``obf + n * (m * obf mod n) mod n**2``.

    With ``obf`` an obfuscator this encrypts ``m``; with ``obf`` a ciphertext ``[[a]]`` it gives
    ``[[a + m]]`` (same randomness). Plaintexts must be in ``[0, n)`` (see :func:`encode_signed`).
    """
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
    return add_plaintexts(plaintexts, obfuscators, n, n * n)


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
        n_workers = resolve_workers(workers, count, _PARALLEL_MIN_ENCRYPTIONS)
        if n_workers == 1:
            self._pool.extend(self._make(count))
            return
        payloads = [(self._params, end - start) for start, end in chunk_bounds(count, n_workers)]
        for part in run_pool(_obfuscator_worker, payloads, n_workers):
            self._pool.extend(part)

    def export_pool(self) -> bytes:
        """Remove every pooled obfuscator and return them as fixed-width bytes.

        For a party that computes them in one message and uses them in the next (the
        Deployment Engine runs every message in a fresh process): the bytes are secret
        randomness; keep them in the party's own state only, and load them once.
        """
        blob = join_ciphertexts(self._pool, ciphertext_bytes_width(self._nsquare))
        self._pool = []
        return blob

    def import_pool(self, blob: bytes) -> None:
        """Add obfuscators exported by :meth:`export_pool` (any encryptor of this key).

        Raises
        ------
        ValueError
            The bytes are not a whole number of values in ``(0, n**2)`` (another key's pool).
        """
        self._pool.extend(
            split_ciphertexts(blob, ciphertext_bytes_width(self._nsquare), self._nsquare)
        )

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
        return add_plaintexts([m], self.take_obfuscators(1), self._n, self._nsquare)[0]

    def encrypt_ints(self, values: Sequence[int], *, workers: int | None = None) -> list[mpz]:
        """Encrypt signed integers; uses pooled obfuscators, then a process pool if large."""
        count = len(values)
        plaintexts = [encode_signed(v, self._n) for v in values]
        pooled = min(count, len(self._pool))
        out = add_plaintexts(
            plaintexts[:pooled], self.take_obfuscators(pooled), self._n, self._nsquare
        )
        rest = [int(v) for v in values[pooled:]]
        if not rest:
            return out
        n_workers = resolve_workers(workers, len(rest), _PARALLEL_MIN_ENCRYPTIONS)
        if n_workers == 1:
            obfs = self._make(len(rest))
            out.extend(add_plaintexts(plaintexts[pooled:], obfs, self._n, self._nsquare))
            return out
        bounds = chunk_bounds(len(rest), n_workers)
        payloads = [(self._params, rest[start:end]) for start, end in bounds]
        for part in run_pool(_encrypt_worker, payloads, n_workers):
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


def _full_obfuscator_worker(payload: tuple[mpz, int]) -> list[mpz]:
    n, count = payload
    return full_obfuscators(n, count, workers=1)


def full_obfuscators(
    n: int, count: int, *, rng: RandomBits = secrets, workers: int | None = None
) -> list[mpz]:
    """``count`` encryptions of zero ``rho**n mod n**2`` with full-size random ``rho``.

    ``rho`` is uniform in ``Z_n^*`` (drawn with 128 extra bits, then reduced), so multiplying a
    ciphertext by one makes it a uniformly random encryption of its plaintext, even for the key
    owner, who can extract the randomness of any ciphertext (which is why short DJN exponents
    must not be used for this). One full exponentiation each (~15 ms at 2048 bits).

    Parameters
    ----------
    n : int
        The public modulus.
    count : int
        How many to make.
    rng : RandomBits
        Source of ``rho`` (default: the ``secrets`` module). Any other source is used
        in-process only.
    workers : int, optional
        Processes (default: all cores from 64 values on); only with ``rng=secrets``.

    Returns
    -------
    list[mpz]
        ``count`` values modulo ``n**2``.
    """
    n = mpz(n)
    nsquare = n * n
    if count <= 0:
        return []
    n_workers = resolve_workers(workers, count, _PARALLEL_MIN_RERANDOMIZATIONS)
    if n_workers > 1 and rng is secrets:
        payloads = [(n, end - start) for start, end in chunk_bounds(count, n_workers)]
        return [r for part in run_pool(_full_obfuscator_worker, payloads, n_workers) for r in part]
    out = []
    bits = n.bit_length() + 128
    for _ in range(count):
        rho = mpz(0)
        while rho <= 1 or gmpy2.gcd(rho, n) != 1:
            rho = mpz(rng.randbits(bits)) % n
        out.append(gmpy2.powmod(rho, n, nsquare))
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


def _decrypt_worker(payload: tuple[PaillierPrivateKey, list[int]]) -> list[int]:
    private, ciphertexts = payload
    return decrypt_vector(private, ciphertexts, workers=1)


def decrypt_vector(
    private: PaillierPrivateKey, ciphertexts: Sequence[int], *, workers: int | None = None
) -> list[int]:
    """Decrypt ciphertexts to signed integers (plaintexts above ``n // 2`` are negative).

    ``workers``: processes (default: all cores from 256 ciphertexts on). The private key then
    travels to this machine's own worker processes over local pipes, nowhere else.
    """
    n_workers = resolve_workers(workers, len(ciphertexts), _PARALLEL_MIN_DECRYPTIONS)
    if n_workers > 1:
        cts = [int(c) for c in ciphertexts]
        bounds = chunk_bounds(len(cts), n_workers)
        payloads = [(private, cts[start:end]) for start, end in bounds]
        return [m for part in run_pool(_decrypt_worker, payloads, n_workers) for m in part]
    decryptor = CRTDecryptor(private)
    n = int(private.public_key.n)
    return [decode_signed(decryptor.decrypt(c), n) for c in ciphertexts]

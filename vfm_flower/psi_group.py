"""The group under the PSI: ids hashed to Curve25519, per-run secrets, blinding in a pool.

:func:`hash_ids_to_points` maps normalized ids to u-coordinates of points on Curve25519 (never
its twist), domain-separated by agreement and run; :class:`PsiSecret` is a party's scalar for
one run; :func:`blind_points` raises points to it (X25519, RFC 7748, through libsodium) in
chunks over a process pool (:func:`blinding_pool`). The protocol that uses them, and what each
party learns, is in :mod:`vfm_flower.psi`.

Nothing here logs or puts in an exception an id, a hash of an id, a blinded point or a
secret; messages name counts and row numbers only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

import gmpy2
import numpy as np
from nacl.bindings import crypto_scalarmult as _scalarmult
from nacl.exceptions import CryptoError

from vfm_flower.errors import ConfigurationError, DataError

logger = logging.getLogger(__name__)

POINT_BYTES = 32
"""Size of one X25519 u-coordinate (a hashed or blinded id)."""

DEFAULT_CHUNK_SIZE = 4096
"""Points per process-pool task (128 KiB in, 128 KiB out, about 0.15 s of work)."""

POOL_MIN_POINTS = 16384
"""Below this many points blinding runs in-process (pool start-up would cost more)."""

_HASH_TAG = b"vfm-flower/v1/psi-hash-to-curve25519"
_DOMAIN_TAG = b"vfm-flower/v1/psi-domain"
_FIELD_PRIME = 2**255 - 19
_CURVE_A = 486662  # Curve25519: v^2 = u^3 + A u^2 + u
_U_MASK = (1 << 255) - 1
_COUNTERS = tuple(bytes((i,)) for i in range(256))


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# --------------------------------------------------------------------------- hashing


def psi_domain(agreement_id: str, run_id: str) -> bytes:
    """The hash domain of one alignment: binds hashed ids to an agreement and a run.

    Parameters
    ----------
    agreement_id : str
        Identifier (e.g. the hash) of the signed collaboration agreement.
    run_id : str
        The run's identifier (all parties of the run use the same).

    Returns
    -------
    bytes
        An unambiguous, length-prefixed encoding of both values.
    """
    for name, value in (("agreement_id", agreement_id), ("run_id", run_id)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"psi_domain: {name} must be a non-empty string")
    return (
        _DOMAIN_TAG
        + _length_prefixed(agreement_id.encode("utf-8"))
        + _length_prefixed(run_id.encode("utf-8"))
    )


def _hash_chunk(domain: bytes, ids: Sequence[str]) -> bytes | int:
    """Hash ids to on-curve u-coordinates (see :func:`hash_ids_to_points`).

    Runs in pool workers: a list of str in, bytes out. Returns the chunk-relative index of
    the first value that is not a string instead of bytes.
    """
    base = hashlib.sha256(_HASH_TAG + _length_prefixed(domain))
    copy = base.copy
    mpz = gmpy2.mpz
    legendre = gmpy2.legendre
    prime = mpz(_FIELD_PRIME)
    out: list[bytes] = []
    append = out.append
    for row, value in enumerate(ids):
        try:
            data = value.encode("utf-8")
        except (AttributeError, UnicodeEncodeError):
            return row
        h = copy()
        h.update(len(data).to_bytes(4, "big") + data)
        for counter in _COUNTERS:
            attempt = h.copy()
            attempt.update(counter)
            u = int.from_bytes(attempt.digest(), "little") & _U_MASK
            m = mpz(u)
            # On the curve (not its twist) and not u = 0: u^3 + A u^2 + u is a non-zero square.
            if u < _FIELD_PRIME and legendre((m * (m * (m + _CURVE_A) + 1)) % prime, prime) == 1:
                append(u.to_bytes(POINT_BYTES, "little"))
                break
        else:  # pragma: no cover - probability 2^-256
            raise DataError("hash_ids_to_points: no curve point found for an id")
    return b"".join(out)


def hash_ids_to_points(
    ids: Sequence[str],
    domain: bytes,
    *,
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    executor: Executor | None = None,
) -> np.ndarray:
    """Hash normalized ids to X25519 u-coordinates of points on Curve25519.

    ``u = SHA-256(tag || len(domain) || domain || len(id) || id || counter)`` read
    little-endian with the top bit cleared (RFC 7748: X25519 ignores it, so two different
    digests stay two different points), for the first one-byte counter 0, 1, ... whose ``u``
    is canonical (``u < 2^255 - 19``) and lies on the curve rather than on its quadratic
    twist (Legendre symbol of ``u^3 + A u^2 + u``, gmpy2); about two attempts per id.
    Lengths are 4-byte big-endian, ids UTF-8.

    Why not any 255-bit string: X25519 also computes on the twist, but scalar
    multiplication keeps a point on its curve, so a blinded point would still show whether
    the id's hash lies on the curve or the twist: one bit about every id, shared or not,
    linked to the sender's row order. On-curve points only close that channel.

    Parameters
    ----------
    ids : sequence of str
        Normalized ids (see :func:`vfm_flower.normalize.normalize_ids`).
    domain : bytes
        From :func:`psi_domain`.
    workers, chunk_size, executor
        As for :func:`blind_points` (hashing large inputs uses the same process pool).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 32)``, dtype uint8, row ``i`` is the point of ``ids[i]``.

    Raises
    ------
    DataError
        A value is not a string (names the row).
    """
    if not isinstance(domain, bytes | bytearray) or not domain:
        raise ConfigurationError("hash_ids_to_points: domain must be non-empty bytes")
    domain = bytes(domain)
    n = len(ids)
    out = np.empty((n, POINT_BYTES), dtype=np.uint8)

    def chunk(start: int) -> list[str]:
        part = ids[start : start + chunk_size]
        return part if isinstance(part, list) else list(part)

    def store(start: int, result: bytes | int) -> None:
        if isinstance(result, int):
            raise DataError(
                f"hash_ids_to_points: row {start + result + 1} is not a normalized id string"
            )
        out[start : start + len(result) // POINT_BYTES] = np.frombuffer(
            result, dtype=np.uint8
        ).reshape(-1, POINT_BYTES)

    _map_chunks(
        _hash_chunk, domain, chunk, store, n, chunk_size, workers=workers, executor=executor
    )
    return out


# --------------------------------------------------------------------------- secret


class PsiSecret:
    """A party's secret X25519 scalar for one run. Immutable; never logged or printed.

    Parameters
    ----------
    key : bytes
        32 bytes (X25519 clamps them into a scalar). Use :meth:`generate` for a fresh one.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != POINT_BYTES:
            raise ConfigurationError("a PSI secret must be exactly 32 bytes")
        object.__setattr__(self, "_key", bytes(key))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PsiSecret is immutable")

    def __repr__(self) -> str:
        return "PsiSecret(<hidden>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PsiSecret):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("PsiSecret is not picklable: store to_bytes() in private state")

    @classmethod
    def generate(cls) -> PsiSecret:
        """A fresh secret from the operating system's CSPRNG (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(POINT_BYTES))

    def to_bytes(self) -> bytes:
        """The raw 32 bytes, to keep in the party's private state between messages."""
        return self._key

    @classmethod
    def from_bytes(cls, data: bytes) -> PsiSecret:
        """Inverse of :meth:`to_bytes`."""
        return cls(data)


# --------------------------------------------------------------------------- blinding


def _blind_chunk(key: bytes, data: bytes) -> bytes | int:
    """Blind consecutive 32-byte points: X25519 (RFC 7748) through libsodium.

    Runs in pool workers: bytes in, bytes out (cheap to pickle). Returns the index of the
    first point whose product is the neutral element (low order: invalid input) instead of
    bytes, so the caller can raise a clear error. libsodium's ``crypto_scalarmult`` is the
    same function as OpenSSL's X25519 (the tests compare them byte for byte) with less
    per-call overhead: no key objects (about 55 against 60 us per point on this project's
    2-core CI machine, ``benchmarks/psi.py`` prints both).
    """
    size = len(data)
    try:
        return b"".join([_scalarmult(key, data[i : i + 32]) for i in range(0, size, 32)])
    except CryptoError:
        for index, start in enumerate(range(0, size, 32)):
            try:
                _scalarmult(key, data[start : start + 32])
            except CryptoError:
                return index
        raise  # pragma: no cover - the batch failed, so one point fails


def _as_points(points: object, what: str) -> np.ndarray:
    """``points`` as a C-contiguous ``(n, 32)`` uint8 array, or a clear ``DataError``."""
    arr = np.asarray(points)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != POINT_BYTES:
        raise DataError(
            f"{what}: expected an (n, 32) uint8 array of points, got shape {arr.shape} "
            f"and dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr)


def _pool_context() -> multiprocessing.context.BaseContext:
    # 'spawn': workers are fresh interpreters, safe next to gRPC threads (fork is not), and
    # direct children, so their memory shows in RUSAGE_CHILDREN once the pool closes.
    return multiprocessing.get_context("spawn")


@contextmanager
def blinding_pool(workers: int | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool for :func:`hash_ids_to_points` and :func:`blind_points`, to reuse.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default ``os.cpu_count()``.
    """
    count = worker_count(workers)
    pool = ProcessPoolExecutor(max_workers=count, mp_context=_pool_context())
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def worker_count(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ConfigurationError("workers must be a positive integer")
    return workers


def _low_order_error(row: int) -> DataError:
    return DataError(
        f"blinding failed at row {row + 1}: the point has low order (X25519 result is "
        "zero). A correctly hashed or blinded id never does this: the input is malformed "
        "or was crafted"
    )


def _map_chunks(
    function: Callable[[bytes, Any], bytes | int],
    constant: bytes,
    make_chunk: Callable[[int], Any],
    store: Callable[[int, bytes | int], None],
    n: int,
    chunk_size: int,
    *,
    workers: int | None,
    executor: Executor | None,
) -> None:
    """Apply ``function(constant, chunk)`` to consecutive chunks, in a pool when it pays.

    At most ``2 * workers`` chunks are in flight, so memory stays bounded; results are
    stored in order as they arrive. Without ``executor``, inputs under
    :data:`POOL_MIN_POINTS` (or ``workers=1``) run in this process, larger ones in a
    process pool opened for the call.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigurationError("chunk_size must be a positive integer")
    count = worker_count(workers)
    if n == 0:
        return

    def run_here() -> None:
        for start in range(0, n, chunk_size):
            store(start, function(constant, make_chunk(start)))

    if executor is None and (count == 1 or n < POOL_MIN_POINTS):
        run_here()
        return

    def run(pool: Executor, in_flight: int) -> None:
        pending: deque[tuple[int, Future[bytes | int]]] = deque()
        for start in range(0, n, chunk_size):
            if len(pending) >= in_flight:
                done_start, future = pending.popleft()
                store(done_start, future.result())
            pending.append((start, pool.submit(function, constant, make_chunk(start))))
        while pending:
            done_start, future = pending.popleft()
            store(done_start, future.result())

    try:
        if executor is not None:
            run(executor, 2 * count)
        else:
            logger.debug("processing %d items with %d worker processes", n, count)
            with blinding_pool(count) as pool:
                run(pool, 2 * count)
    except BrokenProcessPool:
        # Liveness over speed: a pool that cannot start (e.g. no importable __main__ for
        # 'spawn') or lost a worker must not hang or fail the alignment.
        logger.warning("the process pool broke; continuing in this process (slower)")
        run_here()


def blind_points(
    points: np.ndarray,
    secret: PsiSecret,
    *,
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    executor: Executor | None = None,
) -> np.ndarray:
    """Raise every point to the secret scalar (X25519), in row order.

    Parameters
    ----------
    points : numpy.ndarray
        Shape ``(n, 32)``, uint8.
    secret : PsiSecret
        This party's secret for the run.
    workers : int, optional
        Process-pool size; default ``os.cpu_count()``. ``1`` (or fewer than
        :data:`POOL_MIN_POINTS` points) runs in this process.
    chunk_size : int, optional
        Points per task; at most ``2 * workers`` tasks are in flight, so memory stays
        bounded by the input and output arrays.
    executor : concurrent.futures.Executor, optional
        A pool to use (e.g. from :func:`blinding_pool`), whatever the input size.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 32)``, uint8: row ``i`` is ``points[i]`` blinded.

    Raises
    ------
    DataError
        Bad array shape or dtype, or a low-order point (names the row, not the point).
    """
    if not isinstance(secret, PsiSecret):
        raise ConfigurationError("blind_points needs a PsiSecret")
    arr = _as_points(points, "blind_points")
    n = arr.shape[0]
    out = np.empty((n, POINT_BYTES), dtype=np.uint8)

    def chunk(start: int) -> bytes:
        return arr[start : start + chunk_size].tobytes()

    def store(start: int, result: bytes | int) -> None:
        if isinstance(result, int):
            raise _low_order_error(start + result)
        out[start : start + len(result) // POINT_BYTES] = np.frombuffer(
            result, dtype=np.uint8
        ).reshape(-1, POINT_BYTES)

    _map_chunks(
        _blind_chunk,
        secret.to_bytes(),
        chunk,
        store,
        n,
        chunk_size,
        workers=workers,
        executor=executor,
    )
    return out

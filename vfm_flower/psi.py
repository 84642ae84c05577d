"""ECDH private set intersection over X25519: the alignment protocol core, free of Flower.

Protocol (hub form: the label owner LO aligns with every passive party P_k; the server only
relays end-to-end encrypted envelopes, which is not this module's concern):

1. Every party normalizes its ids (:mod:`vfm_flower.normalize`) and hashes each one to the
   32-byte X25519 u-coordinate of a point on Curve25519 (never its twist), ``H(id)``,
   domain-separated by agreement and run (:func:`psi_domain`, :func:`hash_ids_to_points`).
2. Every party draws a fresh secret scalar per run (:class:`PsiSecret`): ``a`` for LO,
   ``b_k`` for P_k. Blinding is X25519 scalar multiplication, ``P^s`` (multiplicative
   notation); clamped scalars multiply, so ``(P^a)^b == (P^b)^a``.
3. LO sends ``X^a`` (its rows in its own order, :func:`first_blind_label_owner`) to every
   P_k; P_k sends ``Y_k^{b_k}`` in a secret random order (:func:`first_blind_passive`).
4. P_k returns ``X^{a b_k}`` (same order as received, :func:`second_blind`); LO computes
   ``Y_k^{b_k a}`` (:func:`second_blind`).
5. LO matches (:func:`match_joint_rows`): joint rows are its rows found at *every* P_k.
   Cardinality gate first (fewer than ``min_intersection`` joint rows: refuse, reveal
   nothing more); then a common order drawn from a CSPRNG; each P_k receives, for each
   joint row in that order, the position in its shuffled ``Y_k`` and maps it back to its own
   rows with its secret permutation (:func:`local_rows_from_positions`).

What each party learns (the accepted leakage of the design): LO learns which of its own rows
each passive party holds (pairwise membership of its own customers) and every set size;
P_k learns the size of LO's set and which of its own rows are joint (joint with *all*
parties, not pairwise), in the common order; nobody learns anything about ids it does not
hold (decisional Diffie-Hellman in Curve25519's prime-order group, hash modelled as a random
oracle). Semi-honest model: a party that deviates (e.g. returns its doubles reordered) can
spoil the alignment but not read ids it does not hold. A passive party that colluded with LO
would learn which of its own rows LO and the others hold, as LO does.

Performance: two X25519 operations per id per party is the floor (about 55 us each through
libsodium on the 2-core CI machine, 33 us on a faster one). Hashing (about 10 us per id:
two SHA-256 and Legendre-symbol attempts on average) and
blinding run in one process pool over all cores, in chunks (bounded memory); matching is a
numpy sort and binary search on 64-bit prefixes, verified on all 32 bytes.

Matching never goes through an unordered Python set (PaddleFL #156 silently misaligned
rows that way): positions are exact 32-byte comparisons on numpy arrays.

Nothing here logs or puts in an exception an id, a hash of an id, a blinded point or a
secret; messages name parties, counts and row numbers only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import gmpy2
import numpy as np
from nacl.bindings import crypto_scalarmult as _scalarmult
from nacl.exceptions import CryptoError

from vfm_flower.errors import ConfigurationError, DataError
from vfm_flower.normalize import check_unique
from vfm_flower.policy import check_min_intersection, check_set_size

logger = logging.getLogger(__name__)

POINT_BYTES = 32
"""Size of one X25519 u-coordinate (a hashed or blinded id)."""

DEFAULT_CHUNK_SIZE = 4096
"""Points per process-pool task (128 KiB in, 128 KiB out, about 0.15 s of work)."""

POOL_MIN_POINTS = 16384
"""Below this many points blinding runs in-process (pool start-up would cost more)."""

_HASH_TAG = b"vfm-flower/v1/psi-hash-to-curve25519"
_DOMAIN_TAG = b"vfm-flower/v1/psi-domain"
_VOID32 = np.dtype((np.void, POINT_BYTES))
_FIELD_PRIME = 2**255 - 19
_CURVE_A = 486662  # Curve25519: v^2 = u^3 + A u^2 + u
_U_MASK = (1 << 255) - 1
_COUNTERS = tuple(bytes((i,)) for i in range(256))
_POSITION_DTYPE = np.dtype("<i8")


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


# --------------------------------------------------------------------------- protocol steps


def secure_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG.

    Sorting ``n`` random 64-bit keys from ``os.urandom`` gives a uniform permutation when
    the keys are distinct; on the (probability < n^2 / 2^65) event of a tie, keys are
    drawn again. No seeded generator: the permutation must stay unpredictable.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(n,)``.
    """
    if n < 0:
        raise ValueError("n must be non-negative")
    while True:
        keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
        if n < 2:
            return order
        ordered = keys[order]
        if not np.any(ordered[1:] == ordered[:-1]):
            return order


def first_blind_label_owner(
    points: np.ndarray,
    secret: PsiSecret,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """LO's first message: ``X^a`` in LO's row order (LO matches the replies to its rows).

    Parameters
    ----------
    points : numpy.ndarray
        ``H(x)`` for LO's ids, ``(n, 32)`` uint8.
    secret : PsiSecret
        LO's secret ``a``.

    Returns
    -------
    numpy.ndarray
        ``(n, 32)`` uint8.
    """
    return blind_points(points, secret, workers=workers, executor=executor)


def first_blind_passive(
    points: np.ndarray,
    secret: PsiSecret,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """P_k's first message: ``Y_k^{b_k}`` in a secret random order, and that order.

    The order is :func:`secure_permutation` (OS CSPRNG), so the row order of the message
    says nothing about P_k's table.

    Returns
    -------
    blinded : numpy.ndarray
        ``(n, 32)`` uint8, ``blinded[j]`` is the blinding of ``points[permutation[j]]``.
    permutation : numpy.ndarray
        int64, kept secret by P_k (see :func:`local_rows_from_positions`).
    """
    arr = _as_points(points, "first_blind_passive")
    permutation = secure_permutation(arr.shape[0])
    blinded = blind_points(arr[permutation], secret, workers=workers, executor=executor)
    return blinded, permutation


def second_blind(
    blinded_from_peer: np.ndarray,
    secret: PsiSecret,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """Blind the peer's blinded points again, in the order received.

    P_k computes ``X^{a b_k}`` from LO's ``X^a``; LO computes ``Y_k^{b_k a}``.
    """
    return blind_points(blinded_from_peer, secret, workers=workers, executor=executor)


def check_received_points(points: object, *, max_set_size: int, party: str) -> np.ndarray:
    """Validate a set of (blinded) points received from ``party``.

    Checks shape ``(n, 32)``, dtype uint8, ``n <= max_set_size`` and that no point has the
    top bit set (hashed and blinded points never do).

    Returns
    -------
    numpy.ndarray
        The points, C-contiguous.

    Raises
    ------
    DataError
        Wrong shape, dtype or encoding.
    PolicyViolation
        Rule ``"max_set_size"``.
    """
    arr = _as_points(points, f"points from party '{party}'")
    check_set_size(arr.shape[0], max_set_size, party)
    bad = np.flatnonzero(arr[:, POINT_BYTES - 1] & 0x80)
    if bad.size:
        raise DataError(
            f"points from party '{party}': {bad.size} points are not canonical X25519 "
            f"u-coordinates (first rows: {', '.join(str(int(r) + 1) for r in bad[:5])})"
        )
    return arr


@dataclass(frozen=True)
class JointAlignment:
    """LO's matching result: the joint rows in the common order.

    Attributes
    ----------
    label_owner_rows : numpy.ndarray
        int64, LO's row index of joint row ``j``.
    passive_positions : dict of str to numpy.ndarray
        ``passive_positions[k][j]`` (int64) is the position, in P_k's shuffled ``Y_k``, of
        joint row ``j``: LO sends it to P_k.
    """

    label_owner_rows: np.ndarray
    passive_positions: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.label_owner_rows.shape[0])


def _duplicate_error(party: str, count: int) -> DataError:
    return DataError(
        f"the blinded ids exchanged with party '{party}' contain {count} duplicates: that "
        "party's ids were not unique or its payload is malformed"
    )


def find_points(needles: np.ndarray, haystack: np.ndarray, party: str) -> np.ndarray:
    """Position of each needle row in haystack (exact 32-byte match), -1 if absent.

    Fast path: sort the haystack by its first 8 bytes (uniformly random for blinded points)
    and binary-search the needles; when those 64-bit keys are unique, a needle can only
    equal the one haystack row with its key, which is then compared in full. If two
    haystack rows share a 64-bit key (probability about n^2 / 2^65), fall back to an exact
    sort on all 32 bytes.
    """
    if haystack.shape[0] == 0:
        return np.full(needles.shape[0], -1, dtype=np.int64)
    hay64 = haystack.view(np.uint64)
    hay_keys = hay64[:, 0]
    order = np.argsort(hay_keys)
    sorted_keys = hay_keys[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        return _find_points_exact(needles, haystack, party)
    need64 = needles.view(np.uint64)
    keys = need64[:, 0]
    idx = np.searchsorted(sorted_keys, keys)
    np.minimum(idx, sorted_keys.shape[0] - 1, out=idx)
    candidates = order[idx]
    hit = sorted_keys[idx] == keys
    hit_rows = np.flatnonzero(hit)
    equal = np.all(hay64[candidates[hit_rows]] == need64[hit_rows], axis=1)
    hit[hit_rows[~equal]] = False
    positions = np.where(hit, candidates, -1).astype(np.int64, copy=False)
    _check_matched_once(positions[hit], party)
    return positions


def _find_points_exact(needles: np.ndarray, haystack: np.ndarray, party: str) -> np.ndarray:
    """Like :func:`find_points`, sorting on all 32 bytes (slower; used on 64-bit ties)."""
    hay = haystack.view(_VOID32).ravel()
    order = np.argsort(hay, kind="stable")
    sorted_hay = hay[order]
    dup = int(np.count_nonzero(sorted_hay[1:] == sorted_hay[:-1]))
    if dup:
        raise _duplicate_error(party, dup)
    keys = needles.view(_VOID32).ravel()
    idx = np.searchsorted(sorted_hay, keys)
    np.minimum(idx, sorted_hay.shape[0] - 1, out=idx)
    hit = sorted_hay[idx] == keys
    positions = np.where(hit, order[idx], -1).astype(np.int64, copy=False)
    _check_matched_once(positions[hit], party)
    return positions


def _check_matched_once(matched: np.ndarray, party: str) -> None:
    """Two needle rows matching one haystack row means duplicated needles."""
    if matched.size and np.bincount(matched).max() > 1:
        raise _duplicate_error(party, int(matched.size - np.unique(matched).size))


def match_joint_rows(
    lo_double: Mapping[str, np.ndarray],
    passive_double: Mapping[str, np.ndarray],
    *,
    min_intersection: int,
) -> JointAlignment:
    """Find LO's rows held by every passive party and put them in a random common order.

    Parameters
    ----------
    lo_double : mapping of str to numpy.ndarray
        ``lo_double[k] = X^{a b_k}`` as returned by P_k, in LO's row order.
    passive_double : mapping of str to numpy.ndarray
        ``passive_double[k] = Y_k^{b_k a}``, in P_k's shuffled order.
    min_intersection : int
        Minimum number of joint rows (the agreement's term). ``0`` accepts an empty result.

    Returns
    -------
    JointAlignment

    Raises
    ------
    PolicyViolation
        Rule ``"min_intersection"``: too few joint rows. Checked before anything else is
        computed from the match; the message says only that the minimum is not reached.
    DataError
        Inconsistent inputs, or duplicated blinded ids from a party.
    """
    if not lo_double or set(lo_double) != set(passive_double):
        raise DataError(
            "match_joint_rows: need the same, non-empty set of passive parties on both sides"
        )
    n_lo: int | None = None
    present: np.ndarray | None = None
    positions: dict[str, np.ndarray] = {}
    for party in sorted(lo_double):
        lo = _as_points(lo_double[party], f"doubly blinded label-owner ids from '{party}'")
        peer = _as_points(passive_double[party], f"doubly blinded ids of party '{party}'")
        if n_lo is None:
            n_lo = lo.shape[0]
        elif lo.shape[0] != n_lo:
            raise DataError(
                f"party '{party}' returned {lo.shape[0]} doubly blinded label-owner ids, "
                f"expected {n_lo}"
            )
        pos = find_points(lo, peer, party)
        positions[party] = pos
        found = pos >= 0
        present = found if present is None else present & found
    assert present is not None
    joint = np.flatnonzero(present)
    check_min_intersection(int(joint.size), min_intersection)
    rows = joint[secure_permutation(joint.size)].astype(np.int64, copy=False)
    return JointAlignment(
        label_owner_rows=rows,
        passive_positions={party: pos[rows] for party, pos in positions.items()},
    )


def local_rows_from_positions(positions: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """P_k: turn positions in its shuffled ``Y_k`` into its own row indices.

    Parameters
    ----------
    positions : numpy.ndarray
        int64 positions from :class:`JointAlignment` (common order).
    permutation : numpy.ndarray
        The secret permutation from :func:`first_blind_passive`.

    Returns
    -------
    numpy.ndarray
        int64 local row indices, in the common order.

    Raises
    ------
    DataError
        Out-of-range or repeated positions.
    """
    pos = np.asarray(positions)
    perm = np.asarray(permutation)
    if pos.ndim != 1 or perm.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise DataError("joint positions must be a 1-D integer array")
    if pos.size:
        if int(pos.min()) < 0 or int(pos.max()) >= perm.size:
            raise DataError(
                f"joint positions out of range: {perm.size} ids were sent, a position "
                "outside 0..n-1 was received"
            )
        seen = np.zeros(perm.size, dtype=bool)
        seen[pos] = True
        if int(np.count_nonzero(seen)) != pos.size:
            raise DataError("joint positions repeat a row: the alignment is malformed")
    return perm[pos].astype(np.int64, copy=False)


# --------------------------------------------------------------------------- codecs


def points_to_bytes(points: np.ndarray) -> bytes:
    """Encode ``(n, 32)`` uint8 points as ``32 * n`` bytes, row after row."""
    return _as_points(points, "points_to_bytes").tobytes()


def points_from_bytes(data: bytes, *, party: str | None = None) -> np.ndarray:
    """Decode :func:`points_to_bytes` output (a read-only array over ``data``).

    Raises
    ------
    DataError
        The length is not a multiple of 32.
    """
    who = f" from party '{party}'" if party else ""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DataError(f"points payload{who} must be bytes")
    if len(data) % POINT_BYTES:
        raise DataError(
            f"points payload{who} has {len(data)} bytes, not a multiple of {POINT_BYTES}: "
            "truncated or malformed"
        )
    return np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, POINT_BYTES)


def positions_to_bytes(positions: np.ndarray) -> bytes:
    """Encode row positions as int64 little-endian."""
    pos = np.asarray(positions)
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise DataError("positions must be a 1-D integer array")
    return pos.astype(_POSITION_DTYPE, copy=False).tobytes()


def positions_from_bytes(data: bytes, *, party: str | None = None) -> np.ndarray:
    """Decode :func:`positions_to_bytes` output (int64, native byte order).

    Raises
    ------
    DataError
        The length is not a multiple of 8, or a position is negative.
    """
    who = f" from party '{party}'" if party else ""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DataError(f"positions payload{who} must be bytes")
    if len(data) % 8:
        raise DataError(
            f"positions payload{who} has {len(data)} bytes, not a multiple of 8: "
            "truncated or malformed"
        )
    pos = np.frombuffer(bytes(data), dtype=_POSITION_DTYPE).astype(np.int64)
    if pos.size and int(pos.min()) < 0:
        raise DataError(f"positions payload{who} holds a negative position")
    return pos


# --------------------------------------------------------------------------- in-process run


def check_party_sets(
    party_ids: Mapping[str, Sequence[str]], label_owner: str, max_set_size: int | None
) -> list[str]:
    """The input checks of an in-process run: the label owner and at least one passive
    party, every set unique and within ``max_set_size``; returns the passive parties."""
    if label_owner not in party_ids:
        raise ConfigurationError(f"label owner '{label_owner}' is not one of the parties")
    passive = sorted(p for p in party_ids if p != label_owner)
    if not passive:
        raise ConfigurationError("a set protocol needs at least one passive party")
    for party, ids in party_ids.items():
        if max_set_size is not None:
            check_set_size(len(ids), max_set_size, party)
        check_unique(ids, party)
    return passive


def align_in_process(
    party_ids: Mapping[str, Sequence[str]],
    label_owner: str,
    *,
    domain: bytes,
    min_intersection: int = 1,
    workers: int | None = None,
    max_set_size: int | None = None,
    executor: Executor | None = None,
) -> dict[str, np.ndarray]:
    """Run the whole alignment protocol in this process (tests, benchmark, local demo).

    Every step of the relayed protocol runs, including the byte codecs of every payload;
    only the relay and the envelopes are left out. Steps that do not depend on each other
    (the parties' first blindings, then their second blindings) run concurrently on one
    process pool, so one party's hashing overlaps another's blinding.

    Parameters
    ----------
    party_ids : mapping of str to sequence of str
        Each party's normalized ids, in its row order.
    label_owner : str
        The party that matches (a key of ``party_ids``); all others are passive.
    domain : bytes
        From :func:`psi_domain`.
    min_intersection : int, optional
        Minimum joint rows; ``0`` allows an empty result.
    workers : int, optional
        Blinding processes; default ``os.cpu_count()``.
    max_set_size : int, optional
        The agreement's maximum set size, if any.
    executor : concurrent.futures.Executor, optional
        A process pool to use (e.g. a long-lived :func:`blinding_pool`); by default one is
        opened for the run when the sets are large enough.

    Returns
    -------
    dict of str to numpy.ndarray
        Each party's local row indices (int64) of the joint rows, in the common order:
        row ``result[p][j]`` of every party ``p`` holds the same id.

    Raises
    ------
    DataError
        Empty or duplicated ids (names the party).
    PolicyViolation
        ``"max_set_size"`` or ``"min_intersection"``.
    """
    passive = check_party_sets(party_ids, label_owner, max_set_size)
    limit = max_set_size or max(len(ids) for ids in party_ids.values())
    total = sum(len(ids) for ids in party_ids.values())
    use_pool = executor is None and worker_count(workers) > 1 and total >= POOL_MIN_POINTS
    secret_lo = PsiSecret.generate()
    secret = {party: PsiSecret.generate() for party in passive}

    with maybe_pool(workers, use_pool) as own_pool:
        pool = executor if executor is not None else own_pool
        concurrent = pool is not None

        # Round 1. LO: hash, blind in row order. P_k: hash, blind in a secret order.
        def lo_first() -> bytes:
            points = hash_ids_to_points(
                party_ids[label_owner], domain, workers=workers, executor=pool
            )
            return points_to_bytes(
                first_blind_label_owner(points, secret_lo, workers=workers, executor=pool)
            )

        def passive_first(party: str) -> tuple[bytes, np.ndarray]:
            points = hash_ids_to_points(party_ids[party], domain, workers=workers, executor=pool)
            blinded, permutation = first_blind_passive(
                points, secret[party], workers=workers, executor=pool
            )
            return points_to_bytes(blinded), permutation

        round1: dict[tuple[str, str], Callable[[], object]] = {("lo", label_owner): lo_first}
        for party in passive:
            round1[("passive", party)] = partial(passive_first, party)
        first = run_concurrently(round1, concurrent)
        lo_payload = first.pop(("lo", label_owner))
        assert isinstance(lo_payload, bytes)

        # Round 2. P_k blinds X^a again (same order); LO blinds Y_k^{b_k} again.
        def passive_second(party: str) -> bytes:
            received = check_received_points(
                points_from_bytes(lo_payload, party=label_owner),
                max_set_size=limit,
                party=label_owner,
            )
            return points_to_bytes(
                second_blind(received, secret[party], workers=workers, executor=pool)
            )

        def lo_second(party: str, payload: bytes) -> np.ndarray:
            received = check_received_points(
                points_from_bytes(payload, party=party), max_set_size=limit, party=party
            )
            return second_blind(received, secret_lo, workers=workers, executor=pool)

        round2: dict[tuple[str, str], Callable[[], object]] = {}
        permutations: dict[str, np.ndarray] = {}
        for party in passive:
            payload, permutations[party] = first.pop(("passive", party))  # type: ignore[misc]
            round2[("passive", party)] = partial(passive_second, party)
            round2[("lo", party)] = partial(lo_second, party, payload)
        second = run_concurrently(round2, concurrent)
        del first, round1, round2

    # LO: matching, gate, common order; each P_k receives its positions.
    lo_double = {
        party: check_received_points(
            points_from_bytes(second[("passive", party)], party=party),  # type: ignore[arg-type]
            max_set_size=limit,
            party=party,
        )
        for party in passive
    }
    passive_double = {party: second[("lo", party)] for party in passive}
    del second
    alignment = match_joint_rows(
        lo_double,
        passive_double,  # type: ignore[arg-type]
        min_intersection=min_intersection,
    )
    result = {label_owner: alignment.label_owner_rows}
    for party in passive:
        received = positions_from_bytes(
            positions_to_bytes(alignment.passive_positions[party]), party=label_owner
        )
        result[party] = local_rows_from_positions(received, permutations[party])
    logger.debug("aligned %d parties in-process", len(party_ids))
    return result


def run_concurrently(
    tasks: Mapping[tuple[str, str], Callable[[], object]], concurrent: bool
) -> dict[tuple[str, str], object]:
    """Run independent protocol steps, in threads when they share a process pool.

    The threads only feed the pool and do the GIL-bound hashing and codecs, so one party's
    Python work overlaps another party's blinding. The first error is raised once every
    step has stopped.
    """
    if not concurrent or len(tasks) < 2:
        return {key: task() for key, task in tasks.items()}
    with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="vfm-psi") as threads:
        futures = {key: threads.submit(task) for key, task in tasks.items()}
    return {key: future.result() for key, future in futures.items()}


@contextmanager
def maybe_pool(workers: int | None, enabled: bool) -> Iterator[ProcessPoolExecutor | None]:
    if not enabled:
        yield None
        return
    with blinding_pool(workers) as pool:
        yield pool

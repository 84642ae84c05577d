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

The group operations (hashing to the curve, the secret, blinding in a process pool) live in
:mod:`vfm_flower.psi_group`; this module re-exports them.

Nothing here logs or puts in an exception an id, a hash of an id, a blinded point or a
secret; messages name parties, counts and row numbers only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from vfm_flower.errors import ConfigurationError, DataError
from vfm_flower.normalize import check_unique
from vfm_flower.policy import check_min_intersection, check_set_size
from vfm_flower.psi_group import (
    DEFAULT_CHUNK_SIZE,
    POINT_BYTES,
    POOL_MIN_POINTS,
    PsiSecret,
    _as_points,
    blind_points,
    blinding_pool,
    hash_ids_to_points,
    psi_domain,
    worker_count,
)

logger = logging.getLogger(__name__)

_VOID32 = np.dtype((np.void, POINT_BYTES))
_POSITION_DTYPE = np.dtype("<i8")

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "POINT_BYTES",
    "POOL_MIN_POINTS",
    "JointAlignment",
    "PsiSecret",
    "align_in_process",
    "blind_points",
    "blinding_pool",
    "check_party_sets",
    "check_received_points",
    "check_set_size",
    "find_points",
    "first_blind_label_owner",
    "first_blind_passive",
    "hash_ids_to_points",
    "local_rows_from_positions",
    "match_joint_rows",
    "maybe_pool",
    "points_from_bytes",
    "points_to_bytes",
    "positions_from_bytes",
    "positions_to_bytes",
    "psi_domain",
    "run_concurrently",
    "second_blind",
    "secure_permutation",
    "worker_count",
]

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
    label_owner_rows: int | None = None,
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
    label_owner_rows : int, optional
        The LO's own number of ids: every passive party must return exactly that many.

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
    n_lo: int | None = label_owner_rows
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

"""Overlap analysis: how many customers the parties share, and nobody learns which.

The protocol core (free of Flower) of the ``overlap`` job: a private set intersection
*cardinality* (PSI-CA) over X25519, with the label owner (LO) counting. It reuses the
alignment's hashing and blinding (:mod:`vfm_flower.psi`) and differs in what comes back:
the LO gets its own blinded ids back in an order it does not know, so it can count matches
but never say which of its customers matched.

Protocol (three message rounds; ``P_1`` is the first passive party of the agreement):

1. Every party normalizes and hashes its ids (domain: agreement and run, as alignment). The
   LO blinds its set with a fresh secret ``a`` and sends ``X^a`` to every passive party;
   every passive party ``P_k`` blinds its set with its own fresh ``b_k`` and sends
   ``Y_k^{b_k}``, in a secret random order, to the LO. ``P_1`` draws a 32-byte *group seed*
   (OS randomness) and seals it to the other passive parties.
2. Every ``P_k`` blinds ``X^a`` again and permutes it with the permutation the group seed
   defines (:func:`shared_permutation`: every passive party applies the same one, the LO
   does not know it), then returns ``X^{a b_k}``. The LO blinds ``Y_k^{b_k}`` again.
3. The LO matches each ``X^{a b_k}`` against ``Y_k^{b_k a}``: since every passive party
   used the same permutation, position ``j`` is the same (unknown) LO customer in every
   reply, so the LO counts, per position, which parties hold that customer
   (:func:`count_overlaps`): the overlap with each party and across all parties. The
   minimum-intersection gate and the minimum cohort then decide what is released
   (:func:`release_overlap`).

Who learns what (semi-honest parties; decisional Diffie-Hellman on Curve25519, hash as a
random oracle):

- the LO: every count (per position: which passive parties hold that anonymous customer),
  never which of its rows they are, nor anything about ids it does not hold;
- a passive party: every set size (the signed hellos say them anyway), nothing else; the
  group seed only orders what it sends;
- the server: envelopes and their sizes.

Collusions: the LO and any passive party together know the permutation, so the LO learns
which of its own customers each passive party holds: what alignment tells the LO anyway. No
collusion of the LO with some passive parties unblinds another party's ids (each keeps its
own ``b_k``); passive parties together learn nothing more about the LO's set.

Overlap per segment of one party's column (optional): the holder splits its blinded set
into one *partition* per value of the column, each padded with dummy points to its whole
set size (:func:`partition_points`), so the partition sizes say nothing about the column's
distribution. Dummies are hashes of fresh random ids, blinded like the real ones: they
match nothing and look like everything else. The LO then counts per partition. Its cost:
the holder's blinding and the LO's (or, for the LO's own column, every passive party's)
grow with the number of values; the job bounds it (``max-segments``).

Nothing here logs or puts in an exception an id, a point or a secret.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vfm_flower import psi
from vfm_flower.errors import ConfigurationError, DataError
from vfm_flower.policy import released_count, withhold_small_cells

logger = logging.getLogger(__name__)

__all__ = [
    "GROUP_SEED_BYTES",
    "MISSING_VALUE",
    "OverlapCounts",
    "OverlapRelease",
    "count_overlaps",
    "dummy_points",
    "new_group_seed",
    "overlap_in_process",
    "partition_points",
    "permute_returned_sets",
    "release_overlap",
    "segment_codes",
    "shared_permutation",
]

GROUP_SEED_BYTES = 32
"""Size of the passive parties' group seed (256 bits, OS randomness)."""

MISSING_VALUE = "(missing)"
"""The segment a row with an empty value falls in."""

_PERMUTATION_INFO = b"vfm-flower/v1/overlap-permutation"


def new_group_seed() -> bytes:
    """The first passive party's group seed for one run (OS CSPRNG)."""
    return secrets.token_bytes(GROUP_SEED_BYTES)


def shared_permutation(seed: bytes, n: int, label: str) -> np.ndarray:
    """The permutation of ``range(n)`` every passive party applies to the LO's set.

    Sort keys are an AES-256-CTR keystream (8 bytes per index) under a key HKDF-SHA256
    derives from the group seed and ``label`` (one permutation per partition): a
    pseudorandom permutation to anyone without the seed. Ties (probability about
    ``n^2 / 2^65``) are broken by index, identically at every party.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(n,)``: the returned set's position ``j`` holds the received point
        ``permutation[j]``.
    """
    if not isinstance(seed, bytes) or len(seed) != GROUP_SEED_BYTES:
        raise ConfigurationError(f"the group seed must be {GROUP_SEED_BYTES} bytes")
    if n < 0:
        raise ValueError("n must be non-negative")
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_PERMUTATION_INFO + label.encode()
    ).derive(seed)
    stream = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    keys = np.frombuffer(stream.update(b"\0" * (8 * n)), dtype="<u8")
    return np.argsort(keys, kind="stable").astype(np.int64, copy=False)


def segment_codes(
    values: Sequence[Any], *, max_values: int, party: str, column: str
) -> tuple[list[str], np.ndarray]:
    """The distinct values of a segment column (numbers in numeric order, then text, empty
    ones last as ``(missing)``) and the code of every row.

    Raises
    ------
    DataError
        More distinct values than ``max_values`` (names the column and the job parameter).
    """
    text = np.array([_text_of(v) for v in values], dtype=object)
    levels, codes = np.unique(text.astype(str), return_inverse=True)
    order = sorted(range(len(levels)), key=lambda i: _value_order(str(levels[i])))
    rank = np.empty(len(levels), dtype=np.int64)
    rank[order] = np.arange(len(levels))
    levels, codes = levels[order], rank[codes]
    if len(levels) > max_values:
        raise DataError(
            f"party '{party}': column '{column}' has {len(levels)} distinct values, more than "
            f"the {max_values} the job allows (parameter max-segments): choose a coarser "
            "column or raise max-segments within the agreement"
        )
    return [str(v) for v in levels], codes.astype(np.int64)


def _value_order(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (``2`` before ``10``), then text, ``(missing)`` last."""
    if value == MISSING_VALUE:
        return (2, 0.0, value)
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _text_of(value: Any) -> str:
    """A cell as its segment value: ``(missing)`` if empty, ``3`` for a float ``3.0`` (a
    numeric column with gaps reads as floats)."""
    if _is_missing(value):
        return MISSING_VALUE
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and not value.strip()


def dummy_points(count: int, domain: bytes, *, executor: Executor | None = None) -> np.ndarray:
    """``count`` points no party's id maps to (w.h.p.): hashes of fresh random 256-bit ids.

    Blinded with the real points, they are indistinguishable from them (random oracle) and
    match nothing: they pad partitions to a size that reveals nothing.
    """
    ids = [secrets.token_hex(32) for _ in range(count)]
    return psi.hash_ids_to_points(ids, domain + b"/overlap-dummy", executor=executor)


def partition_points(
    points: np.ndarray,
    codes: np.ndarray,
    n_values: int,
    domain: bytes,
    *,
    executor: Executor | None = None,
) -> np.ndarray:
    """Split hashed points by segment, each partition padded to ``len(points)`` and shuffled.

    Parameters
    ----------
    points : numpy.ndarray
        ``(n, 32)``: the holder's hashed ids.
    codes : numpy.ndarray
        The segment code of each point, in ``[0, n_values)``.

    Returns
    -------
    numpy.ndarray
        ``(n_values, n, 32)``: partition ``v`` holds the points with code ``v`` and dummies,
        in a random order (OS randomness). Still to be blinded.
    """
    n = points.shape[0]
    out = np.empty((n_values, n, psi.POINT_BYTES), dtype=np.uint8)
    counts = np.bincount(codes, minlength=n_values)
    dummies = dummy_points(int(n_values * n - n), domain, executor=executor)
    used = 0
    for v in range(n_values):
        real = points[codes == v]
        pad = n - int(counts[v])
        block = np.concatenate([real, dummies[used : used + pad]])
        used += pad
        out[v] = block[psi.secure_permutation(n)]
    return out


def blind_sets(
    sets: np.ndarray, secret: psi.PsiSecret, *, executor: Executor | None = None
) -> np.ndarray:
    """Blind every point of a ``(partitions, n, 32)`` array (same shape back)."""
    flat = psi.blind_points(sets.reshape(-1, psi.POINT_BYTES), secret, executor=executor)
    return flat.reshape(sets.shape)


def permute_returned_sets(
    lo_sets: np.ndarray,
    secret: psi.PsiSecret,
    seed: bytes,
    *,
    executor: Executor | None = None,
) -> np.ndarray:
    """A passive party's reply: the LO's ``(partitions, n, 32)`` set blinded again, each
    partition in the group seed's order (:func:`shared_permutation`)."""
    blinded = blind_sets(lo_sets, secret, executor=executor)
    n = lo_sets.shape[1]
    for p in range(lo_sets.shape[0]):
        blinded[p] = blinded[p][shared_permutation(seed, n, f"partition {p}")]
    return blinded


@dataclass(frozen=True)
class OverlapCounts:
    """What the LO counted (exact; released only through :func:`release_overlap`).

    Attributes
    ----------
    with_label_owner : dict of str to int
        Per passive party: the customers it shares with the LO.
    all_parties : int
        The customers every party holds.
    segments : tuple of int or None
        Per partition of the segment column's holder: its customers held by every party.
    """

    with_label_owner: Mapping[str, int]
    all_parties: int
    segments: tuple[int, ...] | None = None


def count_overlaps(
    returned: Mapping[str, np.ndarray],
    passive_sets: Mapping[str, np.ndarray],
    *,
    segment_holder: str | None = None,
    label_owner: str = "",
) -> OverlapCounts:
    """The LO's count: which passive parties hold each (anonymous) LO customer.

    Parameters
    ----------
    returned : mapping of str to numpy.ndarray
        Per passive party, its reply ``X^{a b_k}``: ``(partitions, n, 32)``, every party's
        in the same (group seed's) order.
    passive_sets : mapping of str to numpy.ndarray
        Per passive party, ``Y_k^{b_k a}``: ``(partitions, m_k, 32)``.
    segment_holder : str, optional
        The party whose column the partitions follow: the LO (``label_owner``; then every
        ``returned`` set has one partition per value) or a passive party (then its
        ``passive_sets`` entry has).

    Raises
    ------
    DataError
        Replies of different shapes, or duplicated points from a party.
    """
    if not returned or set(returned) != set(passive_sets):
        raise DataError("count_overlaps: need the same, non-empty set of passive parties")
    shape: tuple[int, ...] | None = None
    present: np.ndarray | None = None
    partition_of: dict[str, np.ndarray] = {}
    for party in sorted(returned):
        mine = np.asarray(returned[party])
        theirs = np.asarray(passive_sets[party])
        if mine.ndim != 3 or theirs.ndim != 3:
            raise DataError(f"count_overlaps: the sets of party '{party}' are not partitioned")
        if shape is None:
            shape = mine.shape
        elif mine.shape != shape:
            raise DataError(
                f"party '{party}' returned {mine.shape[0]} x {mine.shape[1]} label-owner "
                f"points, expected {shape[0]} x {shape[1]}"
            )
        size = theirs.shape[1]
        pos = psi.find_points(
            np.ascontiguousarray(mine.reshape(-1, psi.POINT_BYTES)),
            np.ascontiguousarray(theirs.reshape(-1, psi.POINT_BYTES)),
            party,
        ).reshape(mine.shape[:2])
        partition_of[party] = np.where(pos >= 0, pos // max(size, 1), -1)
        found = pos >= 0
        present = found if present is None else present & found
    assert present is not None
    with_lo = {p: int(np.count_nonzero(part >= 0)) for p, part in partition_of.items()}
    segments: tuple[int, ...] | None = None
    if segment_holder is not None and segment_holder == label_owner:
        segments = tuple(int(n) for n in present.sum(axis=1))
    elif segment_holder is not None:
        if segment_holder not in passive_sets:
            raise DataError(f"count_overlaps: '{segment_holder}' is not a passive party")
        values = passive_sets[segment_holder].shape[0]
        codes = partition_of[segment_holder][present]
        segments = tuple(int(n) for n in np.bincount(codes, minlength=values))
    return OverlapCounts(with_lo, int(np.count_nonzero(present)), segments)


@dataclass(frozen=True)
class OverlapRelease:
    """What the overlap job releases, after the gates: ``None`` marks a withheld figure.

    Attributes
    ----------
    set_sizes : dict of str to int
        Every party's id count (from its signed hello).
    with_label_owner : dict of str to int or None
        Per passive party, its overlap with the LO, or ``None`` below the minimum
        intersection.
    all_parties : int or None
        The customers every party holds, or ``None`` below the minimum intersection.
    verdict : str
        ``"ok"`` (a model can be trained on the joint customers) or ``"below-minimum"``.
    segments : list of dict or None
        Per value of the segment column: ``segment``, ``suppressed`` and, unless suppressed,
        ``customers`` (held by every party) and ``share`` (of ``all_parties``); suppressed
        ones carry ``reason``.
    """

    label_owner: str
    set_sizes: Mapping[str, int]
    with_label_owner: Mapping[str, int | None]
    all_parties: int | None
    min_intersection: int
    min_cohort: int
    verdict: str
    segment_party: str | None = None
    segment_column: str | None = None
    segments: list[dict[str, Any]] | None = field(default=None)

    def match_rates(self) -> dict[str, float | None]:
        """Per passive party: its overlap with the LO as a share of the LO's customers."""
        n_lo = self.set_sizes.get(self.label_owner, 0)
        return {
            p: (None if n is None or not n_lo else n / n_lo)
            for p, n in self.with_label_owner.items()
        }

    def public_facts(self) -> dict[str, Any]:
        """The figures the LO publishes to the server: counts and verdict, never a segment
        value (those go to the result owner only)."""
        facts: dict[str, Any] = {
            "overlap": {p: n for p, n in sorted(self.with_label_owner.items())},
            "overlap_verdict": self.verdict,
        }
        if self.all_parties is not None:
            facts["joint_rows"] = self.all_parties
        if self.segments is not None:
            facts["segment_cells"] = sum(1 for s in self.segments if not s["suppressed"])
        return facts

    def to_dict(self) -> dict[str, Any]:
        rates = self.match_rates()
        n_lo = self.set_sizes.get(self.label_owner, 0)
        return {
            "label_owner": self.label_owner,
            "set_sizes": dict(sorted(self.set_sizes.items())),
            "with_label_owner": {
                p: {"customers": n, "match_rate": rates[p]}
                for p, n in sorted(self.with_label_owner.items())
            },
            "all_parties": {
                "customers": self.all_parties,
                "match_rate": (
                    None if self.all_parties is None or not n_lo else self.all_parties / n_lo
                ),
            },
            "min_intersection": self.min_intersection,
            "min_cohort": self.min_cohort,
            "verdict": self.verdict,
            "segment": (
                None
                if self.segments is None
                else {
                    "party": self.segment_party,
                    "column": self.segment_column,
                    "cells": self.segments,
                }
            ),
        }


def release_overlap(
    counts: OverlapCounts,
    *,
    label_owner: str,
    set_sizes: Mapping[str, int],
    min_intersection: int,
    min_cohort: int,
    segment_values: Sequence[str] | None = None,
    segment_party: str | None = None,
    segment_column: str | None = None,
) -> OverlapRelease:
    """Apply the gates to the LO's counts: the minimum-intersection gate to every overlap
    (:func:`vfm_flower.policy.released_count`), the minimum cohort with complementary
    suppression to the segment cells (:func:`vfm_flower.policy.withhold_small_cells`); no
    segment cell is released when the overlap of all parties is withheld."""
    with_lo = {p: released_count(n, min_intersection) for p, n in counts.with_label_owner.items()}
    total = released_count(counts.all_parties, min_intersection)
    verdict = "ok" if total is not None else "below-minimum"
    cells: list[dict[str, Any]] | None = None
    if counts.segments is not None:
        values = list(segment_values or [])
        if len(values) != len(counts.segments):
            raise DataError("release_overlap: one segment value per counted partition expected")
        cells = []
        if total is None:
            primary, secondary = set(range(len(values))), set()
            why = "the overlap of all parties is below the minimum intersection"
        else:
            primary, secondary = withhold_small_cells(list(counts.segments), min_cohort)
            why = f"fewer than {min_cohort} customers (minimum cohort)"
        for i, value in enumerate(values):
            n = counts.segments[i]
            if i in primary or i in secondary:
                cells.append(
                    {
                        "segment": value,
                        "suppressed": True,
                        "reason": why
                        if i in primary
                        else "withheld with the small segment(s): the total would reveal them",
                    }
                )
            else:
                assert total is not None
                cells.append(
                    {
                        "segment": value,
                        "suppressed": False,
                        "customers": int(n),
                        "share": n / total if total else 0.0,
                    }
                )
    return OverlapRelease(
        label_owner=label_owner,
        set_sizes=dict(set_sizes),
        with_label_owner=with_lo,
        all_parties=total,
        min_intersection=min_intersection,
        min_cohort=min_cohort,
        verdict=verdict,
        segment_party=segment_party,
        segment_column=segment_column,
        segments=cells,
    )


def overlap_in_process(
    party_ids: Mapping[str, Sequence[str]],
    label_owner: str,
    *,
    domain: bytes,
    segment: tuple[str, Sequence[Any]] | None = None,
    max_segments: int = 20,
    workers: int | None = None,
    max_set_size: int | None = None,
    executor: Executor | None = None,
) -> tuple[OverlapCounts, list[str] | None]:
    """Run the whole overlap protocol in this process (tests, benchmark).

    Every computation of the relayed protocol runs with the payload codecs; only the relay
    and the envelopes are left out. Independent steps of one round run concurrently on one
    process pool, as in :func:`vfm_flower.psi.align_in_process`.

    Parameters
    ----------
    party_ids : mapping of str to sequence of str
        Each party's normalized ids.
    segment : (party, values), optional
        The segment column: its holder and one value per row of that party.

    Returns
    -------
    (counts, segment_values)
    """
    passive = psi.check_party_sets(party_ids, label_owner, max_set_size)
    holder = segment[0] if segment is not None else None
    values: list[str] | None = None
    codes: np.ndarray | None = None
    if segment is not None:
        values, codes = segment_codes(
            segment[1], max_values=max_segments, party=segment[0], column="segment"
        )
    secrets_of = {p: psi.PsiSecret.generate() for p in party_ids}
    seed = new_group_seed()
    total = sum(len(ids) for ids in party_ids.values())
    use_pool = executor is None and psi.worker_count(workers) > 1 and total >= psi.POOL_MIN_POINTS

    def first(party: str) -> bytes:
        points = psi.hash_ids_to_points(party_ids[party], domain, executor=pool)
        if party == holder:
            assert codes is not None and values is not None
            sets = partition_points(points, codes, len(values), domain, executor=pool)
        else:
            sets = points[None, :, :]
            if party != label_owner:
                sets = sets[:, psi.secure_permutation(points.shape[0])]
        return _to_bytes(blind_sets(sets, secrets_of[party], executor=pool))

    with psi.maybe_pool(workers, use_pool) as own_pool:
        pool = executor if executor is not None else own_pool
        concurrent = pool is not None
        sent = psi.run_concurrently(
            {("first", p): partial(first, p) for p in party_ids}, concurrent
        )
        lo_sets = _from_bytes(sent[("first", label_owner)], len(party_ids[label_owner]))
        tasks: dict[tuple[str, str], Callable[[], object]] = {}
        for p in passive:
            tasks[("return", p)] = partial(
                lambda p: _to_bytes(
                    permute_returned_sets(lo_sets, secrets_of[p], seed, executor=pool)
                ),
                p,
            )
            tasks[("lo", p)] = partial(
                lambda p: blind_sets(
                    _from_bytes(sent[("first", p)], len(party_ids[p])),
                    secrets_of[label_owner],
                    executor=pool,
                ),
                p,
            )
        second = psi.run_concurrently(tasks, concurrent)
    counts = count_overlaps(
        {p: _from_bytes(second[("return", p)], len(party_ids[label_owner])) for p in passive},
        {p: second[("lo", p)] for p in passive},  # type: ignore[misc]
        segment_holder=holder,
        label_owner=label_owner,
    )
    return counts, values


def _to_bytes(sets: np.ndarray) -> bytes:
    return np.ascontiguousarray(sets, dtype=np.uint8).tobytes()


def _from_bytes(data: bytes, n: int) -> np.ndarray:
    """A ``(partitions, n, 32)`` array from the bytes of ``n``-point partitions."""
    per = n * psi.POINT_BYTES
    if per == 0 or len(data) % per:
        raise DataError(f"overlap payload of {len(data)} bytes is not partitions of {n} points")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, n, psi.POINT_BYTES).copy()

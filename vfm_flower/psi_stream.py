"""The alignment at marketing scale: the ECDH-PSI of :mod:`vfm_flower.psi`, streamed through
files, with memory bounded by a block of ids rather than by the set.

Same protocol, same leakage, same result as :func:`vfm_flower.psi.align_in_process` (the
tests compare them): every party hashes its ids to Curve25519 and blinds them with its
secret, the label owner (LO) matches the doubly blinded sets, applies the minimum-intersection
gate, and draws the common order. What changes is where a set-sized object lives: in a file
of fixed-size records in the party's own spool directory (:class:`AlignmentSpool`, mode 0700,
removed at the end), read and written one block of ``block_ids`` rows at a time (the
files and their checks: :mod:`vfm_flower.psi_spool`).

Who holds what, per step
------------------------
:func:`stream_first_blind` (every party)
    Reads its ids block by block (an iterable of blocks: a CSV read in chunks, a generator),
    hashes and blinds each block on the process pool and appends it to a file. The LO's file
    is its message ``X^a``, in its row order. A passive party's is then put in a secret
    uniformly random order (:func:`shuffle_records`: every record goes to one of ``B``
    buckets drawn from the OS CSPRNG, then each bucket, read alone, is permuted by
    :func:`vfm_flower.psi.secure_permutation`; a uniform bucket and a uniform order inside
    the buckets are a uniform permutation); the permutation (position -> own row) stays in the
    spool. Uniqueness is checked on the 64-bit prefixes of the blinded points (sorted in a
    ``8 n``-byte array; on a prefix tie the records are compared in full), so a duplicated id
    is refused with its row numbers before anything is sent.
:func:`stream_second_blind` (every party)
    Blinds the peer's file again, block by block, checking every record's encoding and the
    set size against the agreement.
:func:`match_streamed` (LO)
    Splits the doubly blinded sets into ``2**bits`` buckets by the first bits of each point
    (pseudorandom, so about ``n / 2**bits`` records each, and the split tells nothing that the
    points do not), matches bucket by bucket with :func:`vfm_flower.psi.find_points`, keeps
    one position per LO row and passive party (``8 n`` bytes, spooled per party), then the
    gate and the common order, as :func:`vfm_flower.psi.match_joint_rows`.

Memory per party: a block of ids and its points, ``8 n`` bytes of prefixes or positions
(80 MB at 10 million), and one matching bucket (about 2**20 records of 40 bytes). Disk: a few
times ``32 n`` bytes in the spool. Time: the same X25519 work as the in-memory protocol (two
operations per id per party), plus sequential file I/O.

Nothing here logs or puts in an exception an id, a point or a secret; progress names a stage
and counts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfm_flower.errors import DataError
from vfm_flower.policy import check_min_intersection, check_set_size
from vfm_flower.psi import (
    JointAlignment,
    find_points,
    local_rows_from_positions,
    secure_permutation,
)
from vfm_flower.psi_group import (
    PsiSecret,
    blind_points,
    blinding_pool,
    hash_ids_to_points,
)
from vfm_flower.psi_spool import (
    _RECORD,
    _ROW,
    AlignmentSpool,
    Progress,
    _check_canonical,
    _check_unique_records,
    _no_progress,
    _read_blocks,
    _scatter_records,
    record_count,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_IDS",
    "AlignmentSpool",
    "Progress",
    "StreamedSet",
    "align_streaming",
    "match_streamed",
    "record_count",
    "shuffle_records",
    "stream_first_blind",
    "stream_second_blind",
]

#: Ids per block: 2**18 ids are 8 MiB of points, large enough that the pool's tail per block
#: costs about 1% (64 tasks of 4,096 points), small enough to keep a party far below 2 GB.
DEFAULT_BLOCK_IDS = 1 << 18
#: Records per matching bucket (about): 2**20 points and their row numbers are 40 MiB.
BUCKET_RECORDS = 1 << 20


@dataclass(frozen=True)
class StreamedSet:
    """What :func:`stream_first_blind` leaves in the spool.

    Attributes
    ----------
    message : pathlib.Path
        The party's first message (records of 32 bytes): LO rows in its order, a passive
        party's in its secret order.
    rows : int
        Its number of ids.
    permutation : pathlib.Path or None
        A passive party's secret order (``.npy``, int64, position -> own row); kept by it.
    """

    message: Path
    rows: int
    permutation: Path | None


_BLOCK_ROW = re.compile(r"\brow (\d+)\b")


def _in_file_rows(exc: DataError, first_row: int) -> DataError:
    """The error of a block, its row number counted from the start of the file."""
    text = _BLOCK_ROW.sub(lambda m: f"row {int(m.group(1)) + first_row}", str(exc), count=1)
    return DataError(text)


def _blind_block(
    points: np.ndarray, secret: PsiSecret, executor: Executor | None, first_row: int
) -> np.ndarray:
    try:
        return blind_points(points, secret, executor=executor)
    except DataError as exc:
        raise _in_file_rows(exc, first_row) from exc


def _hash_block(
    block: Sequence[str], domain: bytes, executor: Executor | None, first_row: int
) -> np.ndarray:
    try:
        return hash_ids_to_points(block, domain, executor=executor)
    except DataError as exc:
        raise _in_file_rows(exc, first_row) from exc


def stream_first_blind(
    id_blocks: Iterable[Sequence[str]],
    domain: bytes,
    secret: PsiSecret,
    spool: AlignmentSpool,
    *,
    party: str,
    label_owner: bool,
    max_set_size: int | None = None,
    executor: Executor | None = None,
    progress: Progress = _no_progress,
    total: int = 0,
    tokens: Callable[[Sequence[str]], bytes] | None = None,
) -> StreamedSet:
    """Hash and blind a party's ids block by block: its first message, in the spool.

    Parameters
    ----------
    id_blocks : iterable of sequences of str
        The party's normalized ids, block after block, in its row order.
    domain : bytes
        From :func:`vfm_flower.psi.psi_domain`.
    secret : PsiSecret
        The party's secret of this run.
    spool : AlignmentSpool
        The party's own working directory.
    party : str
        Its name (in error messages).
    label_owner : bool
        The LO's message keeps its row order; a passive party's is shuffled
        (:func:`shuffle_records`).
    max_set_size : int, optional
        The agreement's bound on the party's set.
    progress : callable, optional
        ``progress("blind", rows_done, total)`` after each block (``total`` as given: 0
        when the count is not known in advance).
    tokens : callable, optional
        ``tokens(block) -> bytes``: the customers' per-run pseudonyms of a block, appended to
        ``tokens.bin`` in the spool (the Flower steps' customer masks need them).

    Raises
    ------
    DataError
        No ids, or a duplicated id (names the rows).
    PolicyViolation
        Rule ``"max_set_size"``.
    """
    own = spool.path("own.pts" if not label_owner else "first.pts")
    outputs = [own, spool.path("first.pts"), spool.path("permutation.npy")]
    if tokens is not None:
        outputs.append(spool.path("tokens.bin"))
    try:
        return _first_blind(
            id_blocks, domain, secret, spool, own, party=party, label_owner=label_owner,
            max_set_size=max_set_size, executor=executor, progress=progress, total=total,
            tokens=tokens,
        )  # fmt: skip
    except BaseException:
        for path in outputs:  # nothing half-written stays behind (own.pts is in row order)
            path.unlink(missing_ok=True)
        for path in spool.root.glob("shuffle.*"):
            path.unlink(missing_ok=True)
        raise


def _first_blind(
    id_blocks: Iterable[Sequence[str]],
    domain: bytes,
    secret: PsiSecret,
    spool: AlignmentSpool,
    own: Path,
    *,
    party: str,
    label_owner: bool,
    max_set_size: int | None,
    executor: Executor | None,
    progress: Progress,
    total: int,
    tokens: Callable[[Sequence[str]], bytes] | None,
) -> StreamedSet:
    token_file = spool.path("tokens.bin").open("wb") if tokens is not None else None
    prefixes: list[np.ndarray] = []
    rows = 0
    try:
        with own.open("wb") as out:
            for block in id_blocks:
                if not len(block):
                    continue
                if max_set_size is not None:
                    check_set_size(rows + len(block), max_set_size, party)
                points = _hash_block(block, domain, executor, rows)
                blinded = _blind_block(points, secret, executor, rows)
                out.write(blinded.tobytes())
                prefixes.append(blinded.view("<u8")[:, 0].copy())
                if token_file is not None:
                    token_file.write(tokens(block))
                rows += len(block)
                progress("blind", rows, total)
    finally:
        if token_file is not None:
            token_file.close()
    if rows == 0:
        raise DataError(f"party '{party}' has no ids")
    keys = np.concatenate(prefixes)
    del prefixes
    _check_unique_records(own, keys, party)
    del keys
    if label_owner:
        return StreamedSet(own, rows, None)
    message, permutation = spool.path("first.pts"), spool.path("permutation.npy")
    shuffle_records(own, message, permutation, spool, progress=progress)
    own.unlink()
    return StreamedSet(message, rows, permutation)


def _bucket_bits(rows: int) -> int:
    """``log2`` of the bucket count for ``rows`` records (at most 256 buckets)."""
    if rows <= BUCKET_RECORDS:
        return 0
    return min(8, math.ceil(math.log2(rows / BUCKET_RECORDS)))


def shuffle_records(
    source: Path,
    message: Path,
    permutation: Path,
    spool: AlignmentSpool,
    *,
    block: int = DEFAULT_BLOCK_IDS,
    progress: Progress = _no_progress,
) -> None:
    """Write ``source``'s records to ``message`` in a uniformly random secret order.

    Each record goes to a bucket drawn uniformly (OS CSPRNG) among ``2**bits``; each bucket is
    then read alone and permuted by :func:`vfm_flower.psi.secure_permutation`, and the buckets
    are written one after the other: a uniform permutation (as sorting random keys whose high
    bits pick the bucket). ``permutation`` (``.npy``, int64) maps each position of ``message``
    to its row in ``source``.
    """
    rows = record_count(source, party="this party")
    bits = _bucket_bits(rows)
    buckets = 1 << bits
    paths = [spool.path(f"shuffle.{b}") for b in range(buckets)]

    def uniform_bucket(points: np.ndarray) -> np.ndarray:
        if bits == 0:
            return np.zeros(points.shape[0], dtype=np.uint64)
        return np.frombuffer(os.urandom(8 * points.shape[0]), dtype="<u8") >> (64 - bits)

    _scatter_records(source, paths, uniform_bucket, block)
    perm = np.lib.format.open_memmap(permutation, mode="w+", dtype=_ROW, shape=(rows,))
    written = 0
    with message.open("wb") as out:
        for path in paths:
            record = np.fromfile(path, dtype=_RECORD)
            path.unlink()
            shuffled = record[secure_permutation(record.shape[0])]
            out.write(np.ascontiguousarray(shuffled["point"]).tobytes())
            perm[written : written + shuffled.shape[0]] = shuffled["row"]
            written += shuffled.shape[0]
            progress("shuffle", written, rows)
    perm.flush()
    del perm


def stream_second_blind(
    received: Path,
    secret: PsiSecret,
    out: Path,
    *,
    sender: str,
    max_set_size: int,
    executor: Executor | None = None,
    block: int = DEFAULT_BLOCK_IDS,
    progress: Progress = _no_progress,
) -> int:
    """Blind a peer's blinded points again, in the order received; returns their count.

    Every record is checked as :func:`vfm_flower.psi.check_received_points` does (the set
    size against the sender's bound, canonical encodings).
    """
    rows = record_count(received, party=sender)
    check_set_size(rows, max_set_size, sender)
    done = 0
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as sink:
            for points in _read_blocks(received, block):
                _check_canonical(points, sender, done)
                blinded = _blind_block(np.ascontiguousarray(points), secret, executor, done)
                sink.write(blinded.tobytes())
                done += points.shape[0]
                progress("second blind", done, rows)
        if done != rows:
            raise DataError(f"points from party '{sender}' changed while being read: refused")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def _partition(
    source: Path, bits: int, spool: AlignmentSpool, tag: str, *, sender: str | None = None
) -> list[Path]:
    """Split a points file into ``2**bits`` bucket files by the first bits of each point;
    a file received from ``sender`` is checked for canonical encodings on the way."""
    paths = [spool.path(f"{tag}.{b}") for b in range(1 << bits)]
    check = (
        None if sender is None else (lambda points, start: _check_canonical(points, sender, start))
    )
    _scatter_records(
        source, paths, lambda points: points[:, 0] >> (8 - bits), DEFAULT_BLOCK_IDS, check
    )
    return paths


def match_streamed(
    lo_double: Mapping[str, Path],
    passive_double: Mapping[str, Path],
    *,
    min_intersection: int,
    label_owner_rows: int,
    spool: AlignmentSpool,
    progress: Progress = _no_progress,
) -> JointAlignment:
    """LO: the rows held by every passive party, in a random common order, bucket by bucket.

    Parameters
    ----------
    lo_double : mapping of str to pathlib.Path
        ``X^{a b_k}`` as returned by P_k (LO row order), a points file per party.
    passive_double : mapping of str to pathlib.Path
        ``Y_k^{b_k a}`` (P_k's secret order), a points file per party.
    min_intersection : int
        The agreement's minimum (``0`` accepts an empty result).
    label_owner_rows : int
        The LO's own number of ids: every passive party must return exactly that many, each
        a canonical encoding (checked block by block as the files are bucketed).

    Returns
    -------
    JointAlignment
        As :func:`vfm_flower.psi.match_joint_rows`.

    Raises
    ------
    PolicyViolation
        Rule ``"min_intersection"``, checked before anything else is derived from the match.
    DataError
        Inconsistent files, or duplicated blinded ids from a party.
    """
    if not lo_double or set(lo_double) != set(passive_double):
        raise DataError(
            "match_streamed: need the same, non-empty set of passive parties on both sides"
        )
    parties = sorted(lo_double)
    n_lo = int(label_owner_rows)
    present: np.ndarray | None = None
    spooled: dict[str, Path] = {}
    for index, party in enumerate(parties):
        count = record_count(lo_double[party], party=party)
        if count != n_lo:
            raise DataError(
                f"party '{party}' returned {count} doubly blinded label-owner ids, expected {n_lo}"
            )
        peer_rows = record_count(passive_double[party], party=party)
        bits = _bucket_bits(max(n_lo, peer_rows))
        needles = _partition(lo_double[party], bits, spool, f"lo.{party}", sender=party)
        hay = _partition(passive_double[party], bits, spool, f"peer.{party}")
        positions = np.full(n_lo, -1, dtype=np.int64)
        for b, (needle_path, hay_path) in enumerate(zip(needles, hay)):
            mine = np.fromfile(needle_path, dtype=_RECORD)
            theirs = np.fromfile(hay_path, dtype=_RECORD)
            needle_path.unlink()
            hay_path.unlink()
            found = find_points(
                np.ascontiguousarray(mine["point"]), np.ascontiguousarray(theirs["point"]), party
            )
            hit = found >= 0
            positions[mine["row"][hit]] = theirs["row"][found[hit]]
            progress("match", index * len(needles) + b + 1, len(parties) * len(needles))
        # equal points fall in one bucket, where find_points refuses repeats: no check across
        found_here = positions >= 0
        present = found_here if present is None else present & found_here
        spooled[party] = spool.path(f"positions.{party}.npy")
        np.save(spooled[party], positions)
        del positions
    assert present is not None
    joint = np.flatnonzero(present)
    del present
    check_min_intersection(int(joint.size), min_intersection)
    rows = joint[secure_permutation(joint.size)].astype(np.int64, copy=False)
    out = {}
    for party in parties:
        out[party] = np.array(np.load(spooled[party], mmap_mode="r")[rows], dtype=np.int64)
        spooled[party].unlink()
    return JointAlignment(label_owner_rows=rows, passive_positions=out)


def align_streaming(
    party_blocks: Mapping[str, Callable[[], Iterable[Sequence[str]]]],
    label_owner: str,
    *,
    domain: bytes,
    min_intersection: int = 1,
    max_set_size: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
    progress: Progress = _no_progress,
) -> dict[str, np.ndarray]:
    """The whole streamed alignment in this process (tests, the local runner).

    Each party gets its own :class:`AlignmentSpool` under ``workdir``; the relay is a file
    copy from the sender's spool to the receiver's. ``party_blocks[p]()`` yields ``p``'s
    normalized ids block by block. Returns what :func:`vfm_flower.psi.align_in_process`
    returns: each party's local rows of the joint customers, in the common order.
    """
    passive = sorted(p for p in party_blocks if p != label_owner)
    if label_owner not in party_blocks or not passive:
        raise DataError("an alignment needs the label owner and at least one passive party")
    with contextlib.ExitStack() as stack:
        if executor is None:  # one pool for every block (not one started per block)
            executor = stack.enter_context(blinding_pool())
        return _align_streaming(
            party_blocks, label_owner, passive, domain=domain,
            min_intersection=min_intersection, max_set_size=max_set_size, workdir=workdir,
            executor=executor, progress=progress,
        )  # fmt: skip


def _align_streaming(
    party_blocks: Mapping[str, Callable[[], Iterable[Sequence[str]]]],
    label_owner: str,
    passive: list[str],
    *,
    domain: bytes,
    min_intersection: int,
    max_set_size: int | None,
    workdir: str | os.PathLike[str] | None,
    executor: Executor,
    progress: Progress,
) -> dict[str, np.ndarray]:
    spools = {p: AlignmentSpool(workdir) for p in party_blocks}
    try:
        secrets = {p: PsiSecret.generate() for p in party_blocks}
        first = {
            p: stream_first_blind(
                party_blocks[p](),
                domain,
                secrets[p],
                spools[p],
                party=p,
                label_owner=p == label_owner,
                max_set_size=max_set_size,
                executor=executor,
                progress=progress,
            )
            for p in party_blocks
        }
        limit = max_set_size or max(f.rows for f in first.values())
        lo = spools[label_owner]
        lo_double, passive_double = {}, {}
        for p in passive:
            inbox = spools[p].path("from_lo.pts")
            shutil.copyfile(first[label_owner].message, inbox)
            reply = spools[p].path("lo_double.pts")
            stream_second_blind(
                inbox, secrets[p], reply, sender=label_owner, max_set_size=limit,
                executor=executor, progress=progress,
            )  # fmt: skip
            lo_double[p] = lo.path(f"lo_double.{p}.pts")
            shutil.copyfile(reply, lo_double[p])
            received = lo.path(f"from.{p}.pts")
            shutil.copyfile(first[p].message, received)
            passive_double[p] = lo.path(f"double.{p}.pts")
            stream_second_blind(
                received, secrets[label_owner], passive_double[p], sender=p,
                max_set_size=limit, executor=executor, progress=progress,
            )  # fmt: skip
        joint = match_streamed(
            lo_double, passive_double, min_intersection=min_intersection,
            label_owner_rows=first[label_owner].rows, spool=lo, progress=progress,
        )  # fmt: skip
        result = {label_owner: joint.label_owner_rows}
        for p in passive:
            permutation = first[p].permutation
            assert permutation is not None
            result[p] = local_rows_from_positions(
                joint.passive_positions[p], np.load(permutation, mmap_mode="r")
            )
        return result
    finally:
        for spool in spools.values():
            spool.remove()

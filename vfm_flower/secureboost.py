"""SecureBoost with hidden membership: the encrypted steps of vertical gradient-boosted trees.

Who holds what
--------------
The label owner (LO) holds the labels, the Paillier private key and, for every joint
customer, its gradients and node (see :mod:`vfm_flower.tree_growth`). A passive party P_k
holds its columns on **all** its rows, binned into quantile bins on its own data
(:func:`vfm_flower.trees.quantile_bin_edges`), and a slot for each row
(:mod:`vfm_flower.hidden_membership`): it never learns which rows are joint, held out or
sampled, which node a row is in, or any gradient.

One level, two steps
--------------------
``LO`` (:func:`encode_level`, then any Paillier encryption)
    For every slot, one plaintext packing the row's fixed-point ``g`` and ``h`` and a 1 into
    the fields of its node among the level's *built* nodes (the smaller child of every split, see
    histogram subtraction in :mod:`vfm_flower.tree_growth`), zero elsewhere: rows of other
    nodes, held-out and unsampled rows, and slots that are not joint all encrypt 0. A softmax
    round packs one field pair per class tree. Every slot is encrypted afresh at every level
    (short-exponent DJN obfuscators, CRT on the LO's side), so a passive party cannot link
    two levels' ciphertexts: what it sees is the same for every layout of the nodes.
``P_k`` (:func:`passive_histograms`)
    The encrypted sums of those packed values per bin of each of its columns (one modular
    multiplication per row per pair of columns: two columns are summed over their joint bins
    and the two marginals taken from that table), then *compressed*: the bin sums are
    shifted into one plaintext as many as fit (:func:`histogram_layout`), and every
    compressed ciphertext gets fresh full-size randomness before it leaves, so the key holder
    cannot tell from the randomness which rows were summed.
``LO`` (:func:`open_histograms`)
    Decrypts the few compressed ciphertexts and reads every field (signed fields, decoded
    from the lowest one up: exact, no offset needed, see *fixed point* below).

The LO then picks the best split of every node (:meth:`RoundGrowth.decide`); for a split a
passive party owns, it sends the owner the column and bin under a random split id
(:class:`~vfm_flower.tree_growth.SplitRequest`, shuffled within the level) and the owner
answers with the side of **each of its rows, by slot** (:func:`partition_bits`), each bit
XORed with a per-customer mask the LO can remove only for the customers it holds
(:func:`partition_masks`): the owner does not know which rows are in the node, so the LO
learns the side of every joint customer at that threshold (not only of the node's rows),
and nothing about the others.

Fixed point, and why these sizes
--------------------------------
``g`` and ``h`` are integers on a ``2**-20`` grid with ``|g|, h <= 1``
(:func:`vfm_flower.trees.quantize_gradients`). A field holds the sum over up to ``L`` slots,
so ``|sum| <= L 2**20 < 2**(20 + bits(L))``: a field is ``21 + bits(L)`` bits wide, and a
signed field ``v`` in ``(-2**(W-1), 2**(W-1))`` decodes exactly from the bottom up
(``v = centered(P mod 2**W)``, ``P = (P - v) / 2**W``): no offset (FATE's packing) is
needed. The third field counts rows, so that the LO can keep both children of every split at
``min-node-rows`` joint training customers or more (a split with a one-customer side would
tell its passive owner that customer is joint). The packed plaintext stays below ``2**(key
bits - 2)`` so its sign is unambiguous.

What each party learns
----------------------
* LO: per level, the sums of ``g`` and ``h`` and the number of joint training customers over
  each bin of every passive column, for every built node (hence for every node); the side of
  every joint customer at every passive split; never a passive column, its bin edges or
  thresholds.
* P_k: the number of slots, its own rows' slots, the level's ciphertexts (fresh each level),
  and for its own splits the column and bin chosen (so the side of each of its rows at that
  threshold) with an opaque id. No gradient, hessian, label, node or membership.
* Server: sizes and timing.

A collusion of the LO with P_k gives the LO P_k's columns; of two passive parties, which of
their common customers share slots, i.e. are joint (as in :mod:`vfm_flower.hidden_membership`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfm_flower.hazmat import paillier_djn as _djn
from vfm_flower.hazmat.paillier_pack import encrypted_group_sums
from vfm_flower.trees import GRADIENT_BITS

logger = logging.getLogger(__name__)

#: Fields per built node: the sums of ``g``, of ``h`` and of rows (the row count lets the LO
#: keep every child of a split at ``min-node-rows`` customers or more).
FIELDS = 3

__all__ = [
    "HistogramLayout",
    "histogram_layout",
    "encode_level",
    "EncryptedHistograms",
    "passive_histograms",
    "open_histograms",
    "partition_masks",
    "side_bits",
    "partition_bits",
    "slot_partition",
]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class HistogramLayout:
    """Where each node's ``g`` and ``h`` sit in a plaintext (all public).

    ``pairs`` (output, node) pairs are built at this level; a chunk packs ``pairs_per_chunk``
    of them (two fields each, ``field_bits`` wide); a row costs ``chunks`` ciphertexts. After
    summing, ``bins_per_ciphertext[c]`` bin sums of chunk ``c`` are shifted into one
    ciphertext for decryption.
    """

    key_bits: int
    field_bits: int
    pairs: int
    pairs_per_chunk: int

    @property
    def capacity_bits(self) -> int:
        return self.key_bits - 2

    @property
    def chunks(self) -> int:
        return -(-self.pairs // self.pairs_per_chunk)

    def pairs_in_chunk(self, chunk: int) -> int:
        return min(self.pairs_per_chunk, self.pairs - chunk * self.pairs_per_chunk)

    def chunk_bits(self, chunk: int) -> int:
        return FIELDS * self.field_bits * self.pairs_in_chunk(chunk)

    def bins_per_ciphertext(self, chunk: int) -> int:
        return max(1, self.capacity_bits // self.chunk_bits(chunk))


def histogram_layout(key_bits: int, total_slots: int, pairs: int) -> HistogramLayout:
    """The layout of one level: ``pairs`` built nodes over ``total_slots`` slots.

    Raises ``ValueError`` if one node's two fields do not fit a plaintext.
    """
    if pairs < 1:
        raise ValueError("a level builds at least one node")
    field_bits = GRADIENT_BITS + max(int(total_slots), 1).bit_length() + 1
    per_chunk = (key_bits - 2) // (FIELDS * field_bits)
    if per_chunk < 1:
        raise ValueError(f"{FIELDS * field_bits}-bit node fields do not fit a {key_bits}-bit key")
    return HistogramLayout(int(key_bits), field_bits, int(pairs), min(per_chunk, int(pairs)))


# --------------------------------------------------------------------------- LO: encode


def encode_level(
    g_int: np.ndarray,
    h_int: np.ndarray,
    pair_of_rows: np.ndarray,
    joint_slots: np.ndarray,
    layout: HistogramLayout,
    total_slots: int,
) -> list[list[int]]:
    """LO: the plaintexts of one level, ``chunks x total_slots`` signed integers.

    Parameters
    ----------
    g_int, h_int : np.ndarray
        ``(joint rows, K)`` fixed-point gradients (``|g| <= 2**20``, ``0 <= h <= 2**20``).
    pair_of_rows : np.ndarray
        ``(joint rows, K)``: built pair of each row in each output's tree, or -1 (the row
        adds nothing: another node, held out, not sampled).
    joint_slots : np.ndarray
        Slot of each joint row.
    layout : HistogramLayout
        The level's layout.
    total_slots : int
        ``L``: every other slot encrypts zero.
    """
    unit = 1 << GRADIENT_BITS
    g_int = np.asarray(g_int, dtype=np.int64)
    h_int = np.asarray(h_int, dtype=np.int64)
    if (
        np.abs(g_int).max(initial=0) > unit
        or h_int.min(initial=0) < 0
        or h_int.max(initial=0) > unit
    ):
        raise ValueError("fixed-point gradients out of range (|g| <= 2**20, 0 <= h <= 2**20)")
    W = layout.field_bits
    out = [[0] * int(total_slots) for _ in range(layout.chunks)]
    slots = np.asarray(joint_slots, dtype=np.int64)
    for c in range(pair_of_rows.shape[1]):
        rows = np.flatnonzero(pair_of_rows[:, c] >= 0)
        pairs = pair_of_rows[rows, c]
        for i, j, g, h in zip(
            slots[rows].tolist(), pairs.tolist(), g_int[rows, c].tolist(), h_int[rows, c].tolist()
        ):
            chunk, within = divmod(j, layout.pairs_per_chunk)
            shift = FIELDS * W * within
            out[chunk][i] += (g << shift) + (h << (shift + W)) + (1 << (shift + 2 * W))
    return out


# --------------------------------------------------------------------------- passive side


@dataclass(frozen=True)
class EncryptedHistograms:
    """A passive party's compressed encrypted histograms of one level (what the LO decrypts).

    ``ciphertexts[c]`` holds chunk ``c``'s bin sums, column-major (column 0 bins 0..B-1, then
    column 1...), ``bins_per_ciphertext`` to a ciphertext (the last one may hold fewer).
    """

    columns: int
    bins: int
    ciphertexts: tuple[tuple[int, ...], ...]

    def count(self) -> int:
        return sum(len(c) for c in self.ciphertexts)


def _product(cts: Sequence[mpz], nsquare: mpz) -> mpz:
    acc = mpz(1)
    for c in cts:
        acc = acc * c % nsquare
    return acc


def _column_sums(
    row_cts: list[mpz], codes: np.ndarray, n_bins: int, nsquare: mpz, workers: int | None
) -> list[list[mpz]]:
    """``[[sum over rows in bin b of column f]]`` for every column ``f``, bin ``b``.

    Columns go in pairs: one product per row over the pair's joint bins (``B**2`` groups),
    then the two marginals (``2 B**2`` products), when that is cheaper than two passes.
    """
    rows, columns = codes.shape
    out: list[list[mpz]] = [[] for _ in range(columns)]
    f = 0
    pair_cost = rows + 2 * n_bins * n_bins
    while f < columns:
        if f + 1 < columns and pair_cost < 2 * rows:
            groups = codes[:, f].astype(np.int64) * n_bins + codes[:, f + 1].astype(np.int64)
            table = encrypted_group_sums(row_cts, groups, n_bins * n_bins, nsquare, workers=workers)
            grid = [table[a * n_bins : (a + 1) * n_bins] for a in range(n_bins)]
            out[f] = [_product(grid[a], nsquare) for a in range(n_bins)]
            out[f + 1] = [
                _product([grid[a][b] for a in range(n_bins)], nsquare) for b in range(n_bins)
            ]
            f += 2
        else:
            groups = codes[:, f].astype(np.int64)
            out[f] = encrypted_group_sums(row_cts, groups, n_bins, nsquare, workers=workers)
            f += 1
    return out


def _compress(cts: Sequence[mpz], shift_bits: int, per: int, nsquare: mpz) -> list[mpz]:
    """Shift-and-add ``per`` ciphertexts into one: ``[[sum_t m_t 2**(shift_bits t)]]``."""
    shift = mpz(1) << shift_bits
    out = []
    for start in range(0, len(cts), per):
        group = cts[start : start + per]
        acc = group[-1]
        for c in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, shift, nsquare) * c % nsquare
        out.append(acc)
    return out


def passive_histograms(
    public_n: int,
    level_ciphertexts: Sequence[Sequence[int]],
    slot_of_row: np.ndarray,
    codes: np.ndarray,
    n_bins: int,
    layout: HistogramLayout,
    *,
    workers: int | None = None,
) -> EncryptedHistograms:
    """P_k: encrypted histograms of its columns for one level, compressed and re-randomized.

    Parameters
    ----------
    public_n : int
        The LO's public modulus.
    level_ciphertexts : Sequence[Sequence[int]]
        ``chunks x L`` ciphertexts by slot (:func:`encode_level`, encrypted).
    slot_of_row : np.ndarray
        Slot of each of the party's rows.
    codes : np.ndarray
        ``(rows, columns)`` bin codes of its columns (all its rows).
    n_bins : int
        Bins per column (codes below it).
    layout : HistogramLayout
        The level's layout (public).
    workers : int, optional
        Processes for the sums and the re-randomization.
    """
    started = time.perf_counter()
    n = mpz(public_n)
    nsquare = n * n
    if len(level_ciphertexts) != layout.chunks:
        raise ValueError(
            f"{len(level_ciphertexts)} chunks of ciphertexts, the layout has {layout.chunks}"
        )
    codes = np.asarray(codes)
    slots = np.asarray(slot_of_row, dtype=np.int64)
    if codes.shape[0] != slots.size:
        raise ValueError(f"{codes.shape[0]} rows of bin codes for {slots.size} slots")
    if codes.size and int(codes.max()) >= n_bins:
        raise ValueError(f"a bin code is not below {n_bins}")
    chunks = []
    for c, chunk in enumerate(level_ciphertexts):
        if len(chunk) < (int(slots.max()) + 1 if slots.size else 0):
            raise ValueError(f"chunk {c} holds {len(chunk)} slots, fewer than this party's slots")
        row_cts = [mpz(chunk[s]) for s in slots.tolist()]
        sums = _column_sums(row_cts, codes, n_bins, nsquare, workers)
        flat = [ct for column in sums for ct in column]
        packed = _compress(flat, layout.chunk_bits(c), layout.bins_per_ciphertext(c), nsquare)
        fresh = _djn.full_obfuscators(n, len(packed), workers=workers)
        chunks.append(tuple(int(p * r % nsquare) for p, r in zip(packed, fresh, strict=True)))
    logger.debug(
        "passive histograms: %d rows, %d columns, %d chunks, %d ciphertexts, %.2f s",
        slots.size,
        codes.shape[1],
        layout.chunks,
        sum(len(c) for c in chunks),
        time.perf_counter() - started,
    )
    return EncryptedHistograms(int(codes.shape[1]), int(n_bins), tuple(chunks))


def _signed_fields(value: int, width: int, count: int) -> list[int]:
    """Split a signed integer into ``count`` centered ``width``-bit digits (lowest first)."""
    out = []
    mask = (1 << width) - 1
    half = 1 << (width - 1)
    for _ in range(count):
        d = value & mask
        if d >= half:
            d -= 1 << width
        out.append(d)
        value = (value - d) >> width
    if value != 0:
        raise ValueError("a packed histogram holds more than its fields: made under another layout")
    return out


def open_histograms(
    private_key: object,
    histograms: EncryptedHistograms,
    layout: HistogramLayout,
    *,
    expected_columns: int,
    expected_bins: int,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LO: decrypt one party's histograms to integer ``(pairs, columns, bins)`` sums of ``g``,
    ``h`` and rows.

    Raises
    ------
    ValueError
        The reply does not have the layout's shape (a wrong count of chunks or ciphertexts,
        another column count) or a plaintext overflows its fields.
    """
    F, B = histograms.columns, histograms.bins
    if F != expected_columns:
        raise ValueError(f"histograms of {F} columns, the party declared {expected_columns}")
    if B != expected_bins:
        raise ValueError(f"histograms of {B} bins, the job has {expected_bins}")
    if len(histograms.ciphertexts) != layout.chunks:
        raise ValueError(f"{len(histograms.ciphertexts)} chunks, the level has {layout.chunks}")
    hg = np.zeros((layout.pairs, F, B), dtype=np.int64)
    hh = np.zeros((layout.pairs, F, B), dtype=np.int64)
    hc = np.zeros((layout.pairs, F, B), dtype=np.int64)
    for c, cts in enumerate(histograms.ciphertexts):
        per = layout.bins_per_ciphertext(c)
        need = -(-(F * B) // per)
        if len(cts) != need:
            raise ValueError(f"chunk {c} holds {len(cts)} ciphertexts, the layout needs {need}")
        values = _djn.decrypt_vector(private_key, list(cts), workers=workers)
        k = layout.pairs_in_chunk(c)
        first = c * layout.pairs_per_chunk
        cell = 0
        for v, ct_index in zip(values, range(len(cts)), strict=True):
            bins_here = min(per, F * B - ct_index * per)
            fields = _signed_fields(int(v), layout.field_bits, FIELDS * k * bins_here)
            for t in range(bins_here):
                f, b = divmod(cell, B)
                base = FIELDS * k * t
                for p in range(k):
                    hg[first + p, f, b] = fields[base + FIELDS * p]
                    hh[first + p, f, b] = fields[base + FIELDS * p + 1]
                    hc[first + p, f, b] = fields[base + FIELDS * p + 2]
                cell += 1
    if (hh < 0).any() or (hc < 0).any():
        raise ValueError("a histogram holds a negative hessian or row count")
    return hg, hh, hc


# --------------------------------------------------------------------------- partitions


def partition_masks(seed: bytes, label: str, tokens: Sequence[bytes], count: int) -> np.ndarray:
    """One mask bit per customer and split, ``(len(tokens), count)`` booleans: a PRF of the
    customer's token under the pair seed of the passive party and the LO
    (:func:`vfm_flower.hidden_membership.customer_masks`, one label per level).

    The passive party XORs its answers with them; the LO removes them for the customers it
    holds, so the side of a customer that is not joint stays hidden from it."""
    from vfm_flower.hidden_membership import customer_masks

    out = np.zeros((len(tokens), count), dtype=bool)
    for start in range(0, count, 504):
        width = min(504, count - start)
        values = customer_masks(seed, f"{label}/{start}", tokens, width)
        for j in range(width):
            out[:, start + j] = [(v >> j) & 1 for v in values]
    return out


def side_bits(
    left: np.ndarray,
    slot_of_row: np.ndarray,
    total_slots: int,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """P_k: one side per own row (True: left), XOR its mask bit, packed by slot.

    Returns ``ceil(L / 8)`` bytes (``numpy.packbits``); slots the party does not hold are 0.
    """
    left = np.asarray(left, dtype=bool)
    if masks is not None:
        left = left ^ np.asarray(masks, dtype=bool)
    bits = np.zeros(int(total_slots), dtype=bool)
    bits[np.asarray(slot_of_row, dtype=np.int64)] = left
    return np.packbits(bits)


def partition_bits(
    codes: np.ndarray,
    column: int,
    bin: int,
    slot_of_row: np.ndarray,
    total_slots: int,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """P_k: the side of each of its rows at its split ``column <= bin``, by slot
    (:func:`side_bits`; ``masks``: one bit per own row, see :func:`partition_masks`)."""
    codes = np.asarray(codes)
    if not 0 <= column < codes.shape[1]:
        raise ValueError(f"column {column} is not one of this party's {codes.shape[1]} columns")
    if bin < 0:
        raise ValueError(f"bin {bin} is not a bin")
    return side_bits(codes[:, column] <= bin, slot_of_row, total_slots, masks)


def slot_partition(
    packed: np.ndarray | bytes,
    joint_slots: np.ndarray,
    total_slots: int,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """LO: the side of each joint row from a packed partition (True: left), its mask bits
    (``masks``, one per joint row) removed.

    Raises ``ValueError`` if the answer has the wrong length.
    """
    raw = (
        np.frombuffer(bytes(packed), dtype=np.uint8)
        if isinstance(packed, bytes)
        else np.asarray(packed, dtype=np.uint8)
    )
    if raw.size != -(-int(total_slots) // 8):
        raise ValueError(f"a partition of {raw.size} bytes for {total_slots} slots")
    bits = np.unpackbits(raw, count=int(total_slots)).astype(bool)
    left = bits[np.asarray(joint_slots, dtype=np.int64)]
    return left ^ np.asarray(masks, dtype=bool) if masks is not None else left

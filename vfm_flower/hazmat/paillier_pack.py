"""Hazmat: encrypted group sums and slot packing (on gmpy2).

No safety net (see :mod:`vfm_flower.hazmat`): callers mask and re-randomize before anything
leaves, and guarantee that packed values fit their slots.

* **Group sums** ``[[sum_{i in g} d_i]]``: one modular multiplication per row.
* **Packing.** ``slots_per_ciphertext`` values are packed into one ciphertext by shift-and-add
  (``[[a]]**(2**s) * [[b]] = [[a 2**s + b]]``), so the key owner decrypts ``m / slots``
  ciphertexts instead of ``m``; :class:`SlotLayout` sizes the slots so that statistically
  masked values neither overflow nor reveal the plaintext.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfm_flower.hazmat.paillier_djn import (
    chunk_bounds,
    ciphertext_bytes_width,
    join_ciphertexts,
    resolve_workers,
    run_pool,
    split_ciphertexts,
)
from vfm_flower.hazmat.paillier_dot import (
    _PARALLEL_MIN_PRODUCTS,
    FEATURE_VALUE_BITS,
    STATISTICAL_SECURITY_BITS,
    _product_all,
)

logger = logging.getLogger(__name__)

_ONE = mpz(1)

__all__ = [
    "encrypted_group_sums",
    "SlotLayout",
    "slot_layout",
    "pack_ciphertexts",
    "unpack_plaintext",
]


# --------------------------------------------------------------------------------------------
# Group sums: [[sum of d_i over the rows of each group]]


def _group_products(cts: Sequence[mpz], groups: np.ndarray, nsquare: mpz) -> dict[int, mpz]:
    """Product per group of ciphertexts listed in group order (``groups`` sorted, same length)."""
    if not len(cts):
        return {}
    cuts = (np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, len(cts)]
    return {
        int(groups[start]): _product_all(cts[start:end], nsquare)
        for start, end in zip(starts, ends)
    }


def _group_worker(payload: tuple[bytes, int, mpz, np.ndarray]) -> dict[int, mpz]:
    blob, width, nsquare, groups = payload
    return _group_products(split_ciphertexts(blob, width, nsquare), groups, nsquare)


def encrypted_group_sums(
    ciphertexts: Sequence[int],
    groups: np.ndarray,
    n_groups: int,
    nsquare: int,
    *,
    workers: int | None = None,
) -> list[mpz]:
    """``[[sum_{i : groups[i] = g} d_i]]`` for ``g = 0 .. n_groups - 1``: one product per group.

    Parameters
    ----------
    ciphertexts : Sequence[int]
        ``[[d_i]]``, one per row.
    groups : np.ndarray
        ``n`` integer group ids in ``[-1, n_groups)``; rows with ``-1`` are left out.
    n_groups : int
        Number of groups.
    nsquare : int
        ``n**2`` of the public key.
    workers : int, optional
        Processes (rows are split in contiguous chunks of the group order, partial products
        are combined here); default ``os.cpu_count()`` from 60,000 rows on, else in-process.

    Returns
    -------
    list[mpz]
        ``n_groups`` ciphertexts. An empty group gives the trivial encryption ``1`` of zero:
        re-randomize before sending.
    """
    g = np.asarray(groups)
    if g.ndim != 1 or not (np.issubdtype(g.dtype, np.integer) or g.size == 0):
        raise ValueError("groups must be a 1-D vector of integer group ids")
    if len(g) != len(ciphertexts):
        raise ValueError(f"{len(g)} group ids were given for {len(ciphertexts)} ciphertexts")
    if n_groups < 0:
        raise ValueError("n_groups must be non-negative")
    if g.size and (int(g.min()) < -1 or int(g.max()) >= n_groups):
        raise ValueError(f"group ids must be in [-1, {n_groups}) (-1: row left out)")
    n2 = mpz(nsquare)
    started = time.perf_counter()
    kept = np.flatnonzero(g >= 0)
    order = kept[np.argsort(g[kept], kind="stable")]
    sorted_groups = g[order].astype(np.int64)
    cts = [mpz(ciphertexts[i]) for i in order.tolist()]
    n_workers = resolve_workers(workers, len(cts), _PARALLEL_MIN_PRODUCTS)
    if n_workers == 1:
        partials = [_group_products(cts, sorted_groups, n2)]
    else:
        width = ciphertext_bytes_width(n2)
        payloads = [
            (join_ciphertexts(cts[start:end], width), width, n2, sorted_groups[start:end])
            for start, end in chunk_bounds(len(cts), n_workers)
        ]
        partials = run_pool(_group_worker, payloads, n_workers)
    sums: list[mpz | None] = [None] * n_groups
    for part in partials:
        for k, product in part.items():
            previous = sums[k]
            sums[k] = product if previous is None else previous * product % n2
    logger.debug(
        "encrypted group sums: %d rows, %d groups, %d workers, %.3f s",
        len(cts),
        n_groups,
        n_workers,
        time.perf_counter() - started,
    )
    return [_ONE if s is None else s for s in sums]


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

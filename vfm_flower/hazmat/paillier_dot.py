"""Hazmat: fixed point, encrypted dot products, group sums and slot packing (on gmpy2).

No safety net: these functions trust their caller for bounds, for masking and re-randomizing
results before they leave, and for what may be revealed to whom. Use :mod:`vfm_flower.paillier`
(``PaillierContext`` and the protocol steps) unless you are writing one of those.

* **Integer fixed point.** Residuals are scaled by ``2**RESIDUAL_FRACTION_BITS`` and features by
  ``2**FEATURE_FRACTION_BITS``.
* **Bucketed multi-exponentiation** for ``[[X^T d]]``: per column, rows are grouped by their
  quantized feature value (or, for columns with many distinct values, by the digits of a
  windowed Pippenger decomposition); ciphertexts of a bucket are multiplied together, and the
  buckets are combined by the running-product trick (``sum_k k B_k`` as a telescoping product),
  so a column costs about one modular multiplication per row whose value differs from the
  column's offset (mode or minimum), instead of one exponentiation per row. Negative values go
  in a separate bucket set that is inverted once; offsets and common factors (binary and small
  integer columns standardized to two or ten levels) are applied with one short exponentiation.
* **Group sums** ``[[sum_{i in g} d_i]]``: one modular multiplication per row.
* **Packing.** ``slots_per_ciphertext`` values are packed into one ciphertext by shift-and-add
  (``[[a]]**(2**s) * [[b]] = [[a 2**s + b]]``), so the key owner decrypts ``m / slots``
  ciphertexts instead of ``m``; :class:`SlotLayout` sizes the slots so that statistically
  masked values neither overflow nor reveal the plaintext.
* **Process pools** across cores for large batches (dot products split by columns with a cost
  model, group sums by rows); small batches run in-process.

Results here carry randomness derived from their inputs' (a product of the inputs'
obfuscators raised to the plaintext weights): whoever holds the key could test hypotheses
about the weights from it. Mask and re-randomize (``vfm_flower.paillier.rerandomize``) before
a result leaves for the key owner.
"""

from __future__ import annotations

import logging
import math
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

__all__ = [
    "RESIDUAL_FRACTION_BITS",
    "FEATURE_FRACTION_BITS",
    "FEATURE_INTEGER_BITS",
    "FEATURE_VALUE_BITS",
    "STATISTICAL_SECURITY_BITS",
    "MAX_RESIDUAL_ABS",
    "quantize_residuals",
    "quantize_features",
    "encrypted_dot_products",
    "encrypted_group_sums",
    "SlotLayout",
    "slot_layout",
    "pack_ciphertexts",
    "unpack_plaintext",
]

logger = logging.getLogger(__name__)

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
#: Largest residual magnitude that can be encoded (``|d| * 2**32`` must fit in 62 bits).
MAX_RESIDUAL_ABS = float(2**30)

# Below this many modular multiplications a process pool costs more than it saves.
_PARALLEL_MIN_PRODUCTS = 60_000

_ONE = mpz(1)


# --------------------------------------------------------------------------------------------
# Fixed point


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
    cts = split_ciphertexts(blob, width, nsquare)
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
        ``vfm_flower.private_gradients`` does).
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
    n_workers = resolve_workers(workers, total_cost, _PARALLEL_MIN_PRODUCTS)
    cts = [mpz(c) for c in enc_d]
    if n_workers == 1 or len(items) == 1:
        results = dict(_dot_items(cts, items, n2))
    else:
        width = ciphertext_bytes_width(n2)
        blob = join_ciphertexts(cts, width)
        payloads = [
            (blob, width, n2, [items[i] for i in group])
            for group in _balance(costs, min(n_workers, len(items)))
        ]
        results = {}
        for part in run_pool(_dot_worker, payloads, n_workers):
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

"""Hazmat: fixed point and encrypted dot products ``[[X^T d]]`` (on gmpy2).

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
* **Joint buckets** for low-cardinality columns (flags, levels, small counts): columns with at
  most :data:`JOINT_MAX_VALUES` values are taken in runs of at most
  :data:`JOINT_MAX_BUCKETS` joint codes; each row's ciphertext goes into the bucket of its
  code once (one multiplication per row for the whole run, none where every column sits at
  its offset), and each column is then a bucketed multi-exponentiation over the buckets. Eleven
  binary columns cost about one multiplication per row instead of one per non-zero entry.
* **Process pools** across cores for large batches (split by rows: equal work per process;
  the partial products are multiplied); small batches run in-process.

Group sums and slot packing are in :mod:`vfm_flower.hazmat.paillier_pack`.

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

# Below this many matrix entries (or modular multiplications) a process pool costs more than
# it saves.
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

#: A column with at most this many distinct values may share buckets with others.
JOINT_MAX_VALUES = 16
#: Most buckets (distinct joint codes) of one group of columns.
JOINT_MAX_BUCKETS = 2048


@dataclass(frozen=True)
class _JointGroup:
    """Low-cardinality columns computed together: each row's ciphertext goes into the bucket
    of its joint code once (one multiplication per row for the whole group), then every
    column is a bucketed multi-exponentiation over the buckets instead of over the rows."""

    columns: tuple[int, ...]
    codes: np.ndarray  # bucket of each row
    values: tuple[np.ndarray, ...]  # each column's value at each bucket
    plans: tuple[_ColumnPlan, ...]  # each column's plan over the buckets
    cost: float


def _joint_group(columns: np.ndarray, index: list[int]) -> _JointGroup:
    """Bucket the rows by the joint code of ``index``; plan every column over the buckets."""
    code = np.zeros(columns.shape[1], dtype=np.int64)
    levels, radix = [], 1
    for j in index:
        values, inverse = np.unique(columns[j], return_inverse=True)
        code += inverse.reshape(-1).astype(np.int64) * radix
        levels.append((values, radix))
        radix *= values.size
    present, codes = np.unique(code, return_inverse=True)
    values = tuple(
        np.ascontiguousarray(vals[(present // r) % vals.size]).astype(np.int64)
        for vals, r in levels
    )
    plans = tuple(_plan_column(v) for v in values)
    # a bucket where every column sits at its offset has exponent 0 everywhere: its rows cost
    # nothing
    idle = np.ones(present.size, dtype=bool)
    for v, plan in zip(values, plans):
        idle &= v == plan.offset
    busy_rows = int(np.count_nonzero(~idle[codes.reshape(-1)]))
    cost = float(busy_rows - np.count_nonzero(~idle)) + sum(p.cost for p in plans)
    return _JointGroup(tuple(index), codes.reshape(-1).astype(np.int64), values, plans, cost)


def _joint_groups(columns: np.ndarray, plans: list[_ColumnPlan]) -> list[_JointGroup]:
    """Low-cardinality columns in runs (fewest values first) of at most
    :data:`JOINT_MAX_BUCKETS` joint codes; a run is kept where it is cheaper than its columns
    alone."""
    sizes = {j: int(np.unique(columns[j]).size) for j in range(columns.shape[0])}
    few = sorted((j for j, k in sizes.items() if 1 < k <= JOINT_MAX_VALUES), key=sizes.get)
    runs: list[list[int]] = []
    product = 0
    for j in few:
        if runs and product * sizes[j] <= JOINT_MAX_BUCKETS:
            runs[-1].append(j)
            product *= sizes[j]
        else:
            runs.append([j])
            product = sizes[j]
    groups = []
    for run in runs:
        if len(run) > 1:
            group = _joint_group(columns, run)
            if group.cost < sum(plans[j].cost for j in run):
                groups.append(group)
    return groups


def _group_core(
    cts: Sequence[mpz], group: _JointGroup, nsquare: mpz
) -> list[tuple[int, mpz | None]]:
    idle = np.ones(group.values[0].size, dtype=bool)
    for v, plan in zip(group.values, group.plans):
        idle &= v == plan.offset
    order = np.argsort(group.codes, kind="stable")
    sorted_codes = group.codes[order]
    cuts = (np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1).tolist()
    rows = order.tolist()
    buckets: list[mpz] = []
    for bucket, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        if idle[bucket]:  # never read: every column's exponent is 0 there
            buckets.append(_ONE)
            continue
        acc = cts[rows[start]]
        for row in rows[start + 1 : end]:
            acc = acc * cts[row] % nsquare
        buckets.append(acc)
    return [
        (j, _column_core(buckets, values, plan, nsquare))
        for j, values, plan in zip(group.columns, group.values, group.plans)
    ]


_Item = tuple[int, np.ndarray | None, _ColumnPlan | None] | _JointGroup


def _dot_items(
    cts: Sequence[mpz], items: list[_Item], nsquare: mpz
) -> list[tuple[int, mpz | None]]:
    out: list[tuple[int, mpz | None]] = []
    for item in items:
        if isinstance(item, _JointGroup):
            out.extend(_group_core(cts, item, nsquare))
            continue
        index, column, plan = item
        if index == _SUM_ITEM:
            out.append((index, _product_all(cts, nsquare)))
        else:
            assert column is not None and plan is not None
            out.append((index, _column_core(cts, column, plan, nsquare)))
    return out


def _rows_worker(payload: tuple[bytes, int, mpz, np.ndarray]) -> list[mpz]:
    blob, width, nsquare, X = payload
    return _dot_products_here(split_ciphertexts(blob, width, nsquare), X, nsquare)


def _dot_products_here(cts: Sequence[mpz], X: np.ndarray, n2: mpz) -> list[mpz]:
    """``[[X^T d]]`` in this process: plans, joint groups, columns, offset corrections."""
    rows, cols = X.shape
    columns = np.ascontiguousarray(X.T.astype(np.int64))
    plans = [_plan_column(columns[j]) for j in range(cols)]
    groups = _joint_groups(columns, plans)
    grouped = {j for g in groups for j in g.columns}
    for g in groups:  # a grouped column's offset is the one of its plan over the buckets
        for j, plan in zip(g.columns, g.plans):
            plans[j] = plan
    items: list[_Item] = [
        *groups,
        *((j, columns[j], plans[j]) for j in range(cols) if j not in grouped),
    ]
    if any(p.offset != 0 for p in plans):
        items.append((_SUM_ITEM, None, None))
    results = dict(_dot_items(cts, items, n2))
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
    return out


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
        Processes (rows are split evenly); default ``os.cpu_count()`` when
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
    n_workers = min(resolve_workers(workers, rows * cols, _PARALLEL_MIN_PRODUCTS), rows)
    cts = [mpz(c) for c in enc_d]
    if n_workers == 1:
        out = _dot_products_here(cts, X, n2)
    else:
        # by rows: every process gets a contiguous share of the rows (equal work, half the
        # ciphertexts each) and all columns; the partial sums are multiplied
        width = ciphertext_bytes_width(n2)
        payloads = [
            (join_ciphertexts(cts[start:end], width), width, n2, X[start:end])
            for start, end in chunk_bounds(rows, n_workers)
        ]
        parts = run_pool(_rows_worker, payloads, n_workers)
        out = [_product_all(list(column), n2) for column in zip(*parts)]
    logger.debug(
        "encrypted dot products: %d x %d, %d workers, %.3f s",
        rows,
        cols,
        n_workers,
        time.perf_counter() - started,
    )
    return out

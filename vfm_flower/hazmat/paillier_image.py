"""Hazmat: encrypted images ``[[X w]]`` packed into slots, and small encrypted mat-vecs.

No safety net (see :mod:`vfm_flower.hazmat`): callers guarantee the bounds, add the masks and
re-randomize before anything leaves.

``[[X w]]`` with ``w`` encrypted (``m`` ciphertexts, the bases) and ``X`` a plaintext
``rows x m`` integer matrix: row ``r`` goes to slot ``slot[r]`` of a packed layout
(``slots_per_ciphertext`` slots of ``slot_bits`` bits per ciphertext), i.e. the result is
``[[sum_r (X_r . w) 2**(slot_bits * t(r))]]`` per ciphertext, where ``t(r)`` is the slot's
position inside its ciphertext. Packing this way costs no per-row shift:

* **Shifted bases.** For every position ``t`` the bases are raised once to ``2**(slot_bits t)``
  (``m * bits(n)`` squarings in all), so a row at position ``t`` uses the bases of ``t``.
* **Lookup tables.** Each column is split into factors: a column with few distinct values is
  one factor (its values, minus the column minimum); any other column is split into ``w``-bit
  digits of ``x - min`` (one factor per digit, on the base raised to ``2**(w k)``). Factors
  are grouped so that the product of their sizes stays below a table budget, and a table holds
  every product of a group's factor values for each position. A row then costs one modular
  multiplication per group (about one per two to eight binary or small-integer columns, and
  two to three per continuous column), instead of one exponentiation per feature.
* The column minima are folded into the first table of each position.

Work is split across processes by slot position (tables of different positions are
independent); each process returns partial products per packed ciphertext, which are
multiplied together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfm_flower.hazmat.paillier_djn import chunk_bounds, resolve_workers, run_pool

__all__ = [
    "packed_row_images",
    "signed_power_products",
]

#: Largest lookup table (entries per group and position).
TABLE_BUDGET = 256
#: Default digit width for columns with many distinct values (the width is chosen per
#: column from the row count and the number of slot positions).
DIGIT_BITS = 6
#: A column with at most this many distinct values is one factor.
FEW_VALUES = 64
_NO_CODES = np.zeros(0, dtype=np.int64)
# Below this many row x group products a process pool costs more than it saves.
_PARALLEL_MIN_PRODUCTS = 40_000


@dataclass(frozen=True)
class _Factor:
    column: int
    shift: int  # the factor's base is the column's base raised to 2**shift
    values: tuple[int, ...]  # non-negative exponent per code
    codes: np.ndarray  # code per row (int64)


def _digit_bits(top: int, rows: int, positions: int) -> int:
    """Digit width minimizing row multiplications plus table entries (one table per
    position): ``rows * digits + positions * digits * 2**w``."""
    best, best_cost = DIGIT_BITS, None
    for w in range(3, 13):
        digits = -(-top // w)
        cost = rows * digits + positions * digits * (1 << w)
        if best_cost is None or cost < best_cost:
            best, best_cost = w, cost
    return best


def _factors(X: np.ndarray, positions: int = 1) -> tuple[list[_Factor], list[int]]:
    """Split every column into factors; returns the factors and the column minima."""
    factors: list[_Factor] = []
    minima: list[int] = []
    for j in range(X.shape[1]):
        column = X[:, j]
        low = int(column.min()) if column.size else 0
        minima.append(low)
        shifted = column - low
        uniques, inverse = np.unique(shifted, return_inverse=True)
        if uniques.size <= FEW_VALUES:
            factors.append(_Factor(j, 0, tuple(int(u) for u in uniques), inverse.astype(np.int64)))
            continue
        top = int(shifted.max()).bit_length()
        width = _digit_bits(top, column.size, positions)
        mask = (1 << width) - 1
        for k in range(0, top, width):
            digits = (shifted >> k) & mask
            factors.append(_Factor(j, k, tuple(range(1 << width)), digits.astype(np.int64)))
    return factors, minima


def _groups(factors: list[_Factor]) -> list[list[_Factor]]:
    """Greedy grouping by table size (smallest factors first)."""
    ordered = sorted(factors, key=lambda f: len(f.values))
    groups: list[list[_Factor]] = []
    size = 0
    for factor in ordered:
        k = max(len(factor.values), 1)
        if groups and size * k <= TABLE_BUDGET:
            groups[-1].append(factor)
            size *= k
        else:
            groups.append([factor])
            size = k
    return groups


def _group_codes(group: list[_Factor]) -> np.ndarray:
    code = np.zeros(group[0].codes.shape[0], dtype=np.int64)
    radix = 1
    for factor in group:
        code += factor.codes * radix
        radix *= len(factor.values)
    return code


def _power(base: mpz, exponent: int, nsquare: mpz) -> mpz:
    return gmpy2.powmod(base, exponent, nsquare) if exponent != 1 else base


def _tables_for_position(
    bases: Sequence[mpz], groups: list[list[_Factor]], minima: Sequence[int], nsquare: mpz
) -> list[list[mpz]]:
    """Every group's table on the bases of one position (minima folded into table 0)."""
    constant = mpz(1)
    for j, low in enumerate(minima):
        if low:
            constant = constant * gmpy2.powmod(bases[j], low, nsquare) % nsquare
    tables = []
    raised: dict[tuple[int, int], mpz] = {}
    for g, group in enumerate(groups):
        table = [constant if g == 0 else mpz(1)]
        for factor in group:
            key = (factor.column, factor.shift)
            if key not in raised:
                raised[key] = _power(bases[factor.column], 1 << factor.shift, nsquare)
            base = raised[key]
            powers = [mpz(1)] * len(factor.values)
            previous_value, previous = 0, mpz(1)
            for c, value in enumerate(factor.values):
                step = value - previous_value
                if step == 1:
                    current = previous * base % nsquare
                elif step == 0:
                    current = previous
                else:
                    current = previous * gmpy2.powmod(base, step, nsquare) % nsquare
                powers[c] = current
                previous_value, previous = value, current
            table = [entry * p % nsquare for p in powers for entry in table]
        tables.append(table)
    return tables


def _image_worker(payload: tuple) -> dict[int, mpz]:
    (bases0, groups, minima, codes, rows, slots, slot_bits, spc, t_lo, t_hi, nsquare) = payload
    nsquare = mpz(nsquare)
    bases = [gmpy2.powmod(b, mpz(1) << (slot_bits * t_lo), nsquare) for b in bases0]
    step = mpz(1) << slot_bits
    partial: dict[int, mpz] = {}
    positions = slots % spc
    for t in range(t_lo, t_hi):
        if t > t_lo:
            bases = [gmpy2.powmod(b, step, nsquare) for b in bases]
        picked = np.flatnonzero(positions == t)
        if not picked.size:
            continue
        tables = _tables_for_position(bases, groups, minima, nsquare)
        for i in picked:
            r = rows[i]
            acc = tables[0][codes[0][r]]
            for g in range(1, len(tables)):
                acc = acc * tables[g][codes[g][r]] % nsquare
            ct = int(slots[i]) // spc
            previous = partial.get(ct)
            partial[ct] = acc if previous is None else previous * acc % nsquare
    return partial


def packed_row_images(
    bases: Sequence[int],
    X_int: np.ndarray,
    slots: np.ndarray,
    *,
    slot_bits: int,
    slots_per_ciphertext: int,
    ciphertexts: int,
    nsquare: int,
    workers: int | None = None,
) -> list[mpz]:
    """``[[sum_r (X_r . w) 2**(slot_bits (slot_r mod spc))]]`` per packed ciphertext.

    Parameters
    ----------
    bases : Sequence[int]
        ``m`` ciphertexts ``[[w_j]]``.
    X_int : numpy.ndarray
        ``rows x m`` int64 matrix (any sign).
    slots : numpy.ndarray
        Slot of each row (distinct, ``0 <= slot < ciphertexts * slots_per_ciphertext``);
        ciphertext ``slot // spc``, position ``slot % spc``.
    slot_bits, slots_per_ciphertext, ciphertexts : int
        The packed layout. The caller guarantees that every slot's value fits.
    nsquare : int
        ``n**2``.
    workers : int, optional
        Processes (default: all cores for large images).

    Returns
    -------
    list[mpz]
        ``ciphertexts`` packed ciphertexts (``1``, the trivial encryption of zero, for a
        ciphertext without rows). Not re-randomized: add masks and re-randomize before sending.
    """
    X = np.asarray(X_int, dtype=np.int64)
    slot_arr = np.asarray(slots, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != len(bases) or slot_arr.shape != (X.shape[0],):
        raise ValueError("packed_row_images: shapes of bases, X and slots do not match")
    n2 = mpz(nsquare)
    if X.shape[0] == 0 or X.shape[1] == 0:
        return [mpz(1)] * ciphertexts
    factors, minima = _factors(X, positions=min(slots_per_ciphertext, X.shape[0]))
    groups = _groups(factors)
    codes = [_group_codes(g) for g in groups]
    # the workers need the factors' values only, not their per-row codes
    groups = [[replace(f, codes=_NO_CODES) for f in g] for g in groups]
    rows = np.arange(X.shape[0])
    order = np.argsort(slot_arr % slots_per_ciphertext, kind="stable")
    spc = slots_per_ciphertext
    base_list = [mpz(b) for b in bases]
    work = X.shape[0] * len(groups)
    n_workers = resolve_workers(workers, work, _PARALLEL_MIN_PRODUCTS)
    parts = max(min(n_workers, spc), 1)
    bounds = chunk_bounds(spc, parts)
    payloads = []
    for t_lo, t_hi in bounds:
        in_range = order[((slot_arr[order] % spc) >= t_lo) & ((slot_arr[order] % spc) < t_hi)]
        payloads.append(
            (
                base_list,
                groups,
                minima,
                codes,
                rows[in_range],
                slot_arr[in_range],
                slot_bits,
                spc,
                t_lo,
                t_hi,
                int(n2),
            )
        )
    results = (
        run_pool(_image_worker, payloads, parts)
        if parts > 1
        else [_image_worker(p) for p in payloads]
    )
    out = [mpz(1)] * ciphertexts
    for partial in results:
        for ct, value in partial.items():
            out[ct] = out[ct] * value % n2
    return out


def signed_power_products(
    bases: Sequence[int],
    exponents: np.ndarray | Sequence[Sequence[int]],
    nsquare: int,
    *,
    window: int = 4,
) -> list[mpz]:
    """``[[sum_j E[i, j] w_j]]`` for a small integer matrix ``E`` (any sign, any size).

    Straus multi-exponentiation: the ``2**window`` powers of every base (and of its inverse,
    for negative entries) are computed once and shared by all rows; a row then costs one
    squaring per exponent bit (shared by its bases) and one multiplication per non-zero
    window digit. For the ``m x 2m`` preconditioner products and the correction terms.
    """
    n2 = mpz(nsquare)
    cts = [mpz(b) for b in bases]
    rows = [[int(e) for e in row] for row in exponents]
    if not rows:
        return []
    size = 1 << window
    mask = size - 1
    tables: dict[tuple[int, bool], list[mpz]] = {}

    def table(j: int, negative: bool) -> list[mpz]:
        key = (j, negative)
        if key not in tables:
            base = gmpy2.invert(cts[j], n2) if negative else cts[j]
            powers = [mpz(1), base]
            for _ in range(2, size):
                powers.append(powers[-1] * base % n2)
            tables[key] = powers
        return tables[key]

    out = []
    for row in rows:
        terms = [(j, e) for j, e in enumerate(row) if e]
        if not terms:
            out.append(mpz(1))
            continue
        top = max(abs(e) for _, e in terms).bit_length()
        digits = -(-top // window)
        acc = mpz(1)
        for k in range(digits - 1, -1, -1):
            if k != digits - 1:
                acc = gmpy2.powmod(acc, size, n2)
            shift = k * window
            for j, e in terms:
                digit = (abs(e) >> shift) & mask
                if digit:
                    acc = acc * table(j, e < 0)[digit] % n2
        out.append(acc)
    return out


def slots_for(value_bits: int, statistical_bits: int, terms: int, key_bits: int) -> tuple[int, int]:
    """``(slot_bits, slots_per_ciphertext)`` for masked sums of ``terms`` slot values.

    A slot holds a sum of ``terms`` non-negative parts each below ``2**(value_bits +
    statistical_bits)`` (offset values and masks), so ``slot_bits = value_bits +
    statistical_bits + ceil(log2(terms)) + 1``; the packed plaintext stays below
    ``2**(key_bits - 1) < n``.
    """
    slot_bits = value_bits + statistical_bits + max(math.ceil(math.log2(max(terms, 1))), 0) + 1
    spc = (key_bits - 1) // slot_bits
    if spc < 1:
        raise ValueError(f"a {slot_bits}-bit slot does not fit a {key_bits}-bit plaintext")
    return slot_bits, spc

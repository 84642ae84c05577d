"""Secure segment statistics: count and mean of a target per value of a segment column.

The protocol core (free of Flower) of the ``segments`` job. For the customers every party
holds, per value of one party's categorical column (the *segment* column, held by ``H``): how
many there are and the mean of a *target* another or the same party holds (``G``): the label
owner's label (the conversion rate) or a numeric column (average spend), clipped to the
bounds the agreement signs. Everything is computed under the label owner's (LO's) Paillier
key on vectors in which only the joint customers count (the LO, who knows them, encrypts 1
for a joint customer and 0 for anyone else: a passive party never learns which are joint).

Who learns what, by where the columns are:

- ``H`` is a passive party: it adds the encrypted per-row values of each of its segments
  (:func:`group_sums`) and so holds ``[[C_s]]`` (customers) and ``[[S_s]]`` (target sum) per
  value ``s``, which it cannot read. Without noise, the LO learns only which cells reach the
  minimum cohort, by private equality tests (:func:`cohort_tests`: it learns ``C_s < k`` and
  nothing else), and then, under masks ``H`` removes only for the cells released
  (:func:`mask_cells`, :func:`unmask_cells`), their exact figures. With a privacy budget,
  ``H`` adds the noise (:func:`noise_cells`) and the LO sees noised figures only.
- ``H`` is the LO: it knows each joint customer's segment and so the exact counts; if the
  target is a passive party's, that party computes the sums on the encrypted indicators of
  each released cell the LO sends it, and adds the sums' noise.
- ``G``, a passive target holder other than ``H``, multiplies the LO's encrypted joint
  indicators by its values and forwards both, slot by slot, to ``H``.

A segment holder learns nothing about the target (it sees ciphertexts only), the target
holder nothing about the segments, the server nothing but sizes. Released cells respect the
minimum cohort with complementary suppression (:func:`release_cells`).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfm_flower.errors import DataError
from vfm_flower.policy import withhold_small_table
from vfm_flower.privacy import NoiseSpec, integer_noise

__all__ = [
    "FRACTION_BITS",
    "MASK_MARGIN_BITS",
    "TargetEncoding",
    "cohort_candidates",
    "cell_noise",
    "mask_values",
    "release_cells",
]

FRACTION_BITS = 16
"""Fixed-point scale of a numeric target (``2**-16``); a 0/1 label is encoded the same way."""

MASK_MARGIN_BITS = 64
"""Statistical hiding of a masked count or sum: the mask has this many bits more than the
value's bound (the masked value's distribution is within ``2**-64`` of the mask's)."""


@dataclass(frozen=True)
class TargetEncoding:
    """A target clipped to ``[lo, hi]`` and shifted to ``[0, hi - lo]`` in fixed point.

    The sum of shifted values is never negative, so sums pack into lanes without borrows;
    the mean is ``lo + sum / (count * 2**16)``. One customer changes a cell's sum by at most
    ``sensitivity`` (the noise's scale follows it).
    """

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise DataError(
                f"target bounds [{self.lo}, {self.hi}]: need finite target-min < target-max"
            )

    @property
    def sensitivity(self) -> int:
        return int(math.ceil((self.hi - self.lo) * (1 << FRACTION_BITS)))

    @property
    def value_bits(self) -> int:
        return max(self.sensitivity.bit_length(), 1)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Fixed-point shifted values (int64) and how many were clipped."""
        v = np.asarray(values, dtype=np.float64)
        clipped = int(np.count_nonzero((v < self.lo) | (v > self.hi)))
        shifted = (np.clip(v, self.lo, self.hi) - self.lo) * (1 << FRACTION_BITS)
        return np.rint(shifted).astype(np.int64), clipped

    def mean(self, total: float, count: float) -> float | None:
        if count <= 0:
            return None
        return self.lo + float(total) / (float(count) * (1 << FRACTION_BITS))


def cohort_candidates(cells: int, min_cohort: int) -> list[list[int]]:
    """Per cell, the counts that fail the minimum cohort: ``0 .. k - 1`` (each test list
    shuffled with OS randomness, so the order of a match tells nothing)."""
    out = []
    for _ in range(cells):
        values = list(range(min_cohort))
        for i in range(len(values) - 1, 0, -1):
            j = secrets.randbelow(i + 1)
            values[i], values[j] = values[j], values[i]
        out.append(values)
    return out


def mask_values(count: int, value_bits: int) -> list[int]:
    """Fresh masks (OS randomness) that hide non-negative values below ``2**value_bits``."""
    bits = value_bits + MASK_MARGIN_BITS
    return [secrets.randbits(bits) for _ in range(count)]


def cell_noise(spec: NoiseSpec, sensitivity: float, count: int) -> list[int]:
    """Integer noise for ``count`` cells of a query of this sensitivity."""
    return [int(v) for v in integer_noise(spec, sensitivity, count)]


def release_cells(
    values: Sequence[str],
    counts: Sequence[float | None],
    sums: Sequence[float | None],
    *,
    encoding: TargetEncoding,
    min_cohort: int,
    withheld: Sequence[int] | None = None,
    failing: Sequence[int] = (),
    binary: bool = False,
    shape: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The released table: per value, ``segment``, ``suppressed`` and, unless suppressed,
    ``customers`` and ``rate`` (0/1 target) or ``mean``.

    ``withheld``: the cells decided by private tests (exact release without counts in hand),
    of which ``failing`` are under the minimum cohort and the others withheld with them;
    otherwise the minimum-cohort rule with complementary suppression runs on ``counts``
    (exact or noised), along every row and column of a cross of ``shape``
    (:func:`vfm_flower.policy.withhold_small_table`).
    """
    if withheld is None:
        known = [max(int(round(c)), 0) if c is not None else 0 for c in counts]
        primary, secondary = withhold_small_table(known, min_cohort, shape)
    else:
        primary = set(failing) & set(withheld)
        secondary = set(withheld) - primary
    out: list[dict[str, Any]] = []
    for i, value in enumerate(values):
        if i in primary or i in secondary or counts[i] is None or sums[i] is None:
            out.append(
                {
                    "segment": value,
                    "suppressed": True,
                    "reason": f"fewer than {min_cohort} customers (minimum cohort)"
                    if i in primary
                    else "withheld with the small segment(s): the total would reveal them",
                }
            )
            continue
        count = float(counts[i])  # type: ignore[arg-type]
        mean = encoding.mean(float(sums[i]), count)  # type: ignore[arg-type]
        if mean is not None:
            mean = min(max(mean, encoding.lo), encoding.hi)
        entry: dict[str, Any] = {
            "segment": value,
            "suppressed": False,
            "customers": int(round(count)),
            ("rate" if binary else "mean"): mean,
        }
        out.append(entry)
    return out

"""Small helpers of the reports: input checks, curves, rank groups with the minimum cohort,
and the wording helpers the summaries share. No report content is decided here: that is
:mod:`vfm_flower.report`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass


_DECILES = 10
#: The groupings tried, finest first: deciles, quintiles, quartiles, halves.
_RANK_GROUPS = (10, 5, 4, 2)
_MAX_ROC_STEPS = 100
_CONFUSION_CELLS = ("tn", "fp", "fn", "tp")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _vector(name: str, values: Any, n: int | None = None) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must hold finite numbers only")
    if n is not None and v.size != n:
        raise ValueError(f"{name} has {v.size} rows, the hold-out labels have {n}")
    return v


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_min_cohort_value(min_cohort: Any) -> int:
    if isinstance(min_cohort, bool) or int(min_cohort) != min_cohort or int(min_cohort) < 1:
        raise ValueError(f"min_cohort must be a positive integer, got {min_cohort!r}")
    return int(min_cohort)


def _curve(name: str, values: Sequence[float]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold numbers, got {v!r}") from None
        out.append(f if math.isfinite(f) else None)
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700.0, 700.0)))


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def _top_cut(score: np.ndarray, share: float = 0.1) -> float:
    """Score of the last row inside the best ``share`` of rows (ranked by score)."""
    k = max(1, int(np.rint(share * score.size)))
    return float(np.sort(score)[::-1][k - 1])


def _plain(value: Any) -> Any:
    """JSON-native copy: numpy scalars to Python, non-finite floats to ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _assert_no_feature_detail(report: Mapping[str, Any], feature_names: Iterable[str]) -> None:
    """Refuse a shared report whose free-text names (party, contribution labels) are features.

    Everything else in the report is fixed vocabulary or numbers; feature weights never enter
    it. Only the caller-supplied names are checked, so a feature that happens to be called
    like a report key (``"count"``) is not a false alarm.
    """
    names = {str(f) for f in feature_names}
    supplied = {str(report.get("party", ""))}
    supplied.update(str(k) for k in report.get("rows_per_party", {}) or {})
    supplied.update(str(k) for k in report.get("contribution", {}) or {})
    leaked = sorted(names & supplied)
    if leaked:
        raise ValueError(
            f"the shared report would name {len(leaked)} feature(s) of a party (a party or "
            "contribution label equal to a feature name): feature-level detail belongs in "
            "the party's own report only"
        )


def _cumulative_at(
    score: np.ndarray, values: Sequence[np.ndarray], ranks: np.ndarray
) -> list[np.ndarray]:
    """Sums of ``values`` over the best ``r`` rows by score, for each ``r`` in ``ranks``.

    A tie group straddling a rank is split proportionally (the expected value under random
    tie-breaking), exactly as :func:`vfm_flower.metrics.gain_lift_by_decile` does, so the
    result never depends on row order and agrees with that function at decile boundaries.
    """
    n = score.size
    order = np.argsort(-score, kind="mergesort")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]
    cum_rows = np.r_[0, ends].astype(np.float64)
    at = np.asarray(ranks, dtype=np.float64)
    out = []
    for v in values:
        cum = np.r_[0.0, np.cumsum(np.add.reduceat(v[order], starts))]
        out.append(np.interp(at, cum_rows, cum))
    return out


def _decile_bounds(n: int, groups: int = _DECILES) -> np.ndarray:
    """Group boundaries in ranks (deciles by default), as
    :func:`vfm_flower.metrics.gain_lift_by_decile` cuts them."""
    return np.rint(np.arange(groups + 1) * n / groups).astype(np.int64)


def _untied(score: np.ndarray) -> np.ndarray:
    """The ranking of ``score`` with ties broken in a random order (OS entropy): a table cut
    on it holds whole rows and whole counts in each group. The label owner's own-data model
    often has few distinct scores; split proportionally, a tie group straddling a cut would
    let a reader solve for a smaller distinct group before it."""
    rng = np.random.default_rng(secrets.randbits(128))
    order = np.lexsort((rng.random(score.size), -score))
    ranked = np.empty(score.size, dtype=np.float64)
    ranked[order] = -np.arange(score.size, dtype=np.float64)
    return ranked


def rank_groups(n: int, min_cohort: int) -> int:
    """How many equal-count groups of the score ranking the gain, lift and decile tables use:
    deciles when every decile covers at least ``min_cohort`` rows, else the finest of
    quintiles, quartiles and halves that does (a small hold-out still gets its curves, on
    coarser groups), else 0 (the tables are withheld)."""
    for groups in _RANK_GROUPS:
        if n >= groups and int(np.diff(_decile_bounds(n, groups)).min()) >= min_cohort:
            return groups
    return 0


def _group_share(groups: int) -> str:
    """``"10%"`` for deciles, ``"20%"`` for quintiles..."""
    return f"{100 / groups:.0f}%"


def _subdivide(bounds: Sequence[int], n: int, min_cohort: int, max_steps: int) -> np.ndarray:
    """Split each interval between ``bounds`` into near-equal steps of >= min_cohort rows.

    The result contains every one of ``bounds`` (so tables cut at ``bounds`` and tables cut at
    the result can never be differenced into a group below ``min_cohort`` rows) and has at
    most about ``max_steps`` steps overall.
    """
    out: list[int] = [int(bounds[0])]
    for a, b in zip(bounds[:-1], bounds[1:]):
        length = int(b) - int(a)
        steps = max(1, min(length // min_cohort, math.ceil(max_steps * length / n)))
        out.extend(int(a) + int(np.rint(j * length / steps)) for j in range(1, steps + 1))
    return np.array(out, dtype=np.int64)


def _possessive(party: str) -> str:
    """``"the insurer's"`` for a role name, ``"Acme's"`` for a proper name."""
    return f"{party}'s" if party[:1].isupper() else f"the {party}'s"


def _agent_noun(verb: str) -> str:
    verb = verb.strip() or "respond"
    return f"{verb}rs" if verb.endswith("e") else f"{verb}ers"


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f}%"

"""Evaluation metrics in plain numpy, in the words marketing teams use (gain, lift, deciles).

All functions take labels ``y`` (0/1 for classification, floats for regression) and scores or
probabilities in row order; they raise ``ValueError`` with a clear message on inputs that make
a metric undefined (one class only for AUC, empty inputs, mismatched lengths). Ties in scores
are handled exactly: ROC AUC with mid-ranks (the probability that a random positive outranks a
random negative, ties counting one half, as scikit-learn), gain and lift by splitting a tie
group that straddles a decile boundary proportionally (the expected value under random
tie-breaking), so no result depends on row order.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = [
    "roc_auc",
    "log_loss",
    "r2_score",
    "precision_recall_at",
    "confusion_at",
    "gain_lift_by_decile",
    "top_decile_lift",
    "calibration_bins",
]


def _vectors(y: Any, score: Any, *, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    yv = np.asarray(y, dtype=np.float64).ravel()
    sv = np.asarray(score, dtype=np.float64).ravel()
    if yv.size != sv.size:
        raise ValueError(f"labels have {yv.size} rows, scores have {sv.size}")
    if yv.size == 0:
        raise ValueError("no rows to evaluate")
    if not (np.all(np.isfinite(yv)) and np.all(np.isfinite(sv))):
        raise ValueError("labels and scores must be finite numbers")
    if binary and not np.all((yv == 0) | (yv == 1)):
        raise ValueError("labels must be 0/1")
    return yv, sv


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(y: Any, score: Any) -> float:
    """Area under the ROC curve (exact, ties counted one half; equals scikit-learn's).

    Parameters
    ----------
    y : array_like
        Labels 0/1.
    score : array_like
        Scores, higher meaning more likely positive.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When only one class is present.
    """
    yv, sv = _vectors(y, score, binary=True)
    pos = yv == 1
    n_pos = int(pos.sum())
    n_neg = yv.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes among the rows")
    ranks = _average_ranks(sv)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: Any, p: Any) -> float:
    """Mean log loss of probabilities ``p`` (clipped to ``[eps, 1 - eps]``, eps of float64).

    Parameters
    ----------
    y : array_like
        Labels 0/1.
    p : array_like
        Predicted probabilities of the positive class.
    """
    yv, pv = _vectors(y, p, binary=True)
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("probabilities must be in [0, 1]")
    eps = np.finfo(np.float64).eps
    pv = np.clip(pv, eps, 1.0 - eps)
    return float(-np.mean(yv * np.log(pv) + (1.0 - yv) * np.log1p(-pv)))


def r2_score(y: Any, prediction: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``.

    A constant ``y`` gives 1.0 for a perfect prediction and 0.0 otherwise (as scikit-learn).
    """
    yv, pv = _vectors(y, prediction, binary=False)
    ss_res = float(np.sum((yv - pv) ** 2))
    ss_tot = float(np.sum((yv - yv.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def confusion_at(y: Any, score: Any, threshold: float) -> dict[str, int]:
    """Confusion counts when rows with ``score >= threshold`` are predicted positive.

    Returns
    -------
    dict
        ``{"tn", "fp", "fn", "tp"}`` as ints.
    """
    yv, sv = _vectors(y, score, binary=True)
    predicted = sv >= threshold
    actual = yv == 1
    return {
        "tn": int(np.sum(~predicted & ~actual)),
        "fp": int(np.sum(predicted & ~actual)),
        "fn": int(np.sum(~predicted & actual)),
        "tp": int(np.sum(predicted & actual)),
    }


def precision_recall_at(y: Any, score: Any, threshold: float) -> tuple[float, float]:
    """Precision and recall when rows with ``score >= threshold`` are predicted positive.

    Returns
    -------
    (precision, recall) : tuple of float
        Precision is 0.0 when no row is predicted positive, recall 0.0 without positives
        (scikit-learn's ``zero_division=0``).
    """
    c = confusion_at(y, score, threshold)
    predicted = c["tp"] + c["fp"]
    actual = c["tp"] + c["fn"]
    precision = c["tp"] / predicted if predicted else 0.0
    recall = c["tp"] / actual if actual else 0.0
    return float(precision), float(recall)


def gain_lift_by_decile(y: Any, score: Any, bins: int = 10) -> list[dict[str, float | int]]:
    """Cumulative gain and lift per decile of score (highest scores first).

    Parameters
    ----------
    y : array_like
        Labels 0/1.
    score : array_like
        Scores or probabilities.
    bins : int
        Number of equal-size groups (10: deciles).

    Returns
    -------
    list of dict
        One dict per decile, best first, with ``decile`` (1-based), ``rows``,
        ``cumulative_rows``, ``positives``, ``cumulative_positives`` (fractional when a tie
        group straddles a boundary), ``response_rate``, ``cumulative_response_rate``,
        ``lift`` (decile response rate / overall rate), ``cumulative_lift`` and
        ``cumulative_gain`` (share of all positives captured so far).

    Raises
    ------
    ValueError
        With fewer rows than bins or without any positive.
    """
    yv, sv = _vectors(y, score, binary=True)
    n = yv.size
    if bins < 1 or n < bins:
        raise ValueError(f"need at least {bins} rows for {bins} groups, got {n}")
    total_pos = float(yv.sum())
    if total_pos == 0:
        raise ValueError("gain and lift need at least one positive row")
    base_rate = total_pos / n
    order = np.argsort(-sv, kind="mergesort")
    ordered = sv[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]
    group_pos = np.add.reduceat(yv[order], starts)
    cum_rows = np.r_[0, ends].astype(np.float64)
    cum_pos = np.r_[0.0, np.cumsum(group_pos)]
    bounds = np.rint(np.arange(bins + 1) * n / bins).astype(np.int64)
    captured = np.interp(bounds.astype(np.float64), cum_rows, cum_pos)
    out: list[dict[str, float | int]] = []
    for i in range(1, bins + 1):
        rows = int(bounds[i] - bounds[i - 1])
        positives = float(captured[i] - captured[i - 1])
        cum = float(captured[i])
        rate = positives / rows if rows else 0.0
        cum_rate = cum / float(bounds[i])
        out.append(
            {
                "decile": i,
                "rows": rows,
                "cumulative_rows": int(bounds[i]),
                "positives": positives,
                "cumulative_positives": cum,
                "response_rate": rate,
                "cumulative_response_rate": cum_rate,
                "lift": rate / base_rate,
                "cumulative_lift": cum_rate / base_rate,
                "cumulative_gain": cum / total_pos,
            }
        )
    return out


def top_decile_lift(y: Any, score: Any) -> float:
    """Response rate of the top 10 % of scores divided by the overall response rate."""
    return float(gain_lift_by_decile(y, score)[0]["lift"])


def calibration_bins(
    y: Any,
    p: Any,
    bins: int = 10,
    *,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> list[dict[str, float | int | None]]:
    """Reliability table: mean predicted probability vs observed rate per probability bin.

    Bins follow scikit-learn's ``calibration_curve`` (same edges and row assignment), but
    empty bins are kept with ``None`` figures so the table always has ``bins`` rows.

    Parameters
    ----------
    y : array_like
        Labels 0/1.
    p : array_like
        Predicted probabilities in [0, 1].
    bins : int
        Number of bins.
    strategy : {"uniform", "quantile"}
        Equal-width bins on [0, 1] or bins with equal numbers of rows (better for rare
        positives, where most uniform bins are empty).

    Returns
    -------
    list of dict
        Per bin: ``bin``, ``lower``, ``upper``, ``count``, ``mean_predicted``,
        ``observed_rate``.
    """
    yv, pv = _vectors(y, p, binary=True)
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("probabilities must be in [0, 1]")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(pv, np.linspace(0.0, 1.0, bins + 1) * 100)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], pv)
    out: list[dict[str, float | int | None]] = []
    for b in range(bins):
        in_bin = ids == b
        count = int(in_bin.sum())
        out.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_predicted": float(pv[in_bin].mean()) if count else None,
                "observed_rate": float(yv[in_bin].mean()) if count else None,
            }
        )
    return out

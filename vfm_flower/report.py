"""Phase 5 reporting: the result owner's marketing report, each party's own report, segments.

Three outputs, with different audiences and different contents:

- The **shared report** (``report.json`` + ``report.html``), built by the result owner from its
  hold-out rows: ranking and calibration metrics, gain and lift by decile, the training curve,
  row counts and each party's contribution (the metric lost when that party's part of the
  model is left out). It holds *no* feature-level detail of any party: no feature names, no
  weights. It is safe to pass on to the other parties of the collaboration.
- A **party report** (``party_report.json`` + ``party_report.html``) per party, with that
  party's own feature names and weights and nothing about anyone else.
- **Audience segments** for scoring: rank rows by score into deciles or named bands
  (``"top10,10-30,rest"``) and summarise each band.

Minimum cohort
--------------
Every released aggregate covers at least ``min_cohort`` rows (the agreement's term):

- a whole hold-out below ``min_cohort`` rows is refused
  (:class:`~vfm_flower.errors.PolicyViolation`, rule ``"min_cohort"``);
- a decile, confusion-matrix cell or segment with fewer rows is withheld: absent from its
  table (segments keep their name, marked ``suppressed``) and listed in the report's
  ``suppressed`` list (what was withheld and why, never the small count);
- complementary suppression: figures that would let a reader recover a withheld one by
  subtraction from released totals are withheld too. Deciles carry cumulative figures, so one
  small decile withholds the whole decile table; a 2x2 confusion matrix is recoverable from
  any one cell and its margins, so one small cell withholds the matrix with precision and
  recall; for segments, further segments (smallest first) are withheld until the withheld
  ones together cover at least ``min_cohort`` rows (or none);
- one grid of rank cuts: the deciles, the threshold of the confusion matrix, the ROC curve
  and the calibration bins all cut the score ranking at boundaries of one grid whose steps
  cover at least ``min_cohort`` rows (at most about 100 steps), so no two tables can be
  differenced into a smaller group (a threshold that would cut the ranking closer than that
  to a decile boundary withholds the confusion matrix), and the ROC curve cannot be read back
  into row-level labels. Calibration bins are therefore rank groups (the deciles, or the ROC
  steps when the deciles are withheld), not probability-percentile bins.

The HTML pages are built from the JSON content only (nothing in a page is not in its JSON),
open offline (no external resource, no script) and embed their charts as PNG data URIs drawn
with :class:`matplotlib.figure.Figure` (no pyplot, no global backend state).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfm_flower import metrics
from vfm_flower.errors import ConfigurationError, PolicyViolation

__all__ = [
    "EvaluationInputs",
    "build_shared_report",
    "write_report",
    "build_party_report",
    "write_party_report",
    "assign_segments",
    "segment_summaries",
    "headline",
    "REPORT_JSON",
    "REPORT_HTML",
    "PARTY_REPORT_JSON",
    "PARTY_REPORT_HTML",
]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PARTY_REPORT_JSON = "party_report.json"
PARTY_REPORT_HTML = "party_report.html"

_SHARED_SCHEMA = "vfm-flower/shared-report/1"
_PARTY_SCHEMA = "vfm-flower/party-report/1"
_DECILES = 10
_MAX_ROC_STEPS = 100
_PARTY_CHART_FEATURES = 20
_TOP_FEATURES = 10
_CONFUSION_CELLS = ("tn", "fp", "fn", "tp")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EvaluationInputs:
    """Everything the result owner knows after training, for the shared report.

    Attributes
    ----------
    model : str
        ``"logistic"`` or ``"linear"``.
    party : str
        The result owner (the label owner by default).
    y_holdout : numpy.ndarray
        Hold-out labels: 0/1 for logistic, targets for linear.
    score_holdout : numpy.ndarray
        Federated linear score ``z`` on the same rows (logits for logistic).
    score_own_only : numpy.ndarray
        Score of a model trained on the result owner's own columns alone, same rows.
    score_without : Mapping[str, numpy.ndarray]
        Per-party contribution: a label (a party name, or a name for a group of parties, never
        a feature name) -> the score ``z`` with that part of the model left out.
    objective_curve : Sequence[float]
        Training objective per iteration.
    holdout_loss_curve : Sequence[float]
        Hold-out loss per iteration.
    aligned_rows : int
        Rows in the intersection of all parties.
    rows_per_party : Mapping[str, int]
        Each party's own row count.
    training_rows : int
        Aligned rows used for training (the others are the hold-out).
    min_cohort : int
        The agreement's minimum cohort size.
    own_feature_weights : Mapping[str, float]
        The result owner's own feature weights. They never enter the shared report: they are
        only used to check that no feature name leaked into it (they belong in the result
        owner's party report, see :func:`build_party_report`).
    threshold : float or None
        Logistic only: the *predicted probability* at or above which a row counts as predicted
        positive for precision, recall and the confusion matrix. ``None``: the probability at
        the top-decile cut of the score (the best-scored 10 % of rows are predicted positive;
        rows tied with the cut are included).
    outcome : str
        Verb naming the positive outcome in the plain-language texts (``"buy"`` gives
        "buy 3.4x as often as average" and "ranks buyers"); default ``"respond"``.
    """

    model: str
    party: str
    y_holdout: np.ndarray
    score_holdout: np.ndarray
    score_own_only: np.ndarray
    score_without: Mapping[str, np.ndarray]
    objective_curve: Sequence[float]
    holdout_loss_curve: Sequence[float]
    aligned_rows: int
    rows_per_party: Mapping[str, int]
    training_rows: int
    min_cohort: int
    own_feature_weights: Mapping[str, float]
    threshold: float | None = None
    outcome: str = "respond"


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


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_bytes(report: Mapping[str, Any]) -> bytes:
    text = json.dumps(_plain(report), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _withheld_union(
    rows: Sequence[int], small: set[int], min_cohort: int
) -> tuple[set[int], set[int]]:
    """Primary and complementary suppression over disjoint groups with known totals.

    Parameters
    ----------
    rows : Sequence[int]
        Row count of each group (groups partition the rows).
    small : set of int
        Indices of the groups below ``min_cohort``.
    min_cohort : int
        Minimum cohort.

    Returns
    -------
    (primary, secondary) : tuple of set of int
        ``primary`` = ``small``; ``secondary``: further groups, smallest first, withheld so
        that the withheld groups together cover 0 or at least ``min_cohort`` rows.
    """
    withheld = set(small)
    secondary: set[int] = set()
    remaining = sorted((r, i) for i, r in enumerate(rows) if i not in withheld)
    while remaining and 0 < sum(rows[i] for i in withheld) < min_cohort:
        _, i = remaining.pop(0)
        withheld.add(i)
        secondary.add(i)
    return set(small), secondary


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


def _decile_bounds(n: int) -> np.ndarray:
    """Decile boundaries in ranks, as :func:`vfm_flower.metrics.gain_lift_by_decile`."""
    return np.rint(np.arange(_DECILES + 1) * n / _DECILES).astype(np.int64)


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


# --------------------------------------------------------------------------------------------
# Shared report
# --------------------------------------------------------------------------------------------


def build_shared_report(inputs: EvaluationInputs) -> dict[str, Any]:
    """The shared report (``report.json`` content) from the result owner's hold-out rows.

    Parameters
    ----------
    inputs : EvaluationInputs
        Labels and scores of the hold-out rows, curves and counts.

    Returns
    -------
    dict
        JSON-native content. Logistic: ``auc``, ``auc_label_owner_only``, ``log_loss``,
        ``threshold`` (a probability), ``threshold_score`` (the same cut on the logit scale),
        ``threshold_rule``, ``precision``, ``recall``, ``confusion`` (``tn/fp/fn/tp``),
        ``calibration`` (equal-count bins on the rank grid, lowest predictions first:
        ``bin``, ``count``, ``mean_predicted``, ``observed_rate``), ``gain_lift`` (per decile,
        as :func:`vfm_flower.metrics.gain_lift_by_decile`), ``top_decile_lift``,
        ``roc_curve`` (``cumulative_rows``, ``fpr``, ``tpr`` on the rank grid),
        ``holdout_response_rate``,
        ``contribution`` (label -> ``auc_without``, ``auc_drop``). Linear: ``r2``,
        ``r2_label_owner_only``, ``rmse``, ``rmse_label_owner_only``, ``holdout_mean``,
        ``deciles`` (mean predicted vs mean actual per decile of prediction),
        ``top_decile_mean``, ``contribution`` (label -> ``r2_without``, ``r2_drop``). Both:
        ``schema``, ``model``, ``party``, ``min_cohort``, ``aligned_rows``,
        ``rows_per_party``, ``training_rows``, ``holdout_rows``, ``training_curve``
        (``objective``, ``holdout_loss``), ``summary`` (plain-language text) and
        ``suppressed`` (what was withheld under the minimum cohort, and why). Withheld
        figures are ``None`` (scalars) or absent (table rows).

    Raises
    ------
    PolicyViolation
        Rule ``"min_cohort"``: the hold-out has fewer than ``min_cohort`` rows.
    ValueError
        Malformed inputs (lengths, non-finite values, one class only for logistic, a
        contribution label equal to one of the result owner's feature names).
    """
    if inputs.model not in ("logistic", "linear"):
        raise ValueError(f"model must be 'logistic' or 'linear', got {inputs.model!r}")
    if not str(inputs.party):
        raise ValueError("party must name the result owner")
    min_cohort = _check_min_cohort_value(inputs.min_cohort)
    y = _vector("y_holdout", inputs.y_holdout)
    n = y.size
    if n < min_cohort:
        raise PolicyViolation(
            "min_cohort",
            f"hold-out metrics would cover {n} rows, below the minimum cohort of {min_cohort}: "
            "use a larger hold-out",
        )
    z = _vector("score_holdout", inputs.score_holdout, n)
    own = _vector("score_own_only", inputs.score_own_only, n)
    without = {
        str(label): _vector(f"score_without[{label!r}]", s, n)
        for label, s in inputs.score_without.items()
    }
    rows_per_party = {
        str(p): _count(f"rows_per_party[{p!r}]", r) for p, r in inputs.rows_per_party.items()
    }
    common: dict[str, Any] = {
        "schema": _SHARED_SCHEMA,
        "model": inputs.model,
        "party": str(inputs.party),
        "min_cohort": min_cohort,
        "aligned_rows": _count("aligned_rows", inputs.aligned_rows),
        "rows_per_party": rows_per_party,
        "training_rows": _count("training_rows", inputs.training_rows),
        "holdout_rows": int(n),
        "training_curve": {
            "objective": _curve("objective_curve", inputs.objective_curve),
            "holdout_loss": _curve("holdout_loss_curve", inputs.holdout_loss_curve),
        },
    }
    if inputs.model == "logistic":
        body = _logistic_body(inputs, y, z, own, without, min_cohort)
    else:
        body = _linear_body(inputs, y, z, own, without, min_cohort)
    report = _plain({**common, **body})
    _assert_no_feature_detail(report, inputs.own_feature_weights)
    return report


def _logistic_body(
    inputs: EvaluationInputs,
    y: np.ndarray,
    z: np.ndarray,
    own: np.ndarray,
    without: Mapping[str, np.ndarray],
    min_cohort: int,
) -> dict[str, Any]:
    n = y.size
    suppressed: list[dict[str, str]] = []
    small_reason = f"fewer than {min_cohort} rows (minimum cohort)"

    auc = metrics.roc_auc(y, z)
    auc_own = metrics.roc_auc(y, own)
    p = _sigmoid(z)
    log_loss = metrics.log_loss(y, p)

    # Threshold: a probability; applied on the logit scale so saturation of the sigmoid
    # cannot merge distinct scores.
    if inputs.threshold is None:
        z_cut = _top_cut(z)
        threshold = float(_sigmoid(np.array([z_cut]))[0])
        rule = "top decile"
    else:
        threshold = float(inputs.threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold!r}")
        z_cut = _logit(threshold)
        rule = "given"

    # Every rank-based table (deciles, confusion threshold, ROC steps, calibration bins) is
    # cut on one grid of rank boundaries, at least min_cohort rows apart, so that no two
    # tables can be differenced into a group below the minimum cohort.

    # Gain and lift by decile: cumulative figures, so all deciles go if one is small.
    gain_lift: list[dict[str, Any]] = []
    top_lift: float | None = None
    bounds: set[int] = {0, n}
    if n < _DECILES:
        suppressed.append(
            {"aggregate": "gain_lift", "item": "all deciles", "reason": "fewer than 10 rows"}
        )
    else:
        table = metrics.gain_lift_by_decile(y, z, bins=_DECILES)
        small = {int(d["decile"]) for d in table if d["rows"] < min_cohort}
        if small:
            for d in table:
                k = int(d["decile"])
                suppressed.append(
                    {
                        "aggregate": "gain_lift",
                        "item": f"decile {k}",
                        "reason": small_reason
                        if k in small
                        else (
                            "withheld with the small decile(s): cumulative figures would "
                            "reveal them by subtraction"
                        ),
                    }
                )
            suppressed.append(
                {
                    "aggregate": "top_decile_lift",
                    "item": "top_decile_lift",
                    "reason": "computed from a withheld decile",
                }
            )
        else:
            gain_lift = [dict(d) for d in table]
            top_lift = metrics.top_decile_lift(y, z)
            bounds.update(int(b) for b in _decile_bounds(n))

    # Confusion matrix: a 2x2 table is recoverable from one cell and its margins, so one
    # small cell withholds the matrix, precision and recall.
    confusion: dict[str, int] | None = metrics.confusion_at(y, z, z_cut)
    precision: float | None = None
    recall: float | None = None
    small_cells = [c for c in _CONFUSION_CELLS if confusion[c] < min_cohort]
    predicted = confusion["tp"] + confusion["fp"]
    near = [b for b in bounds if b != predicted and abs(b - predicted) < min_cohort]
    if small_cells or near:
        for c in _CONFUSION_CELLS:
            if small_cells:
                reason = (
                    small_reason
                    if c in small_cells
                    else ("withheld with the small cell(s): the margins would reveal them")
                )
            else:
                reason = (
                    f"the threshold cuts the ranking fewer than {min_cohort} rows away from a "
                    "decile boundary: the difference would reveal a small group"
                )
            suppressed.append({"aggregate": "confusion", "item": c, "reason": reason})
        for item in ("precision", "recall"):
            suppressed.append(
                {"aggregate": item, "item": item, "reason": "computed from a withheld cell"}
            )
        confusion = None
    else:
        precision, recall = metrics.precision_recall_at(y, z, z_cut)
        bounds.add(predicted)

    # ROC curve on the grid refined to steps of at least min_cohort rows.
    coarse = np.array(sorted(bounds), dtype=np.int64)
    grid = _subdivide(coarse, n, min_cohort, _MAX_ROC_STEPS)
    (cum_pos,) = _cumulative_at(z, [y], grid)
    n_pos = float(y.sum())
    n_neg = float(n) - n_pos
    roc = [
        {"cumulative_rows": int(r), "fpr": (float(r) - tp) / n_neg, "tpr": tp / n_pos}
        for r, tp in zip(grid, cum_pos)
    ]

    # Calibration: equal-count bins (positives are rare) on the same grid: the deciles
    # when they are released, else the ROC steps. Bin 0 holds the lowest predictions.
    cal_bounds = _decile_bounds(n) if gain_lift else grid
    cal_pos, cal_p = _cumulative_at(z, [y, p], cal_bounds)
    rows_per_bin = np.diff(cal_bounds)
    calibration = [
        {
            "bin": i,
            "count": int(rows_per_bin[j]),
            "mean_predicted": float((cal_p[j + 1] - cal_p[j]) / rows_per_bin[j]),
            "observed_rate": float((cal_pos[j + 1] - cal_pos[j]) / rows_per_bin[j]),
        }
        for i, j in enumerate(range(rows_per_bin.size - 1, -1, -1))
        if rows_per_bin[j] > 0
    ]

    contribution = {}
    for label, s in without.items():
        auc_wo = metrics.roc_auc(y, s)
        contribution[label] = {"auc_without": auc_wo, "auc_drop": auc - auc_wo}

    body: dict[str, Any] = {
        "auc": auc,
        "auc_label_owner_only": auc_own,
        "log_loss": log_loss,
        "holdout_response_rate": float(y.mean()),
        "threshold": threshold,
        "threshold_score": z_cut,
        "threshold_rule": rule,
        "precision": precision,
        "recall": recall,
        "confusion": confusion,
        "calibration": calibration,
        "gain_lift": gain_lift,
        "top_decile_lift": top_lift,
        "roc_curve": roc,
        "contribution": contribution,
    }
    body["summary"] = _logistic_summary(body, inputs)
    body["suppressed"] = suppressed
    return body


def _logistic_summary(body: Mapping[str, Any], inputs: EvaluationInputs) -> str:
    verb = inputs.outcome.strip() or "respond"
    noun = _agent_noun(verb)
    owner = _possessive(str(inputs.party))
    parts: list[str] = []
    lift = body["top_decile_lift"]
    if lift is not None:
        parts.append(f"Customers in the top 10% by score {verb} {lift:.1f}x as often as average.")
        gain = body["gain_lift"]
        if len(gain) >= 3:
            parts.append(
                f"Targeting the top 30% reaches {_pct(gain[2]['cumulative_gain'])} of all {noun}."
            )
    auc, auc_own = body["auc"], body["auc_label_owner_only"]
    if auc > auc_own:
        parts.append(
            f"The federated model ranks {noun} better than {owner} own data alone: "
            f"AUC {auc:.3f} vs {auc_own:.3f}."
        )
    else:
        parts.append(
            f"The federated model does not rank {noun} better than {owner} own data alone: "
            f"AUC {auc:.3f} vs {auc_own:.3f}."
        )
    contribution = body["contribution"]
    if contribution:
        label, best = max(contribution.items(), key=lambda kv: kv[1]["auc_drop"])
        if best["auc_drop"] > 0:
            parts.append(
                f"Leaving out {_possessive(label)} data costs the most: AUC drops by "
                f"{best['auc_drop']:.3f}."
            )
    return " ".join(parts)


def _linear_body(
    inputs: EvaluationInputs,
    y: np.ndarray,
    z: np.ndarray,
    own: np.ndarray,
    without: Mapping[str, np.ndarray],
    min_cohort: int,
) -> dict[str, Any]:
    n = y.size
    suppressed: list[dict[str, str]] = []
    r2 = metrics.r2_score(y, z)
    r2_own = metrics.r2_score(y, own)
    rmse = float(np.sqrt(np.mean((y - z) ** 2)))
    rmse_own = float(np.sqrt(np.mean((y - own) ** 2)))

    deciles: list[dict[str, Any]] = []
    top_mean: float | None = None
    if n < _DECILES:
        suppressed.append(
            {"aggregate": "deciles", "item": "all deciles", "reason": "fewer than 10 rows"}
        )
    else:
        bounds = _decile_bounds(n)
        rows = np.diff(bounds)
        sum_pred, sum_actual = (np.diff(c) for c in _cumulative_at(z, [z, y], bounds))
        small = {k for k in range(_DECILES) if rows[k] < min_cohort}
        if small:
            for k in range(_DECILES):
                suppressed.append(
                    {
                        "aggregate": "deciles",
                        "item": f"decile {k + 1}",
                        "reason": f"fewer than {min_cohort} rows (minimum cohort)"
                        if k in small
                        else "withheld with the small decile(s): the totals would reveal them",
                    }
                )
        else:
            for k in range(_DECILES):
                deciles.append(
                    {
                        "decile": k + 1,
                        "rows": int(rows[k]),
                        "mean_predicted": float(sum_pred[k] / rows[k]),
                        "mean_actual": float(sum_actual[k] / rows[k]),
                    }
                )
            top_mean = deciles[0]["mean_actual"]

    contribution = {}
    for label, s in without.items():
        r2_wo = metrics.r2_score(y, s)
        contribution[label] = {"r2_without": r2_wo, "r2_drop": r2 - r2_wo}

    body: dict[str, Any] = {
        "r2": r2,
        "r2_label_owner_only": r2_own,
        "rmse": rmse,
        "rmse_label_owner_only": rmse_own,
        "holdout_mean": float(y.mean()),
        "deciles": deciles,
        "top_decile_mean": top_mean,
        "contribution": contribution,
    }
    body["summary"] = _linear_summary(body, inputs)
    body["suppressed"] = suppressed
    return body


def _linear_summary(body: Mapping[str, Any], inputs: EvaluationInputs) -> str:
    owner = _possessive(str(inputs.party))
    parts: list[str] = []
    top, mean = body["top_decile_mean"], body["holdout_mean"]
    if top is not None:
        text = f"Customers in the top 10% by prediction average {top:,.4g}, vs {mean:,.4g} overall"
        if mean > 0 and top > 0:
            text += f" ({top / mean:.1f}x)"
        parts.append(text + ".")
    r2, r2_own = body["r2"], body["r2_label_owner_only"]
    better = "explains more" if r2 > r2_own else "does not explain more"
    parts.append(
        f"The federated model {better} of the variation than {owner} own data alone: "
        f"R\u00b2 {r2:.3f} vs {r2_own:.3f}."
    )
    contribution = body["contribution"]
    if contribution:
        label, best = max(contribution.items(), key=lambda kv: kv[1]["r2_drop"])
        if best["r2_drop"] > 0:
            parts.append(
                f"Leaving out {_possessive(label)} data costs the most: R\u00b2 drops by "
                f"{best['r2_drop']:.3f}."
            )
    return " ".join(parts)


def headline(report: Mapping[str, Any]) -> list[str]:
    """The three headline figures of a shared report, as plain sentences (for the CLI).

    Parameters
    ----------
    report : Mapping
        Content built by :func:`build_shared_report`.

    Returns
    -------
    list of str
        Logistic: AUC vs the result owner's own data, top-decile lift, rows.
        Linear: R^2 vs the result owner's own data, RMSE, rows.
    """
    owner = _possessive(str(report["party"]))
    parties = len(report.get("rows_per_party", {}))
    rows = (
        f"{report['aligned_rows']:,} customers aligned across {parties} parties; "
        f"{report['holdout_rows']:,} hold-out rows evaluated."
    )
    if report["model"] == "logistic":
        first = (
            f"AUC {report['auc']:.3f} with the federated model vs "
            f"{report['auc_label_owner_only']:.3f} with {owner} own data alone."
        )
        lift = report.get("top_decile_lift")
        if lift is None:
            second = (
                "Top-decile lift withheld: a decile would cover fewer than "
                f"{report['min_cohort']} rows."
            )
        else:
            second = f"Top 10% by score: {lift:.1f}x the average response rate."
        return [first, second, rows]
    first = (
        f"R\u00b2 {report['r2']:.3f} with the federated model vs "
        f"{report['r2_label_owner_only']:.3f} with {owner} own data alone."
    )
    second = f"Typical prediction error (RMSE): {report['rmse']:,.4g}."
    return [first, second, rows]


def write_report(
    report: Mapping[str, Any], inputs: EvaluationInputs, out_dir: Path
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``.

    Parameters
    ----------
    report : Mapping
        Content built by :func:`build_shared_report` from ``inputs``.
    inputs : EvaluationInputs
        The inputs of the report: checked to match it (party, model, hold-out rows), and
        their feature names checked to be absent from it. Nothing else is read from them:
        the page shows only what the JSON releases.
    out_dir : Path
        Created if needed.

    Returns
    -------
    (json_path, html_path) : tuple of Path
    """
    for key, expected in (
        ("party", str(inputs.party)),
        ("model", inputs.model),
        ("holdout_rows", int(np.asarray(inputs.y_holdout).size)),
    ):
        if report.get(key) != expected:
            raise ValueError(
                f"the report's {key} ({report.get(key)!r}) does not match the inputs ({expected!r})"
            )
    _assert_no_feature_detail(report, inputs.own_feature_weights)
    return write_released_report(report, out_dir)


def write_released_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` from the released JSON alone (atomically).

    This is how a result owner that is not the label owner writes the report it received:
    the page is rendered only from what the JSON releases.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_JSON
    html_path = out_dir / REPORT_HTML
    page = _render_shared_html(_plain(report))
    _atomic_write(json_path, _json_bytes(report))
    _atomic_write(html_path, page.encode("utf-8"))
    return json_path, html_path


# --------------------------------------------------------------------------------------------
# Party report
# --------------------------------------------------------------------------------------------


def build_party_report(
    party: str,
    model: str,
    feature_weights: Mapping[str, float],
    *,
    min_cohort: int,
    aligned_rows: int,
) -> dict[str, Any]:
    """A party's own report: its feature names and weights, nothing about other parties.

    Parameters
    ----------
    party : str
        The party the report is for.
    model : str
        ``"logistic"`` or ``"linear"``.
    feature_weights : Mapping[str, float]
        The party's own prepared columns -> weights (columns are standardized numeric or
        one-hot, so weights are comparable across features).
    min_cohort : int
        The agreement's minimum cohort: the weights are learned from the aligned rows, which
        must be at least that many.
    aligned_rows : int
        Rows the model was trained on.

    Returns
    -------
    dict
        ``schema``, ``party``, ``model``, ``aligned_rows``, ``min_cohort``, ``features``
        (every feature, by decreasing ``|weight|``: ``rank``, ``feature``, ``weight``,
        ``abs_weight``, ``relative_importance`` = ``|weight| / sum |weight|``),
        ``top_features`` (the names of the first ten) and ``note``.

    Raises
    ------
    PolicyViolation
        Rule ``"min_cohort"``: fewer aligned rows than ``min_cohort``.
    ValueError
        No features, a non-finite weight, or an unknown model.
    """
    if model not in ("logistic", "linear"):
        raise ValueError(f"model must be 'logistic' or 'linear', got {model!r}")
    min_cohort = _check_min_cohort_value(min_cohort)
    aligned = _count("aligned_rows", aligned_rows)
    if aligned < min_cohort:
        raise PolicyViolation(
            "min_cohort",
            f"feature weights learned from {aligned} aligned rows, below the minimum cohort "
            f"of {min_cohort}",
        )
    if not feature_weights:
        raise ValueError(f"party '{party}' has no feature weights to report")
    items = [(str(k), float(v)) for k, v in feature_weights.items()]
    if not all(math.isfinite(w) for _, w in items):
        raise ValueError(f"party '{party}' has a non-finite feature weight")
    # Deterministic order: |weight| descending, then name.
    items.sort(key=lambda kv: (-abs(kv[1]), kv[0]))
    total = sum(abs(w) for _, w in items)
    features = [
        {
            "rank": i + 1,
            "feature": name,
            "weight": w,
            "abs_weight": abs(w),
            "relative_importance": abs(w) / total if total > 0 else 0.0,
        }
        for i, (name, w) in enumerate(items)
    ]
    scale = "log-odds" if model == "logistic" else "target units"
    return {
        "schema": _PARTY_SCHEMA,
        "party": str(party),
        "model": model,
        "aligned_rows": aligned,
        "min_cohort": min_cohort,
        "features": features,
        "top_features": [f["feature"] for f in features[:_TOP_FEATURES]],
        "note": (
            f"Weights of {_possessive(str(party))} own columns in the federated model, in "
            f"{scale} per standard deviation (numeric columns) or for being in a category "
            "(one-hot columns). Only this party receives this report."
        ),
    }


def write_party_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``party_report.json`` and ``party_report.html`` atomically into ``out_dir``.

    Returns
    -------
    (json_path, html_path) : tuple of Path
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / PARTY_REPORT_JSON
    html_path = out_dir / PARTY_REPORT_HTML
    page = _render_party_html(_plain(report))
    _atomic_write(json_path, _json_bytes(report))
    _atomic_write(html_path, page.encode("utf-8"))
    return json_path, html_path


# --------------------------------------------------------------------------------------------
# Audience segments
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"^(?:top(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)|rest)$")


def _num(x: float) -> str:
    return f"{x:g}"


def _parse_segments(spec: str) -> list[tuple[str, float, float]]:
    text = str(spec).strip().lower()
    if text == "deciles":
        return [(f"decile {k}", 10.0 * (k - 1), 10.0 * k) for k in range(1, 11)]
    tokens = [re.sub(r"[\s%]", "", t) for t in text.split(",")]
    out: list[tuple[str, float, float]] = []
    prev = 0.0
    for i, tok in enumerate(tokens):
        m = _TOKEN.match(tok)
        if not m:
            raise ConfigurationError(
                f"segment '{tok}' in {spec!r} is not understood: use 'deciles' or bands such "
                "as 'top10,10-30,rest' (percent of rows ranked by score)"
            )
        if tok == "rest":
            if i != len(tokens) - 1:
                raise ConfigurationError(f"'rest' must be the last segment in {spec!r}")
            lo, hi, name = prev, 100.0, "rest"
        elif m.group(1) is not None:
            lo, hi = 0.0, float(m.group(1))
            name = f"top {_num(hi)}%"
        else:
            lo, hi = float(m.group(2)), float(m.group(3))
            name = f"{_num(lo)}-{_num(hi)}%"
        if lo != prev:
            raise ConfigurationError(
                f"segments in {spec!r} must be contiguous from 0%: '{tok}' starts at "
                f"{_num(lo)}%, expected {_num(prev)}%"
            )
        if not lo < hi <= 100.0:
            raise ConfigurationError(f"segment '{tok}' in {spec!r} is empty or beyond 100%")
        out.append((name, lo, hi))
        prev = hi
    if prev != 100.0:
        raise ConfigurationError(
            f"segments in {spec!r} end at {_num(prev)}%: end at 100 or with 'rest'"
        )
    return out


def assign_segments(
    scores: np.ndarray, segments: str = "deciles"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Put each row in a segment by the rank of its score (best first).

    Parameters
    ----------
    scores : numpy.ndarray
        One score per row, higher meaning better.
    segments : str
        ``"deciles"`` (``"decile 1"`` = the best 10 % of rows ... ``"decile 10"``) or
        comma-separated bands of percent of rows: ``"top10,10-30,rest"`` gives ``"top 10%"``,
        ``"10-30%"`` and ``"rest"``. Bands must be contiguous from 0 and reach 100 (``rest``
        reaches it).

    Returns
    -------
    (segment_of_row, segments) : tuple
        A string array with the segment name of each row (row order), and one dict per
        segment, best first: ``segment``, ``from_percent``, ``to_percent``, ``rows``.
        Band boundaries fall at ``round(percent * n / 100)`` rows; ties in score are broken
        by row position (earlier row first), so the result is deterministic.

    Raises
    ------
    ConfigurationError
        An unreadable segment specification.
    ValueError
        Non-finite scores.
    """
    bands = _parse_segments(segments)
    s = _vector("scores", scores)
    n = s.size
    order = np.argsort(-s, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ends = np.array([int(np.rint(hi * n / 100.0)) for _, _, hi in bands], dtype=np.int64)
    index = np.searchsorted(ends, position, side="right")
    names = [name for name, _, _ in bands]
    width = max(len(x) for x in names)
    segment_of_row = np.array(names, dtype=f"<U{width}")[index]
    counts = np.bincount(index, minlength=len(bands))
    specs = [
        {"segment": name, "from_percent": lo, "to_percent": hi, "rows": int(counts[i])}
        for i, (name, lo, hi) in enumerate(bands)
    ]
    return segment_of_row, specs


def _segment_order_key(name: str) -> tuple[float, str]:
    m = re.fullmatch(r"decile (\d+)", name)
    if m:
        return float(m.group(1)), name
    if name.startswith("top "):
        return 0.0, name
    if name == "rest":
        return 100.0, name
    m = re.match(r"(\d+(?:\.\d+)?)-", name)
    if m:
        return float(m.group(1)), name
    return math.inf, name


def segment_summaries(
    segment_of_row: Any,
    labels_or_none: Any,
    min_cohort: int,
    *,
    segments: Sequence[Mapping[str, Any] | str] | None = None,
) -> list[dict[str, Any]]:
    """Rows, share and (with labels) response rate and lift per segment.

    Parameters
    ----------
    segment_of_row : array_like
        Segment name of each row (from :func:`assign_segments`).
    labels_or_none : array_like or None
        Outcomes of the same rows (0/1 gives ``response_rate``; other numbers give ``mean``),
        or ``None`` for rows and share only.
    min_cohort : int
        Segments with fewer rows are withheld (name kept, ``suppressed: True``, no figures),
        plus further segments, smallest first, until the withheld ones together cover at
        least ``min_cohort`` rows (otherwise the totals would reveal them).
    segments : sequence, optional
        The segment list of :func:`assign_segments` (or names): fixes the order and lists
        empty segments too. Default: the names present, in band order.

    Returns
    -------
    list of dict
        Per segment: ``segment``, ``suppressed`` and, unless suppressed, ``rows``, ``share``
        and with labels ``response_rate`` (or ``mean``) and ``lift`` (segment rate / overall
        rate, ``None`` when the overall rate is 0). Suppressed ones carry ``reason``.
    """
    min_cohort = _check_min_cohort_value(min_cohort)
    seg = np.asarray(segment_of_row).astype(str).ravel()
    n = seg.size
    if segments is not None:
        names = [str(s["segment"]) if isinstance(s, Mapping) else str(s) for s in segments]
        unknown = set(np.unique(seg).tolist()) - set(names)
        if unknown:
            raise ValueError(f"rows belong to {len(unknown)} segment(s) not in the segment list")
    else:
        names = sorted(set(np.unique(seg).tolist()), key=_segment_order_key)
    labels: np.ndarray | None = None
    binary = False
    if labels_or_none is not None:
        labels = _vector("labels", labels_or_none, n)
        binary = bool(np.all((labels == 0) | (labels == 1)))
    overall = float(labels.mean()) if labels is not None and n else None
    rows = [int(np.sum(seg == name)) for name in names]
    primary, secondary = _withheld_union(
        rows, {i for i, r in enumerate(rows) if r < min_cohort}, min_cohort
    )
    out: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        if i in primary or i in secondary:
            out.append(
                {
                    "segment": name,
                    "suppressed": True,
                    "reason": f"fewer than {min_cohort} rows (minimum cohort)"
                    if i in primary
                    else "withheld with the small segment(s): the totals would reveal them",
                }
            )
            continue
        entry: dict[str, Any] = {
            "segment": name,
            "suppressed": False,
            "rows": rows[i],
            "share": rows[i] / n,
        }
        if labels is not None:
            rate = float(labels[seg == name].mean())
            entry["response_rate" if binary else "mean"] = rate
            entry["lift"] = rate / overall if overall else None
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------
# Charts (matplotlib Figure objects only: no pyplot, no global backend state)
# --------------------------------------------------------------------------------------------

_BLUE = "#1f5fa8"
_ORANGE = "#e07b1a"
_GREY = "#8a8f98"
_RED = "#c0392b"
_GREEN = "#2e8b57"


def _new_figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _withheld_chart(title: str, message: str) -> str:
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color=_GREY, fontsize=12)
    return _data_uri(fig)


def _gain_chart(gain_lift: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    if not gain_lift:
        return _withheld_chart("Cumulative gain", f"Withheld: deciles below {min_cohort} rows")
    x = [0.0] + [10.0 * d["decile"] for d in gain_lift]
    y = [0.0] + [100.0 * d["cumulative_gain"] for d in gain_lift]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", color=_BLUE, label="Federated model")
    ax.plot([0, 100], [0, 100], linestyle="--", color=_GREY, label="Random targeting")
    ax.fill_between(x, y, x, color=_BLUE, alpha=0.08)
    ax.set_xlabel("Customers targeted, best scores first (%)")
    ax.set_ylabel("Share of all positives reached (%)")
    ax.set_title("Cumulative gain")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _data_uri(fig)


def _lift_chart(gain_lift: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    if not gain_lift:
        return _withheld_chart("Lift by decile", f"Withheld: deciles below {min_cohort} rows")
    deciles = [int(d["decile"]) for d in gain_lift]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(deciles, [d["lift"] for d in gain_lift], color=_BLUE, label="Lift of the decile")
    ax.plot(
        deciles,
        [d["cumulative_lift"] for d in gain_lift],
        marker="o",
        color=_ORANGE,
        label="Cumulative lift",
    )
    ax.axhline(1.0, linestyle="--", color=_GREY, label="Average (lift 1)")
    ax.set_xticks(deciles)
    ax.set_xlabel("Decile of score (1 = best 10%)")
    ax.set_ylabel("Response rate / average rate")
    ax.set_title("Lift by decile")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    return _data_uri(fig)


def _calibration_chart(calibration: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    points = [b for b in calibration if b.get("mean_predicted") is not None]
    if not points:
        return _withheld_chart("Calibration", f"Withheld: bins below {min_cohort} rows")
    xs = [b["mean_predicted"] for b in points]
    ys = [b["observed_rate"] for b in points]
    top = max(max(xs), max(ys)) * 1.1 or 1.0
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, top], [0, top], linestyle="--", color=_GREY, label="Perfectly calibrated")
    ax.plot(xs, ys, marker="o", color=_BLUE, label="Federated model (equal-count bins)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("Mean predicted probability")
    ax.set_ylabel("Observed rate")
    ax.set_title("Calibration")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _data_uri(fig)


def _training_chart(curve: Mapping[str, Sequence[float | None]]) -> str:
    objective = [v for v in curve.get("objective", [])]
    holdout = [v for v in curve.get("holdout_loss", [])]
    if not any(v is not None for v in objective + holdout):
        return _withheld_chart("Training curve", "No training curve was recorded")
    fig = _new_figure()
    ax = fig.add_subplot()
    if objective:
        ax.plot(
            range(len(objective)),
            [np.nan if v is None else v for v in objective],
            marker=".",
            color=_BLUE,
            label="Training objective",
        )
    if holdout:
        ax.plot(
            range(len(holdout)),
            [np.nan if v is None else v for v in holdout],
            marker=".",
            color=_ORANGE,
            label="Hold-out loss",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Iteration")
    ax.set_ylabel("Loss")
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _data_uri(fig)


def _roc_chart(roc: Sequence[Mapping[str, float]], auc: float) -> str:
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(
        [p["fpr"] for p in roc],
        [p["tpr"] for p in roc],
        color=_BLUE,
        label=f"Federated model (AUC {auc:.3f})",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, label="Random (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _data_uri(fig)


def _deciles_chart(deciles: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    if not deciles:
        return _withheld_chart(
            "Predicted vs actual by decile", f"Withheld: deciles below {min_cohort} rows"
        )
    k = np.array([d["decile"] for d in deciles], dtype=float)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(
        k - 0.2,
        [d["mean_predicted"] for d in deciles],
        width=0.4,
        color=_BLUE,
        label="Mean predicted",
    )
    ax.bar(
        k + 0.2, [d["mean_actual"] for d in deciles], width=0.4, color=_ORANGE, label="Mean actual"
    )
    ax.set_xticks(k)
    ax.set_xlabel("Decile of prediction (1 = highest 10%)")
    ax.set_ylabel("Mean value")
    ax.set_title("Predicted vs actual by decile")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    return _data_uri(fig)


def _weights_chart(features: Sequence[Mapping[str, Any]], party: str) -> str:
    shown = list(features[:_PARTY_CHART_FEATURES])[::-1]
    height = max(2.5, 0.32 * len(shown) + 1.2)
    fig = _new_figure(7.0, height)
    ax = fig.add_subplot()
    weights = [f["weight"] for f in shown]
    ax.barh(range(len(shown)), weights, color=[_GREEN if w >= 0 else _RED for w in weights])
    ax.set_yticks(range(len(shown)), [str(f["feature"]) for f in shown])
    ax.axvline(0.0, color=_GREY, linewidth=1)
    ax.set_xlabel("Weight (green raises the score, red lowers it)")
    ax.set_title(f"Top {len(shown)} features of {party} by |weight|")
    ax.grid(axis="x", alpha=0.3)
    return _data_uri(fig)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
margin:0;background:#f4f6f9;color:#1d2430;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.7em;margin:0.2em 0}
h2{font-size:1.2em;margin:1.6em 0 0.5em;border-bottom:1px solid #d5dae1;padding-bottom:4px}
.sub{color:#5a6372;margin:0 0 1em}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;margin:18px 0}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 3px rgba(0,0,0,.12);
border-top:4px solid #1f5fa8}
.card .big{font-size:1.8em;font-weight:700;color:#1f5fa8}
.card .txt{font-size:0.92em;color:#38404d}
.summary{background:#fff;border-left:4px solid #e07b1a;padding:12px 16px;border-radius:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{background:#fff;margin:0;padding:10px;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:0.85em;color:#5a6372;margin-top:6px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:0.92em}
th,td{border:1px solid #d5dae1;padding:5px 10px;text-align:right}
th{background:#e9edf3}
td.l,th.l{text-align:left}
.muted{color:#5a6372;font-size:0.88em}
footer{margin-top:32px;color:#5a6372;font-size:0.82em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "withheld"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{float(value):,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig_id: str, uri: str, alt: str, caption: str) -> str:
    return (
        f'<figure id="{_e(fig_id)}"><img src="{uri}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _cards(report: Mapping[str, Any]) -> str:
    lines = headline(report)
    if report["model"] == "logistic":
        lift = report.get("top_decile_lift")
        bigs = [
            f"AUC {report['auc']:.3f}",
            "withheld" if lift is None else f"{lift:.1f}x",
            f"{report['aligned_rows']:,}",
        ]
    else:
        bigs = [
            f"R\u00b2 {report['r2']:.3f}",
            f"RMSE {report['rmse']:,.4g}",
            f"{report['aligned_rows']:,}",
        ]
    cards = "".join(
        f'<div class="card"><div class="big">{_e(b)}</div><div class="txt">{_e(t)}</div></div>'
        for b, t in zip(bigs, lines)
    )
    return f'<section class="cards" id="headline">{cards}</section>'


def _render_shared_html(report: Mapping[str, Any]) -> str:
    logistic = report["model"] == "logistic"
    party = str(report["party"])
    mc = int(report["min_cohort"])
    parts = [
        f"<h1>Federated {_e(report['model'])} model: marketing report</h1>",
        f'<p class="sub">Result owner: {_e(party)}. Evaluated on '
        f"{_f(report['holdout_rows'])} hold-out rows that were not used for training.</p>",
        _cards(report),
        f'<p class="summary" id="summary">{_e(report.get("summary", ""))}</p>',
        "<h2>Charts</h2>",
        '<div class="grid">',
    ]
    if logistic:
        gl = report.get("gain_lift", [])
        auc = float(report["auc"])
        parts += [
            _figure(
                "fig-gain",
                _gain_chart(gl, mc),
                "Cumulative gain chart: share of all positives reached against the share of "
                "customers targeted, best scores first, compared with random targeting.",
                "Cumulative gain: how many of all positives the best-scored customers contain.",
            ),
            _figure(
                "fig-lift",
                _lift_chart(gl, mc),
                "Lift by decile: bars give each decile's response rate divided by the "
                "average rate; the line gives the cumulative lift.",
                "Lift by decile (1 = the best-scored 10%).",
            ),
            _figure(
                "fig-calibration",
                _calibration_chart(report.get("calibration", []), mc),
                "Calibration plot: mean predicted probability against the observed rate in "
                "equal-count bins, with the diagonal of perfect calibration.",
                "Calibration: points on the diagonal mean the predicted probabilities are "
                "right on average.",
            ),
            _figure(
                "fig-roc",
                _roc_chart(report.get("roc_curve", []), auc),
                f"ROC curve of the federated model, AUC {auc:.3f}, against the diagonal of "
                "random ranking.",
                f"ROC curve (each step covers at least {mc} rows).",
            ),
        ]
    else:
        parts.append(
            _figure(
                "fig-deciles",
                _deciles_chart(report.get("deciles", []), mc),
                "Bar chart of mean predicted and mean actual value per decile of prediction.",
                "Predicted vs actual by decile (1 = highest predictions).",
            )
        )
    parts.append(
        _figure(
            "fig-training",
            _training_chart(report.get("training_curve", {})),
            "Training curve: training objective and hold-out loss per iteration.",
            "Training curve: the hold-out loss shows whether the model generalises.",
        )
    )
    parts.append("</div>")

    parts.append("<h2>Model quality</h2>")
    if logistic:
        rows = [
            ["AUC, federated model", _f(report["auc"])],
            [f"AUC, {party}'s own data alone", _f(report["auc_label_owner_only"])],
            ["Log loss (hold-out)", _f(report["log_loss"], 4)],
            ["Hold-out response rate", _f(report["holdout_response_rate"], 4)],
            ["Top-decile lift", _f(report.get("top_decile_lift"), 2)],
            [f"Threshold (probability, {report['threshold_rule']})", _f(report["threshold"], 4)],
            ["Precision at the threshold", _f(report.get("precision"))],
            ["Recall at the threshold", _f(report.get("recall"))],
        ]
    else:
        rows = [
            ["R\u00b2, federated model", _f(report["r2"])],
            [f"R\u00b2, {party}'s own data alone", _f(report["r2_label_owner_only"])],
            ["RMSE, federated model", _f(report["rmse"], 4)],
            [f"RMSE, {party}'s own data alone", _f(report["rmse_label_owner_only"], 4)],
            ["Hold-out mean", _f(report["holdout_mean"], 4)],
        ]
    parts.append(_table(["Metric", "Value"], rows))

    if logistic:
        parts.append('<h2 id="confusion">Confusion matrix at the threshold</h2>')
        c = report.get("confusion")
        if c is None:
            parts.append(f'<p class="muted">Withheld: a cell would cover fewer than {mc} rows.</p>')
        else:
            parts.append(
                _table(
                    ["", "Predicted positive", "Predicted negative"],
                    [
                        ["Actual positive", _f(c["tp"]), _f(c["fn"])],
                        ["Actual negative", _f(c["fp"]), _f(c["tn"])],
                    ],
                )
            )
        gl = report.get("gain_lift", [])
        if gl:
            parts.append("<h2>Gain and lift by decile</h2>")
            parts.append(
                _table(
                    [
                        "Decile",
                        "Rows",
                        "Response rate",
                        "Lift",
                        "Cumulative lift",
                        "Cumulative gain",
                    ],
                    [
                        [
                            d["decile"],
                            _f(d["rows"]),
                            _f(d["response_rate"], 4),
                            _f(d["lift"], 2),
                            _f(d["cumulative_lift"], 2),
                            _pct(d["cumulative_gain"]),
                        ]
                        for d in gl
                    ],
                )
            )
    else:
        dec = report.get("deciles", [])
        if dec:
            parts.append("<h2>Predicted vs actual by decile</h2>")
            parts.append(
                _table(
                    ["Decile", "Rows", "Mean predicted", "Mean actual"],
                    [
                        [
                            d["decile"],
                            _f(d["rows"]),
                            _f(d["mean_predicted"], 4),
                            _f(d["mean_actual"], 4),
                        ]
                        for d in dec
                    ],
                )
            )

    parts.append('<h2 id="rows">Rows</h2>')
    row_table = [[p, _f(r)] for p, r in report.get("rows_per_party", {}).items()]
    row_table += [
        ["Aligned (all parties)", _f(report["aligned_rows"])],
        ["Training", _f(report["training_rows"])],
        ["Hold-out", _f(report["holdout_rows"])],
    ]
    parts.append(_table(["Party / set", "Rows"], row_table))

    parts.append('<h2 id="contribution">Contribution of each party</h2>')
    contribution = report.get("contribution", {})
    if contribution:
        metric, key_wo, key_drop = (
            ("AUC", "auc_without", "auc_drop") if logistic else ("R\u00b2", "r2_without", "r2_drop")
        )
        ordered = sorted(contribution.items(), key=lambda kv: -float(kv[1][key_drop]))
        parts.append(
            _table(
                ["Left out", f"{metric} without it", f"{metric} drop"],
                [[label, _f(v[key_wo]), _f(v[key_drop])] for label, v in ordered],
            )
        )
        parts.append(
            f'<p class="muted">{metric} of the federated model when that part of the model '
            "is left out; a larger drop means a larger contribution.</p>"
        )
    else:
        parts.append('<p class="muted">No contribution figures were computed.</p>')

    suppressed = report.get("suppressed", [])
    parts.append('<h2 id="suppressed">Withheld figures</h2>')
    if suppressed:
        parts.append(
            _table(
                ["Aggregate", "Item", "Reason"],
                [
                    [s.get("aggregate", ""), s.get("item", ""), s.get("reason", "")]
                    for s in suppressed
                ],
                left=3,
            )
        )
    else:
        parts.append(f'<p class="muted">None: every figure covers at least {mc} rows.</p>')
    parts.append(
        f"<footer>vfm-flower shared report. Every figure covers at least {mc} rows (the "
        "agreement's minimum cohort). This report holds no feature names or weights of any "
        "party; each party receives its own feature weights separately.</footer>"
    )
    return _page(f"Marketing report ({party})", "".join(parts))


def _render_party_html(report: Mapping[str, Any]) -> str:
    party = str(report["party"])
    features = report.get("features", [])
    parts = [
        f"<h1>{_e(party)}: own feature weights</h1>",
        f'<p class="sub">Federated {_e(report["model"])} model trained on '
        f"{_f(report['aligned_rows'])} aligned rows. {_e(report.get('note', ''))}</p>",
        '<div class="grid" style="grid-template-columns:1fr">',
        _figure(
            "fig-weights",
            _weights_chart(features, party),
            f"Horizontal bar chart of the {min(len(features), _PARTY_CHART_FEATURES)} "
            f"features of {party} with the largest absolute weights.",
            "Top features by absolute weight.",
        ),
        "</div>",
        "<h2>All features</h2>",
        _table(
            ["Rank", "Feature", "Weight", "Relative importance"],
            [
                [f["rank"], f["feature"], _f(f["weight"], 4), _pct(f["relative_importance"])]
                for f in features
            ],
            left=2,
        ),
        f"<footer>vfm-flower party report for {_e(party)} only.</footer>",
    ]
    return _page(f"Feature weights ({party})", "".join(parts))

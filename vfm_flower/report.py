"""What the parties learn from Phase 5: the content of every report, and the minimum cohort.

This is the module to audit for what leaves the label owner. It decides the content of the
reports and nothing else: drawing them (charts, HTML pages) and writing the files is
:mod:`vfm_flower.report_render`, audience segments are :mod:`vfm_flower.segments`; both are
re-exported here.

Who learns what
---------------
- The **shared report** (:func:`build_shared_report`, ``report.json`` + ``report.html``) is
  built by the label owner from its hold-out rows and goes to the result owner (the label
  owner itself by default; otherwise it is sealed to the result owner). It holds ranking and
  calibration metrics, gain and lift by decile, the training curve, row counts and each
  party's contribution (the metric lost when that party's part of the model is left out). It
  holds *no* feature-level detail of any party: no feature names, no weights. It is safe to
  pass on to the other parties of the collaboration.
- The **headline** (:func:`headline`): three plain sentences drawn from the shared report
  alone, for the CLI and the job's reply to the server.
- A **party report** (:func:`build_party_report`, ``party_report.json`` +
  ``party_report.html``), one per party, written by that party from its own weights: its own
  feature names and weights and nothing about anyone else. Only that party receives it.
- **Audience segments** (:func:`assign_segments`, :func:`segment_summaries`): the holder of
  the scores ranks rows into deciles or named bands (``"top10,10-30,rest"``) and summarises
  each band.

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
  steps when the deciles are withheld), not probability-percentile bins;
- coarser groups: when a decile would cover fewer than ``min_cohort`` rows, the rank tables
  use quintiles, quartiles or halves (:func:`rank_groups`), withheld only when even halves
  would be small;
- the label owner's own-data gain table is cut on its own ranking, with ties broken at
  random, so each of its groups (at least ``min_cohort`` rows) holds whole rows.

The pages are drawn from the JSON content only (nothing in a page is not in its JSON).
Importing this module does not import matplotlib (a client starts a fresh process per
message): the writers and the segment functions are loaded on first use.
"""

from __future__ import annotations

import datetime
import importlib
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower import metrics
from vfm_flower.errors import PolicyViolation

if TYPE_CHECKING:
    from vfm_flower.agreement import Agreement
    from vfm_flower.jobs import Job
    from vfm_flower.report_party import (
        build_encrypted_party_report,
        build_party_report,
        with_job_outcome,
    )
    from vfm_flower.report_render import write_party_report, write_released_report, write_report
    from vfm_flower.segments import assign_segments, segment_summaries

__all__ = [
    "EvaluationInputs",
    "report_header",
    "rank_groups",
    "build_shared_report",
    "write_report",
    "write_released_report",
    "build_party_report",
    "build_encrypted_party_report",
    "with_job_outcome",
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
_DECILES = 10
#: The groupings tried, finest first: deciles, quintiles, quartiles, halves.
_RANK_GROUPS = (10, 5, 4, 2)
_MAX_ROC_STEPS = 100
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
    header : Mapping, optional
        The job's header (:func:`report_header`): purpose, agreement, date, parties, job.
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
    header: Mapping[str, Any] | None = None


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


# --------------------------------------------------------------------------------------------
# Shared report
# --------------------------------------------------------------------------------------------


def report_header(
    agreement: Agreement, job: Job, *, when: datetime.datetime | None = None
) -> dict[str, Any]:
    """The header every report of a job carries: what every signer already knows.

    ``purpose``, ``agreement_id``, ``agreement_hash`` (the first 16 hex digits of the terms
    hash, as audit logs name it), ``date`` (UTC, ISO), ``parties`` (name -> ``"label owner"``
    or ``"partner"``), ``operator``, ``job`` (``kind``, ``operation``, ``data_set``,
    ``params``: every parameter value of the job).
    """
    when = when or datetime.datetime.now(datetime.UTC)
    return {
        "purpose": agreement.purpose,
        "agreement_id": agreement.agreement_id,
        "agreement_hash": agreement.terms_hash()[:16],
        "date": when.strftime("%Y-%m-%d %H:%M UTC"),
        "parties": {
            p.name: "label owner" if p.name == agreement.label_owner else "partner"
            for p in agreement.parties
        },
        "operator": agreement.operator.name,
        "job": {
            "kind": job.kind,
            "operation": job.operation,
            "data_set": job.data_set,
            "params": {str(k): v for k, v in sorted(job.params.items())},
        },
    }


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
        "header": dict(inputs.header or {}),
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


def _gain_over_own_data(
    inputs: EvaluationInputs, metric: str, federated: float, own: float
) -> dict[str, Any]:
    """What the partners add: the federated model against a model trained on the result
    owner's own columns alone (same rows, same split), the honest contribution figure."""
    partners = sorted(str(p) for p in inputs.rows_per_party if str(p) != str(inputs.party))
    return {
        "metric": metric,
        "federated": federated,
        "label_owner_only": own,
        "gain": federated - own,
        "partners": partners,
    }


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

    # Gain and lift by decile (by coarser groups when a decile would be small): cumulative
    # figures, so the whole table goes if one group is small. The label owner's own-data
    # model gets the same table on its own ranking (its curve beside the federated one).
    gain_lift: list[dict[str, Any]] = []
    gain_lift_own: list[dict[str, Any]] = []
    top_lift: float | None = None
    top_group_lift: float | None = None
    bounds: set[int] = {0, n}
    groups = rank_groups(n, min_cohort)
    if groups == 0:
        suppressed.append(
            {
                "aggregate": "gain_lift",
                "item": "all groups",
                "reason": f"even halves of the hold-out would cover fewer than {min_cohort} rows",
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
        gain_lift = [dict(d) for d in metrics.gain_lift_by_decile(y, z, bins=groups)]
        gain_lift_own = [dict(d) for d in metrics.gain_lift_by_decile(y, _untied(own), bins=groups)]
        top_group_lift = float(gain_lift[0]["lift"])
        bounds.update(int(b) for b in _decile_bounds(n, groups))
        if groups == _DECILES:
            top_lift = top_group_lift
        else:
            for item in ("deciles", "top_decile_lift"):
                suppressed.append(
                    {
                        "aggregate": "gain_lift" if item == "deciles" else item,
                        "item": item,
                        "reason": f"a decile would cover fewer than {min_cohort} rows: the "
                        f"tables use {groups} groups of {_group_share(groups)} instead",
                    }
                )

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
    cal_bounds = _decile_bounds(n, groups) if gain_lift else grid
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
    gain_over_own = _gain_over_own_data(inputs, "auc", auc, auc_own)

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
        "gain_lift_label_owner_only": gain_lift_own,
        "rank_groups": groups,
        "top_decile_lift": top_lift,
        "top_group_lift": top_group_lift,
        "roc_curve": roc,
        "gain_over_own_data": gain_over_own,
        "contribution": contribution,
    }
    body["summary"] = _logistic_summary(body, inputs)
    body["suppressed"] = suppressed
    return body


def _partners_phrase(gain: Mapping[str, Any]) -> str:
    partners = list(gain.get("partners", []))
    if not partners:
        return "the partners'"
    names = partners[0] if len(partners) == 1 else ", ".join(partners[:-1]) + " and " + partners[-1]
    return f"the partners' ({names})"


def _logistic_summary(body: Mapping[str, Any], inputs: EvaluationInputs) -> str:
    verb = inputs.outcome.strip() or "respond"
    noun = _agent_noun(verb)
    owner = _possessive(str(inputs.party))
    parts: list[str] = []
    lift, groups = body["top_group_lift"], body["rank_groups"]
    if lift is not None:
        parts.append(
            f"Customers in the top {_group_share(groups)} by score {verb} {lift:.1f}x as often "
            "as average."
        )
        gain = body["gain_lift"]
        k = {10: 3, 5: 2, 4: 2}.get(groups)
        if k is not None and len(gain) >= k:
            parts.append(
                f"Targeting the top {100 * k // groups}% reaches "
                f"{_pct(gain[k - 1]['cumulative_gain'])} of all {noun}."
            )
    auc, auc_own = body["auc"], body["auc_label_owner_only"]
    better = "ranks" if auc > auc_own else "does not rank"
    parts.append(
        f"The federated model {better} {noun} better than {owner} own data alone: "
        f"AUC {auc:.3f} vs {auc_own:.3f}"
        + (
            f", a gain of {auc - auc_own:.3f} from {_partners_phrase(body['gain_over_own_data'])} "
            "data."
            if auc > auc_own
            else "."
        )
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

    # Mean predicted vs mean actual per decile of prediction (coarser groups when a decile
    # would be small; withheld when even halves would be).
    deciles: list[dict[str, Any]] = []
    top_mean: float | None = None
    top_group_mean: float | None = None
    groups = rank_groups(n, min_cohort)
    if groups == 0:
        suppressed.append(
            {
                "aggregate": "deciles",
                "item": "all groups",
                "reason": f"even halves of the hold-out would cover fewer than {min_cohort} rows",
            }
        )
    else:
        bounds = _decile_bounds(n, groups)
        rows = np.diff(bounds)
        sum_pred, sum_actual = (np.diff(c) for c in _cumulative_at(z, [z, y], bounds))
        for k in range(groups):
            deciles.append(
                {
                    "decile": k + 1,
                    "rows": int(rows[k]),
                    "mean_predicted": float(sum_pred[k] / rows[k]),
                    "mean_actual": float(sum_actual[k] / rows[k]),
                }
            )
        top_group_mean = deciles[0]["mean_actual"]
        if groups == _DECILES:
            top_mean = top_group_mean
        else:
            suppressed.append(
                {
                    "aggregate": "deciles",
                    "item": "deciles",
                    "reason": f"a decile would cover fewer than {min_cohort} rows: the table "
                    f"uses {groups} groups of {_group_share(groups)} instead",
                }
            )

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
        "rank_groups": groups,
        "top_decile_mean": top_mean,
        "top_group_mean": top_group_mean,
        "gain_over_own_data": _gain_over_own_data(inputs, "r2", r2, r2_own),
        "contribution": contribution,
    }
    body["summary"] = _linear_summary(body, inputs)
    body["suppressed"] = suppressed
    return body


def _linear_summary(body: Mapping[str, Any], inputs: EvaluationInputs) -> str:
    owner = _possessive(str(inputs.party))
    parts: list[str] = []
    top, mean, groups = body["top_group_mean"], body["holdout_mean"], body["rank_groups"]
    if top is not None:
        text = (
            f"Customers in the top {_group_share(groups)} by prediction average {top:,.4g}, "
            f"vs {mean:,.4g} overall"
        )
        if mean > 0 and top > 0:
            text += f" ({top / mean:.1f}x)"
        parts.append(text + ".")
    r2, r2_own = body["r2"], body["r2_label_owner_only"]
    better = "explains more" if r2 > r2_own else "does not explain more"
    parts.append(
        f"The federated model {better} of the variation than {owner} own data alone: "
        f"R\u00b2 {r2:.3f} vs {r2_own:.3f}"
        + (
            f", a gain of {r2 - r2_own:.3f} from {_partners_phrase(body['gain_over_own_data'])} "
            "data."
            if r2 > r2_own
            else "."
        )
    )
    return " ".join(parts)


def check_report_matches(report: Mapping[str, Any], inputs: EvaluationInputs) -> None:
    """Refuse a report that was not built from ``inputs`` or that names a feature.

    Raises
    ------
    ValueError
        If party, model or hold-out size differ, or a feature name appears in the report.
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
        lift = report.get("top_group_lift", report.get("top_decile_lift"))
        groups = int(report.get("rank_groups", _DECILES) or 0)
        if lift is None or groups == 0:
            second = (
                "Lift withheld: even halves of the hold-out would cover fewer than "
                f"{report['min_cohort']} rows."
            )
        else:
            second = f"Top {_group_share(groups)} by score: {lift:.1f}x the average response rate."
        return [first, second, rows]
    first = (
        f"R\u00b2 {report['r2']:.3f} with the federated model vs "
        f"{report['r2_label_owner_only']:.3f} with {owner} own data alone."
    )
    second = f"Typical prediction error (RMSE): {report['rmse']:,.4g}."
    return [first, second, rows]


# --------------------------------------------------------------------------------------------
# Re-exports loaded on first use
# --------------------------------------------------------------------------------------------

_LAZY_MODULES = (
    ("vfm_flower.report_render", ("write_report", "write_released_report", "write_party_report")),
    (
        "vfm_flower.report_party",
        ("build_party_report", "build_encrypted_party_report", "with_job_outcome"),
    ),
    ("vfm_flower.segments", ("assign_segments", "segment_summaries")),
)


def __getattr__(name: str) -> Any:
    """Resolve the writers and the segment functions on first use (PEP 562).

    They live in :mod:`vfm_flower.report_render` (which draws with matplotlib) and
    :mod:`vfm_flower.segments`; ``from vfm_flower.report import write_report`` gives the very
    same function, with its signature and docstring.
    """
    for module, names in _LAZY_MODULES:
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

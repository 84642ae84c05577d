"""What the parties learn from Phase 5: the content of every report, and the minimum cohort.

This is the module to audit for what leaves the label owner. It decides the content of the
reports and nothing else: drawing them (charts, HTML pages) and writing the files is
:mod:`vfm_flower.report_render`, audience segments are :mod:`vfm_flower.segments`; both are
re-exported here. The model-specific bodies of the shared report are in
:mod:`vfm_flower.report_bodies`, the small helpers in :mod:`vfm_flower.report_figures`.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.errors import PolicyViolation
from vfm_flower.report_bodies import _linear_body, _logistic_body
from vfm_flower.report_figures import (
    _DECILES,
    _assert_no_feature_detail,
    _check_min_cohort_value,
    _count,
    _curve,
    _group_share,
    _plain,
    _possessive,
    _vector,
    rank_groups,
)

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

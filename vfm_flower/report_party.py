"""A party's own report (``party_report.json`` + ``party_report.html``): its own columns only.

Who learns what: each party writes its own report from its own state, and only that party
receives it. It names the party's own features (and its weights, when the label owner's
party is the writer or the agreement released a passive party's weights to it), the job's
header (purpose, agreement, date, parties, parameters: what every signer already knows) and,
after the close, the job's outcome: the figures the parties released to the server, which
the operator relays to every party in its signed close request
(:func:`with_job_outcome`). Nothing about another party's columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vfm_flower.errors import PolicyViolation
from vfm_flower.report_figures import _check_min_cohort_value, _count, _possessive

__all__ = ["build_party_report", "build_encrypted_party_report", "with_job_outcome"]

_PARTY_SCHEMA = "vfm-flower/party-report/1"
_TOP_FEATURES = 10


def build_party_report(
    party: str,
    model: str,
    feature_weights: Mapping[str, float],
    *,
    min_cohort: int,
    aligned_rows: int,
    header: Mapping[str, Any] | None = None,
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
    header : Mapping, optional
        The job's header (:func:`vfm_flower.report.report_header`).

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
        "header": dict(header or {}),
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


def build_encrypted_party_report(
    party: str,
    model: str,
    feature_names: list[str],
    *,
    min_cohort: int,
    rows: int,
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A passive party's own report when its weights stay encrypted (the default).

    It lists the party's prepared columns and says where the weights are: under the label
    owner's key, used only through encrypted images; the agreement may release them to the
    party once, at the end of training (``release.party`` names ``model-weights``).
    """
    if model not in ("logistic", "linear"):
        raise ValueError(f"model must be 'logistic' or 'linear', got {model!r}")
    if not feature_names:
        raise ValueError(f"party '{party}' has no features to report")
    features = [
        {
            "rank": i + 1,
            "feature": str(name),
            "weight": None,
            "abs_weight": None,
            "relative_importance": None,
        }
        for i, name in enumerate(feature_names)
    ]
    return {
        "schema": _PARTY_SCHEMA,
        "party": str(party),
        "model": model,
        "header": dict(header or {}),
        "aligned_rows": _count("rows", rows),
        "min_cohort": _check_min_cohort_value(min_cohort),
        "weights_encrypted": True,
        "features": features,
        "top_features": [f["feature"] for f in features[:_TOP_FEATURES]],
        "note": (
            f"{_possessive(str(party))} weights stay encrypted under the label owner's key: "
            "they are used only through encrypted images, and no party (this one included) "
            "sees them. The agreement may release them to this party once, at the end of "
            "training. Rows counts all of this party's customers: it does not learn which are "
            "joint."
        ),
    }


def with_job_outcome(
    report: Mapping[str, Any], outcome: str, released: Mapping[str, Any]
) -> dict[str, Any]:
    """``report`` with the job's outcome (``"done"`` or why it aborted) and the figures the
    job released to the server (numbers and short texts, as the close relays them)."""
    figures = {
        str(k): v
        for k, v in released.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    return {**report, "job_outcome": {"outcome": str(outcome), "released": figures}}

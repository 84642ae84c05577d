"""The model-specific part of the shared report: the logistic body (ranking, calibration,
gain and lift by decile, the confusion at the top-decile cut, each party's contribution) and
the linear one (R^2, errors, deciles), each with its plain-language summary.

What may leave the label owner is decided with :func:`vfm_flower.report.build_shared_report`,
which calls these and checks the result; read them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower import metrics
from vfm_flower.report_figures import (
    _CONFUSION_CELLS,
    _DECILES,
    _MAX_ROC_STEPS,
    _agent_noun,
    _cumulative_at,
    _decile_bounds,
    _group_share,
    _logit,
    _pct,
    _possessive,
    _sigmoid,
    _subdivide,
    _top_cut,
    _untied,
    rank_groups,
)

if TYPE_CHECKING:
    from vfm_flower.report import EvaluationInputs


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

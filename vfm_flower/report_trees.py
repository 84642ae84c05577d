"""The marketing report of the ``secureboost`` job kind (trees), built by the label owner.

Binary and squared-error trees get the shared marketing report of the regressions
(:func:`vfm_flower.report.build_shared_report`: gain and lift per decile beside the label
owner's own-data model, calibration, confusion at the top-decile cut, R^2 and deciles for
squared error), with a ``trees`` section added: the number of trees and their depth, and each
party's share of the splits and of the total gain (never a feature name: a party's own
features' importance goes to that party only, see :func:`party_importance`).

Multiclass trees (next-best-offer) get their own body (:func:`multiclass_body`): macro AUC,
accuracy and top-k accuracy (is the customer's actual class among the ``k`` most likely?),
per-class rates, AUC (one against the rest) and top-decile lift, and the confusion matrix,
every cell and every class row of fewer than the minimum cohort withheld and listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from vfm_flower.errors import PolicyViolation
from vfm_flower.report import EvaluationInputs, build_shared_report

__all__ = [
    "importance_by_party",
    "party_importance",
    "build_tree_report",
    "multiclass_body",
    "TREE_REPORT_SCHEMA",
]

TREE_REPORT_SCHEMA = "vfm-flower/tree-report/1"
MODEL_LABEL = "gradient-boosted trees"


def importance_by_party(importance: Mapping[str, Mapping[int, tuple[int, float]]]) -> dict:
    """Per party: number of splits and share of the total gain (the label owner's view)."""
    total = sum(g for splits in importance.values() for _, g in splits.values()) or 1.0
    return {
        party: {
            "splits": int(sum(c for c, _ in splits.values())),
            "gain_share": float(sum(g for _, g in splits.values()) / total),
        }
        for party, splits in sorted(importance.items())
    }


def party_importance(
    gains: Mapping[int, float], column_of: Mapping[int, int], names: Sequence[str]
) -> list[dict[str, Any]]:
    """One party's own features: split count and gain per feature, from the gains of its
    splits (which only it can map to its columns), highest gain first."""
    per: dict[str, list[float]] = {}
    for split, gain in gains.items():
        if split in column_of:
            per.setdefault(names[column_of[split]], []).append(float(gain))
    total = sum(sum(v) for v in per.values()) or 1.0
    rows = [
        {"feature": f, "splits": len(v), "gain": float(sum(v)), "gain_share": sum(v) / total}
        for f, v in per.items()
    ]
    return sorted(rows, key=lambda r: -r["gain"])


def _top_k(y: np.ndarray, p: np.ndarray, k: int) -> float:
    top = np.argsort(-p, axis=1)[:, :k]
    return float(np.mean([y[i] in top[i] for i in range(len(y))]))


def multiclass_body(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], min_cohort: int
) -> dict[str, Any]:
    """Macro AUC, accuracy, top-k accuracy, per-class figures and the confusion matrix."""
    y = np.asarray(y, dtype=np.int64)
    k = proba.shape[1]
    suppressed: list[dict[str, str]] = []
    predicted = proba.argmax(axis=1)
    per_class = []
    cut = max(1, int(np.ceil(0.1 * len(y))))
    for c in range(k):
        name = str(classes[c]) if c < len(classes) else str(c)
        rows = int((y == c).sum())
        if rows < min_cohort:
            suppressed.append(
                {"aggregate": "per-class figures", "item": name, "reason": f"{rows} < {min_cohort}"}
            )
            per_class.append({"class": name, "rows": None})
            continue
        top = np.argsort(-proba[:, c], kind="stable")[:cut]
        rate = rows / len(y)
        per_class.append(
            {
                "class": name,
                "rows": rows,
                "rate": rate,
                "auc": float(roc_auc_score(y == c, proba[:, c])),
                "top_decile_lift": float((y[top] == c).mean() / rate),
            }
        )
    # one class withheld alone would follow from the hold-out size and the others: withhold
    # the next smallest too
    withheld = [c for c in per_class if c.get("rows") is None]
    if len(withheld) == 1 and k > 1:
        released = [c for c in per_class if c.get("rows") is not None]
        smallest = min(released, key=lambda c: c["rows"])
        suppressed.append(
            {
                "aggregate": "per-class figures",
                "item": smallest["class"],
                "reason": "complementary: the withheld class would follow from it",
            }
        )
        for key in ("rows", "rate", "auc", "top_decile_lift"):
            smallest[key] = None
    counts = [[int(((y == a) & (predicted == b)).sum()) for b in range(k)] for a in range(k)]
    small = [(a, b) for a in range(k) for b in range(k) if 0 < counts[a][b] < min_cohort]
    confusion: list[list[int | None]] | None = counts
    if small:  # any cell could be solved from the class totals and the accuracy: none
        confusion = None
        suppressed.append(
            {
                "aggregate": "confusion matrix",
                "item": "every cell",
                "reason": f"{len(small)} cell(s) of fewer than {min_cohort} customers",
            }
        )
    present = len(np.unique(y)) == k
    macro = (
        float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(k))))
        if present
        else None
    )
    body = {
        "macro_auc": macro,
        "accuracy": float((predicted == y).mean()),
        "top_k_accuracy": {str(j): _top_k(y, proba, j) for j in (1, 2, 3) if j <= k},
        "per_class": per_class,
        "confusion": {"classes": [str(c) for c in classes], "counts": confusion},
        "suppressed": suppressed,
    }
    best = max(
        (c for c in per_class if c.get("rows")), key=lambda c: c["top_decile_lift"], default=None
    )
    top2 = body["top_k_accuracy"].get("2")
    body["summary"] = (
        f"The model names the customer's actual choice first for {body['accuracy']:.0%} of "
        f"hold-out customers"
        + (f" and among its two first picks for {top2:.0%}" if top2 is not None else "")
        + (
            f"; its best-targeted offer is '{best['class']}', where the top 10% it picks choose "
            f"it {best['top_decile_lift']:.1f}x as often as average."
            if best
            else "."
        )
    )
    return body


def build_tree_report(
    *,
    objective: str,
    party: str,
    y_holdout: np.ndarray,
    margins_holdout: np.ndarray,
    margins_own_only: np.ndarray,
    predict_holdout: np.ndarray,
    predict_own_only: np.ndarray,
    history: Sequence[float],
    aligned_rows: int,
    rows_per_party: Mapping[str, int],
    training_rows: int,
    min_cohort: int,
    own_feature_names: Sequence[str],
    trees: Mapping[str, Any],
    classes: Sequence[str] = (),
    outcome: str = "respond",
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The trees' shared report (see the module docstring).

    ``margins_*`` are the models' margins (logits for binary), ``predict_*`` their predictions
    (probabilities, per-class probabilities or values) on the hold-out rows; ``trees`` holds
    ``trees``, ``depth`` and, when the label owner is the result owner, ``importance`` (per
    party, :func:`importance_by_party`).
    """
    if objective in ("binary", "squared_error"):
        binary = objective == "binary"
        report = build_shared_report(
            EvaluationInputs(
                model="logistic" if binary else "linear",
                party=party,
                y_holdout=y_holdout,
                score_holdout=margins_holdout[:, 0] if binary else predict_holdout,
                score_own_only=margins_own_only[:, 0] if binary else predict_own_only,
                score_without={},
                objective_curve=list(history),
                holdout_loss_curve=list(history),
                aligned_rows=aligned_rows,
                rows_per_party=rows_per_party,
                training_rows=training_rows,
                min_cohort=min_cohort,
                own_feature_weights={f: 0.0 for f in own_feature_names},
                outcome=outcome,
                header=header,
            )
        )
        report["model_label"] = MODEL_LABEL
        report["trees"] = dict(trees)
        return report
    n = len(y_holdout)
    if n < min_cohort:
        raise PolicyViolation(
            "min_cohort",
            f"hold-out metrics would cover {n} rows, below the minimum cohort of {min_cohort}",
        )
    body = multiclass_body(y_holdout, predict_holdout, classes, min_cohort)
    own = multiclass_body(y_holdout, predict_own_only, classes, min_cohort)
    body["gain_over_own_data"] = {
        "metric": "macro AUC",
        "federated": body["macro_auc"],
        "label_owner_only": own["macro_auc"],
        "gain": (body["macro_auc"] or 0.0) - (own["macro_auc"] or 0.0),
        "partners": sorted(p for p in rows_per_party if p != party),
    }
    return {
        "schema": TREE_REPORT_SCHEMA,
        "model": "multiclass",
        "model_label": MODEL_LABEL,
        "party": party,
        "header": dict(header or {}),
        "min_cohort": int(min_cohort),
        "aligned_rows": int(aligned_rows),
        "rows_per_party": {str(k): int(v) for k, v in rows_per_party.items()},
        "training_rows": int(training_rows),
        "holdout_rows": int(n),
        "training_curve": {"holdout_loss": [float(v) for v in history]},
        "trees": dict(trees),
        **body,
    }

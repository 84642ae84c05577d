"""The end of a ``secureboost`` training job: ``train.tree_finish`` and ``train.tree_evaluate``.

``train.tree_finish`` (passive parties)
    For operation ``train``, write its own part of the model (``tree-model``): its split table
    (column and threshold of each of its splits, under the opaque ids the label owner uses),
    the columns it kept and its preparation plan. No party ever holds another's splits.
``train.tree_evaluate`` (label owner)
    The hold-out metrics of the model (the best round's with early stopping), published as the
    release list allows; for ``train``, its own part: the trees (owner and id of every split,
    leaf values), its split table, classes and preparation plan.
"""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score, roc_auc_score

from vfm_flower.context import PartyContext
from vfm_flower.party import StepRegistry
from vfm_flower.steps.trees import KIND, MODEL, TRAINING, params_of
from vfm_flower.trees import TreeEnsemble, objective_for

STEPS = StepRegistry()


def _save_part(ctx: PartyContext, meta: dict) -> None:
    arrays = {
        "keep": ctx.state.array("sb.keep"),
        "edges": ctx.state.array("sb.edges"),
    }
    meta = {
        "splits": json.loads(str(ctx.state.get("sb.splits"))),
        "prep_plan": str(ctx.state.get("prep_plan")),
        "edge_counts": json.loads(str(ctx.state.get("sb.edge_counts"))),
        **meta,
    }
    ctx.save_artifact(MODEL, arrays, meta)


@STEPS.step("train.tree_finish", jobs=(KIND,), operations=TRAINING)
def passive_finish(ctx: PartyContext) -> None:
    """Passive party: keep its split table (operation ``train``)."""
    if ctx.operation == "train":
        _save_part(ctx, {})


def holdout_metrics(objective: str, y: np.ndarray, margins: np.ndarray, params) -> dict:
    """The hold-out figures the job may release, rounded to 4 digits."""
    predict = objective_for(params).predict(margins)
    if objective == "binary":
        return {
            "auc": round(float(roc_auc_score(y, predict)), 4),
            "log_loss": round(float(log_loss(y, predict, labels=[0, 1])), 4),
        }
    if objective == "multiclass":
        labels = list(range(params.n_classes))
        present = np.unique(y.astype(int))
        auc = (
            roc_auc_score(y, predict, multi_class="ovr", average="macro", labels=labels)
            if len(present) == params.n_classes
            else float("nan")
        )
        return {
            "macro_auc": round(float(auc), 4),
            "accuracy": round(float(accuracy_score(y, predict.argmax(axis=1))), 4),
            "log_loss": round(float(log_loss(y, predict, labels=labels)), 4),
        }
    return {
        "r2": round(float(r2_score(y, predict)), 4),
        "rmse": round(float(np.sqrt(mean_squared_error(y, predict))), 4),
    }


@STEPS.step("train.tree_evaluate", jobs=(KIND,), operations=TRAINING)
def label_owner_evaluate(ctx: PartyContext) -> None:
    """LO: hold-out metrics; for ``train``, its own part of the model."""
    params = params_of(ctx).boosting
    model = TreeEnsemble.from_state(json.loads(str(ctx.state.get("sb.model"))))
    history = json.loads(str(ctx.state.get("sb.history")))
    margins = ctx.state.array("sb.margins")
    if params.early_stopping and history:
        best = int(np.argmin(history)) + 1
        model.trees = model.trees[: best * params.n_outputs]
        margins = ctx.state.array("sb.best_margins")
    holdout = ctx.state.array("sb.holdout").astype(bool)
    y = ctx.state.array("sb.y")
    figures = holdout_metrics(params.objective, y[holdout], margins[holdout], params)
    if ctx.operation == "train":
        _save_part(
            ctx,
            {
                "model": model.to_state(),
                "classes": json.loads(str(ctx.state.get("sb.classes"))),
                "history": history,
                "figures": figures,
            },
        )
    ctx.publish(**{k: v for k, v in figures.items() if ctx.may_release("server", k)})

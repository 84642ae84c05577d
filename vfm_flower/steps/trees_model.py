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
import os

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score, roc_auc_score

from vfm_flower import report as reporting
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.party import StepRegistry
from vfm_flower.report_trees import build_tree_report, importance_by_party, party_importance
from vfm_flower.report_trees_render import write_tree_report
from vfm_flower.steps import delivery
from vfm_flower.steps.trees import KIND, MODEL, TRAINING, min_node_rows, params_of
from vfm_flower.tree_growth import grow_plain
from vfm_flower.tree_model import SplitTable, TreeEnsemble
from vfm_flower.trees import BoostingParams, objective_for

TOPIC_GAINS = Topic("trees.split_gains", phase="train.tree_evaluate")
REPORT = "tree-report"
IMPORTANCE = "tree-importance"

STEPS = StepRegistry()


@STEPS.receiver(REPORT, jobs=(KIND,))
def receive_report(ctx: PartyContext, payload: bytes) -> None:
    """Result owner: write the trees' report in its work dir."""
    write_tree_report(json.loads(payload), ctx.work_dir)


def _write_importance(ctx: PartyContext, content: dict) -> None:
    ctx.check_release("party", IMPORTANCE)
    target = ctx.work_dir / f"{IMPORTANCE}.json"
    tmp = ctx.work_dir / f".{IMPORTANCE}.json.partial"
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target)


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
    """Passive party: its own features' importance; keep its split table (``train``)."""
    arrays, meta = ctx.receive_arrays(ctx.label_owner, TOPIC_GAINS, round=ctx.round - 1)
    table = SplitTable.from_state(json.loads(str(ctx.state.get("sb.splits"))))
    with ctx.decoding(ctx.label_owner, TOPIC_GAINS):
        used = [int(s) for s in meta["splits"]]
        shares = {int(k): float(v) for k, v in meta.get("shares", {}).items()}
        unknown = (set(used) | set(shares)) - set(table.columns)
        if unknown:
            raise ValueError(f"{len(unknown)} split(s) this party never made")
    # keep only the splits the model uses (early stopping drops trees; a split never used
    # is never answered at scoring)
    kept = SplitTable()
    for s in used:
        kept.add(s, table.columns[s], table.thresholds[s])
    ctx.state.set("sb.splits", json.dumps(kept.to_state()))
    if shares:
        names = json.loads(str(ctx.state.get("sb.names")))
        features = party_importance(shares, kept.columns, names)
        _write_importance(ctx, {"party": ctx.party, "features": features})
    if ctx.operation == "train":
        _save_part(ctx, {})
    delivery.receive_results(ctx)  # a passive result owner's report, relayed with this step


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
    classes = json.loads(str(ctx.state.get("sb.classes")))
    names = json.loads(str(ctx.state.get("sb.names")))
    importance = model.importance()
    released = ctx.may_release("party", IMPORTANCE)
    total = sum(g for splits in importance.values() for _, g in splits.values()) or 1.0
    # every passive party gets the ids its model part keeps and, when the agreement releases
    # the importance, each one's share of the total gain (rounded: a share, not a raw gain)
    for peer in ctx.passive_parties:
        mine = importance.get(peer, {})
        shares = {str(s): round(g / total, 3) for s, (_, g) in mine.items()} if released else {}
        ctx.send(peer, TOPIC_GAINS, pack_payload({}, {"splits": sorted(mine), "shares": shares}))
    per_party = importance_by_party(importance)
    if released:
        own_table = SplitTable.from_state(json.loads(str(ctx.state.get("sb.splits"))))
        own = {s: g / total for s, (_, g) in importance.get(ctx.party, {}).items()}
        _write_importance(
            ctx,
            {
                "party": ctx.party,
                "features": party_importance(own, own_table.columns, names),
                "parties": per_party,
            },
        )
    # the report: beside a model trained in plain on the label owner's own columns alone
    own_params = BoostingParams(**{**params.__dict__, "subsample": 1.0, "colsample": 1.0})
    _, own_margins, _ = grow_plain(
        own_params,
        {ctx.party: ctx.state.array("sb.codes")},
        y,
        holdout,
        label_owner=ctx.party,
        min_node_rows=min_node_rows(ctx),
    )
    objective = objective_for(params)
    kept_trees = len(model.trees) // params.n_outputs
    trees = {
        "trees": kept_trees,
        "depth": params.max_depth,
        "rounds_per_tree": 4 * params.max_depth,
    }
    if ctx.is_result_owner:
        trees["importance"] = per_party
    report = build_tree_report(
        objective=params.objective,
        party=ctx.result_owner,
        y_holdout=y[holdout],
        margins_holdout=margins[holdout],
        margins_own_only=own_margins[holdout],
        predict_holdout=objective.predict(margins[holdout]),
        predict_own_only=objective.predict(own_margins[holdout]),
        history=history,
        aligned_rows=int(len(y)),
        rows_per_party={str(k): int(v) for k, v in ctx.party_rows.items()},
        training_rows=int((~holdout).sum()),
        min_cohort=ctx.min_cohort,
        own_feature_names=names,
        trees=trees,
        classes=classes,
        outcome=params_of(ctx).outcome,
        header=reporting.report_header(ctx.agreement, ctx.job),
    )
    ctx.deliver(REPORT, json.dumps(report, sort_keys=True).encode())
    if ctx.operation == "train":
        _save_part(
            ctx,
            {
                "model": model.to_state(),
                "classes": classes,
                "history": history,
                "figures": figures,
            },
        )
    figures["trees"] = kept_trees
    ctx.publish(**{k: v for k, v in figures.items() if ctx.may_release("server", k)})

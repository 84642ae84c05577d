"""The end of a regression training job, party side: ``train.finish``.

When the label owner (LO) decided to stop, every party applies the final control (its stop
envelope from the LO), and, for operation ``train``, writes its own model slice and its own
feature report (``evaluate`` measures a model and keeps none). The LO evaluates on its hold-out
rows, trains a model on its own columns alone (locally, same rows and split) for comparison,
and builds the shared report, which it keeps (result owner) or delivers to the result owner.
The server learns counts and a few headline metrics, rounded, and only those the agreement's
release list names.
"""

from __future__ import annotations

import json

import numpy as np

from vfm_flower import report as reporting
from vfm_flower.context import PartyContext
from vfm_flower.errors import ProtocolAbort
from vfm_flower.model import BlockOptimizer, ModelSpec, StepControl, train_vertical_plaintext
from vfm_flower.model_store import ModelSlice, save_model_slice
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import PreparationPlan
from vfm_flower.steps.training import (
    REGRESSION_KINDS,
    TOPIC_STOP,
    TRAINING,
    load_coordinator,
    load_optimizer,
    model_spec,
    params_of,
)

#: The closing step of the regression training jobs.
STEPS = StepRegistry()


@STEPS.receiver("report", jobs=REGRESSION_KINDS)
def receive_report(ctx: PartyContext, payload: bytes) -> None:
    """Result owner: write the report (``report.json``, ``report.html``) in its work dir."""
    reporting.write_released_report(json.loads(payload), ctx.work_dir)


_HEADLINE = {
    "logistic": ("auc", "auc_label_owner_only", "log_loss", "top_decile_lift"),
    "linear": ("r2", "r2_label_owner_only", "rmse"),
}


@STEPS.step("train.finish", jobs=REGRESSION_KINDS, operations=TRAINING)
def every_party_finish(ctx: PartyContext) -> None:
    """Apply the final control, write the model slice; LO: hold-out evaluation."""
    t = ctx.round
    spec = model_spec(ctx)
    optimizer = load_optimizer(ctx)
    if not ctx.is_label_owner:
        blob = ctx.receive(ctx.label_owner, TOPIC_STOP)
        with ctx.decoding(ctx.label_owner, TOPIC_STOP):
            control = StepControl.from_dict(json.loads(blob.decode()))
        optimizer.step(None, control)
    if not optimizer.finished:
        raise ProtocolAbort(ctx.kind, ctx.party, "training did not reach its stop control")
    plan = PreparationPlan.from_json(str(ctx.state.get("prep_plan")))
    info: dict[str, object] = {"iterations": t, "run_key": ctx.run_id}
    released: dict[str, object] = {"features": int(optimizer.weights.size)}
    if ctx.is_label_owner:
        evaluation = _evaluate(ctx, spec, optimizer, plan)
        released.update(evaluation)
        info.update(evaluation)
    ctx.publish(**released)
    if ctx.operation != "train":
        return
    ctx.check_release("party", "model-slice", "party-report")
    weights = dict(zip(plan.feature_names, (float(w) for w in optimizer.weights)))
    reporting.write_party_report(
        reporting.build_party_report(
            ctx.party,
            spec.kind,
            weights,
            min_cohort=ctx.min_cohort,
            aligned_rows=int(ctx.state.array("X").shape[0]),
        ),
        ctx.work_dir,
    )
    save_model_slice(
        ctx.work_dir,
        ModelSlice(
            party=ctx.party,
            model=spec.kind,
            agreement_hash=ctx.agreement.terms_hash(),
            feature_names=tuple(plan.feature_names),
            weights=optimizer.weights,
            intercept=optimizer.intercept if ctx.is_label_owner else None,
            preparation_json=plan.to_json(),
            info=info,
        ),
    )


def _evaluate(
    ctx: PartyContext, spec: ModelSpec, optimizer: BlockOptimizer, plan: PreparationPlan
) -> dict[str, object]:
    """Hold-out evaluation and the result owner's report; returns the released aggregates.

    Contribution is measured without new leakage: the label owner's own block (``X_lo w_lo``,
    which it holds) and the passive parties' summed block (``z - X_lo w_lo - b``, the sum it
    already learns) are each left out in turn.
    """
    coordinator = load_coordinator(ctx)
    y = ctx.state.array("y")
    holdout = coordinator.holdout_mask
    z = coordinator.z
    if ctx.state.get("stop_reason") == "early_stopping" and "z_best" in ctx.state:
        z = ctx.state.array("z_best")
    n_hold = int(holdout.sum())
    ctx.check_cohort(n_hold, "hold-out metrics")
    X = ctx.state.array("X")
    params = params_of(ctx)
    own = train_vertical_plaintext(
        [X], y, spec, max_iterations=params.max_iterations, holdout_mask=holdout
    )
    own_block = X @ optimizer.weights
    score_without: dict[str, np.ndarray] = {ctx.party: (z - own_block)[holdout]}
    if ctx.passive_parties:
        score_without["+".join(ctx.passive_parties)] = (own_block + optimizer.intercept)[holdout]
    rows_per_party = ctx.party_rows  # from the parties' signed hellos, not from the server
    inputs = reporting.EvaluationInputs(
        model=spec.kind,
        party=ctx.party,
        y_holdout=y[holdout],
        score_holdout=z[holdout],
        score_own_only=own.scores[holdout],
        score_without=score_without,
        objective_curve=[float(v) for v in coordinator.monitor.objective],
        holdout_loss_curve=[float(v) for v in coordinator.monitor.holdout_loss],
        aligned_rows=int(y.size),
        rows_per_party={str(k): int(v) for k, v in rows_per_party.items()},
        training_rows=int((~holdout).sum()),
        min_cohort=ctx.min_cohort,
        own_feature_weights=dict(zip(plan.feature_names, (float(w) for w in optimizer.weights))),
        outcome=params.outcome,
    )
    report = reporting.build_shared_report(inputs)
    reporting.check_report_matches(report, inputs)
    ctx.deliver("report", json.dumps(report, sort_keys=True).encode())
    # What the server learns: counts and a few headline metrics, rounded to 3 decimals (the
    # full report, curves included, stays with the result owner).
    out: dict[str, object] = {
        "holdout_rows": n_hold,
        "training_rows": int((~holdout).sum()),
        "iterations": len(coordinator.monitor.objective) - 1,
        "reason": str(ctx.state.get("stop_reason", "")),
    }
    out.update(
        {k: round(float(report[k]), 3) for k in _HEADLINE[spec.kind] if report.get(k) is not None}
    )
    # metrics the signers left off the release list are withheld, not sent; the headline
    # sentences quote the metrics, so they go only when every metric they quote may go
    quoted = (*_HEADLINE[spec.kind], "holdout_rows", "joint_rows")
    if all(ctx.may_release("server", k) for k in quoted):
        out["headline"] = reporting.headline(report)
    return {k: v for k, v in out.items() if ctx.may_release("server", k)}

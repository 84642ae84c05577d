"""Scoring new customers with the regression job kinds, party side (after alignment).

``query.score`` (all parties): load the party's own model slice (a missing slice is a clear
error naming the party), prepare its columns with the statistics saved at training, and
compute its partial score on the aligned rows. Passive parties share it pairwise-masked and
seal the identity of their slice (the training run) to the label owner, who checks every slice
itself; the label owner keeps its own part. The server sums the masked shares.
``query.combine`` (label owner): unmask the sum, add its own part and the intercept, apply the
link, and keep the scores (result owner: ``scores.csv`` under its own ids) or deliver them to
the result owner. Only the result owner ever keeps a score.
"""

from __future__ import annotations

import json

from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError
from vfm_flower.model import link
from vfm_flower.model_store import load_model_slice
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import PreparationPlan, apply_preparation
from vfm_flower.steps import delivery
from vfm_flower.steps.training import REGRESSION_KINDS

SCORE_LABEL = "score/forward"
TOPIC_MODEL = Topic("score.model_stamp", phase="query.score")

#: The scoring steps of the regression job kinds.
STEPS = StepRegistry()
# the result owner (when it is not the label owner) writes delivered scores under its own ids
STEPS.receiver("scores", jobs=REGRESSION_KINDS)(delivery.receive_scores)


@STEPS.step("query.score", jobs=REGRESSION_KINDS, operations=("score",))
def every_party_score(ctx: PartyContext) -> None:
    """Every party: its partial score on the aligned rows from its own model slice."""
    rows = ctx.aligned_rows()
    model_slice = load_model_slice(ctx.work_dir, ctx.party)
    if model_slice.agreement_hash != ctx.agreement.terms_hash():
        raise DataError(f"party '{ctx.party}': its model slice was trained under another agreement")
    if model_slice.model != ctx.job.kind:
        raise DataError(
            f"party '{ctx.party}': its model slice is '{model_slice.model}', the job "
            f"scores '{ctx.job.kind}'"
        )
    plan = PreparationPlan.from_json(model_slice.preparation_json)
    prepared = apply_preparation(plan, ctx.aligned_table())
    if tuple(prepared.feature_names) != model_slice.feature_names:
        raise DataError(f"party '{ctx.party}': prepared columns differ from its model slice")
    partial = prepared.matrix @ model_slice.weights
    model_id = str(model_slice.info.get("run_key", ""))
    ctx.publish(rows=int(len(rows)), model_id=model_id)
    if ctx.is_label_owner:
        ctx.state.set_array("own_score", partial + float(model_slice.intercept or 0.0))
        ctx.state.set("score_model", model_slice.model)
        ctx.state.set("score_model_id", model_id)
        return
    ctx.share("score", partial, label=SCORE_LABEL)
    # the label owner checks every slice itself (a server could skip its own check)
    stamp = json.dumps({"model_id": model_id, "model": model_slice.model}).encode()
    ctx.send(ctx.label_owner, TOPIC_MODEL, stamp)


@STEPS.step("query.combine", jobs=REGRESSION_KINDS, operations=("score",))
def label_owner_combine(ctx: PartyContext) -> None:
    """Label owner: unmask the sum, add its part, keep or deliver the scores."""
    own = ctx.state.array("own_score")
    expected = {"model_id": ctx.state.get("score_model_id"), "model": ctx.state.get("score_model")}
    for peer in ctx.passive_parties:
        blob = ctx.receive(peer, TOPIC_MODEL)
        with ctx.decoding(peer, TOPIC_MODEL):
            stamp = json.loads(blob)
        if stamp != expected:
            raise DataError(
                f"party '{peer}' scores with a model slice from another training run than "
                f"'{ctx.party}': retrain, or restore matching slices"
            )
    total = own.copy()
    if ctx.passive_parties:
        total += ctx.unmask("score", label=SCORE_LABEL, length=own.shape[0])
    scores = link(total, str(ctx.state.get("score_model")))
    ctx.publish(scored_rows=int(len(scores)))
    ctx.deliver("scores", delivery.scores_payload(scores))

"""Scoring new customers with a ``secureboost`` model, party side (after alignment).

``query.tree_score`` (every party)
    Load its own part of the model (``tree-model``; a missing one is a clear error naming the
    party), prepare its columns with the plan saved at training and answer every one of its
    own splits: the label owner (LO) on the joint rows, a passive party on **all** its rows,
    by slot, each bit XORed with the per-customer mask of its pair with the LO (so the LO
    reads the sides of the joint customers only, and the passive party learns neither which
    customers are joint nor any row's path).
``query.tree_combine`` (LO)
    Check that every part comes from the same training run, remove the masks, descend the
    trees and keep (result owner) or deliver the scores: a probability for binary, one per
    class for multiclass (with the predicted class), a value for squared error.

The LO learns what it learns at training: the side of each scored joint customer at every
passive split. The server learns counts.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from vfm_flower import secureboost as sb
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import PreparationPlan, apply_preparation
from vfm_flower.steps import delivery
from vfm_flower.steps.trees import KIND, MODEL
from vfm_flower.tree_model import SplitTable, TreeEnsemble
from vfm_flower.trees import BoostingParams, objective_for

TOPIC_ANSWERS = Topic("trees.score_answers", phase="query.tree_score")
MASK_LABEL = "trees/score"

STEPS = StepRegistry()
STEPS.receiver("scores", jobs=(KIND,))(delivery.receive_scores)


def _model_id(run_id: str) -> str:
    return hashlib.sha256(f"vfm-flower/tree-model/{run_id}".encode()).hexdigest()[:16]


def _own_part(ctx: PartyContext):
    """This party's part of the model: ``(split table, prepared columns, meta, model id)``."""
    arrays, meta, run_id = ctx.load_artifact(MODEL)
    plan = PreparationPlan.from_json(str(meta["prep_plan"]))
    rows = ctx.rows()
    prepared = apply_preparation(plan, ctx.table().iloc[rows].reset_index(drop=True))
    keep = np.asarray(arrays["keep"], dtype=np.int64)
    if keep.size and int(keep.max()) >= prepared.matrix.shape[1]:
        raise DataError(f"party '{ctx.party}': its prepared columns differ from its tree model")
    X = prepared.matrix[:, keep]
    return SplitTable.from_state(meta["splits"]), X, meta, _model_id(run_id)


@STEPS.step("query.tree_score", jobs=(KIND,), operations=("score",))
def every_party_score(ctx: PartyContext) -> None:
    """Answer every own split for the rows this party computes on."""
    table, X, meta, model_id = _own_part(ctx)
    ids = sorted(table.columns)
    left = table.decisions(X, ids)
    ctx.publish(rows=int(X.shape[0]))
    if ctx.is_label_owner:
        ctx.state.set("sb.score_model", json.dumps(meta["model"]))
        ctx.state.set("sb.score_classes", json.dumps(meta.get("classes", [])))
        ctx.state.set("sb.score_model_id", model_id)
        ctx.state.set_array("sb.score_own", left)
        ctx.state.set("sb.score_own_ids", json.dumps(ids))
        return
    layout = ctx.passive_layout()
    ctx.claim_mask_label(MASK_LABEL)
    masks = sb.partition_masks(
        ctx.mask_seeds()[ctx.label_owner], MASK_LABEL, ctx.customer_tokens(), len(ids)
    )
    answers = [
        sb.side_bits(left[:, j], layout.slot_of_row, layout.total_slots, masks[:, j])
        for j in range(len(ids))
    ]

    bits = np.concatenate(answers) if answers else np.zeros(0, dtype=np.uint8)
    ctx.send(
        ctx.label_owner,
        TOPIC_ANSWERS,
        pack_payload({"bits": bits}, {"ids": ids, "model_id": model_id}),
    )


@STEPS.step("query.tree_combine", jobs=(KIND,), operations=("score",))
def label_owner_combine(ctx: PartyContext) -> None:
    """LO: every party's answers, the trees descended, the scores kept or delivered."""
    model = TreeEnsemble.from_state(json.loads(str(ctx.state.get("sb.score_model"))))
    model_id = str(ctx.state.get("sb.score_model_id"))
    own = ctx.state.array("sb.score_own")
    own_ids = json.loads(str(ctx.state.get("sb.score_own_ids")))
    rows = own.shape[0]
    decisions = {ctx.party: {s: own[:, j] for j, s in enumerate(own_ids)}}
    layout = ctx.label_owner_layout()
    tokens, seeds = ctx.customer_tokens(), ctx.mask_seeds()
    width = -(-int(layout.total_slots) // 8)
    for peer in ctx.passive_parties:
        arrays, meta = ctx.receive_arrays(peer, TOPIC_ANSWERS)
        if str(meta.get("model_id")) != model_id:  # before anything else is read from it
            raise DataError(
                f"party '{peer}' scores with a tree model from another training run than "
                f"'{ctx.party}': retrain, or restore matching model parts"
            )
        with ctx.decoding(peer, TOPIC_ANSWERS):
            ids = [int(i) for i in meta["ids"]]
            bits = arrays["bits"]
            if bits.size != width * len(ids):
                raise ValueError(f"{bits.size} answer bytes for {len(ids)} splits")
            masks = sb.partition_masks(seeds[peer], MASK_LABEL, tokens, len(ids))
            decisions[peer] = {
                s: sb.slot_partition(
                    bits[j * width : (j + 1) * width],
                    layout.joint_slots,
                    layout.total_slots,
                    masks[:, j],
                )
                for j, s in enumerate(ids)
            }
    scores = objective_of(model).predict(model.margins(decisions, rows))
    classes = json.loads(str(ctx.state.get("sb.score_classes")))
    ctx.publish(scored_rows=int(rows))
    ctx.deliver("scores", delivery.scores_payload(ctx, scores, classes=classes or None))


def objective_of(model: TreeEnsemble):
    """The objective a saved model was trained with."""
    k = len(model.base_margin)
    params = (
        BoostingParams(objective="multiclass", n_classes=k)
        if model.objective == "multiclass"
        else BoostingParams(objective=model.objective)
    )
    return objective_for(params)

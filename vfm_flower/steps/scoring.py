"""Scoring new customers with the regression job kinds, party side (after alignment).

``query.score`` (all parties): load the party's own model slice (a missing slice is a clear
error naming the party) and prepare its columns with the statistics saved at training. The
label owner (LO) computes its partial score on the joint rows; a passive party computes, on
**all** its rows (it does not learn which customers are joint), the packed, per-customer-
masked image ``[[X_k w_k]]`` of its encrypted weights and seals it to the LO with the identity
of its slice (the training run and the LO key it was trained under), which the LO checks.
``query.combine`` (LO): add the images slot by slot, decrypt, read the joint slots, add its
own part and the intercept, apply the link, and keep the scores (result owner: ``scores.csv``
under its own ids) or deliver them to the result owner. Only the result owner ever keeps a
score; the server relays sealed envelopes and learns counts.
"""

from __future__ import annotations

import hashlib
import json

from vfm_flower import paillier
from vfm_flower import private_gradients as pg
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError
from vfm_flower.model import link
from vfm_flower.model_store import ModelSlice, load_model_slice
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import PreparationPlan, apply_preparation
from vfm_flower.steps import delivery
from vfm_flower.steps.evaluation import open_final_scores, send_model_image
from vfm_flower.steps.training import (
    REGRESSION_KINDS,
    ciphertexts_of,
    public_key,
)

SCORE_LABEL = "score/image"
TOPIC_IMAGE = Topic("score.encrypted_image", phase="query.score")

#: The scoring steps of the regression job kinds.
STEPS = StepRegistry()
# the result owner (when it is not the label owner) writes delivered scores under its own ids
STEPS.receiver("scores", jobs=REGRESSION_KINDS)(delivery.receive_scores)


def _key_id(public_bytes: bytes | None) -> str:
    return hashlib.sha256(public_bytes or b"").hexdigest()[:16]


def _own_slice(ctx: PartyContext) -> ModelSlice:
    model_slice = load_model_slice(ctx.work_dir, ctx.party)
    if model_slice.agreement_hash != ctx.agreement.terms_hash():
        raise DataError(f"party '{ctx.party}': its model slice was trained under another agreement")
    if model_slice.model != ctx.job.kind:
        raise DataError(
            f"party '{ctx.party}': its model slice is '{model_slice.model}', the job "
            f"scores '{ctx.job.kind}'"
        )
    if model_slice.public_key is None:
        raise DataError(f"party '{ctx.party}': its model slice predates encrypted weights: retrain")
    return model_slice


@STEPS.step("query.score", jobs=REGRESSION_KINDS, operations=("score",))
def every_party_score(ctx: PartyContext) -> None:
    """LO: its partial score on the joint rows; passive party: its masked encrypted image."""
    rows = ctx.rows()
    model_slice = _own_slice(ctx)
    plan = PreparationPlan.from_json(model_slice.preparation_json)
    prepared = apply_preparation(plan, ctx.table().iloc[rows].reset_index(drop=True))
    if tuple(prepared.feature_names) != model_slice.feature_names:
        raise DataError(f"party '{ctx.party}': prepared columns differ from its model slice")
    model_id = str(model_slice.info.get("run_key", ""))
    ctx.publish(rows=int(len(rows)), model_id=model_id)
    stamp = {
        "model_id": model_id,
        "model": model_slice.model,
        "key": _key_id(model_slice.public_key),
    }
    if ctx.is_label_owner:
        if model_slice.private_key is None:
            raise DataError(f"party '{ctx.party}': its model slice holds no Paillier key")
        partial = prepared.matrix @ model_slice.weights
        ctx.state.set_array("own_score", partial + float(model_slice.intercept or 0.0))
        ctx.state.set("score_stamp", json.dumps(stamp, sort_keys=True))
        ctx.state.set_bytes("paillier.public", model_slice.public_key)
        ctx.state.set_bytes("paillier.private", model_slice.private_key)
        return
    public = paillier.public_key_from_bytes(
        model_slice.public_key, min_bits=ctx.agreement.min_paillier_bits
    )
    m = len(model_slice.feature_names)
    weights = paillier.ciphertexts_from_bytes(model_slice.encrypted_weights or b"", public, m)
    with ctx.decoding(ctx.party, "features"):
        X_int = pg.quantize_features(prepared.matrix)
    meta = {"stamp": json.dumps(stamp, sort_keys=True)}
    send_model_image(ctx, public, weights, X_int, SCORE_LABEL, TOPIC_IMAGE, meta)


@STEPS.step("query.combine", jobs=REGRESSION_KINDS, operations=("score",))
def label_owner_combine(ctx: PartyContext) -> None:
    """Label owner: check every slice's identity, open the images, keep or deliver scores."""
    own = ctx.state.array("own_score")
    expected = str(ctx.state.get("score_stamp"))
    images = {}
    for peer in ctx.passive_parties:
        arrays, meta = ctx.receive_arrays(peer, TOPIC_IMAGE)
        if str(meta.get("stamp")) != expected:  # before anything else is read from it
            raise DataError(
                f"party '{peer}' scores with a model slice from another training run than "
                f"'{ctx.party}': retrain, or restore matching slices"
            )
        with ctx.decoding(peer, TOPIC_IMAGE):
            images[peer] = ciphertexts_of(arrays["image"], public_key(ctx), int(meta["image"]))
    total = own.copy()
    if ctx.passive_parties:
        total += open_final_scores(ctx, SCORE_LABEL, images)
    scores = link(total, json.loads(expected)["model"])
    ctx.publish(scored_rows=int(len(scores)))
    ctx.deliver("scores", delivery.scores_payload(ctx, scores))

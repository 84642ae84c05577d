"""Phase 4b, scoring new customers, party side (after alignment on the new ids).

``query.score`` (all parties): finish the alignment, load the party's own model slice (a
missing slice is a clear error naming the party), prepare its columns with the statistics
saved at training, and compute its partial score on the aligned rows. Passive parties send
it pairwise-masked; the label owner keeps its own part. The server sums the masked vectors.
``query.combine`` (label owner = result owner): remove its masks, add its own part and the
intercept, apply the link, and write ``scores.csv`` (its own ids, as written in its file,
and the score) atomically into its work dir. Only the result owner ever sees a score.
"""

from __future__ import annotations

import json

from vfm_flower import masking
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.model import link
from vfm_flower.model_store import load_model_slice
from vfm_flower.party import PartyRuntime, StepReply, StepRequest, step_handler
from vfm_flower.preparation import PreparationPlan, apply_preparation
from vfm_flower.steps import delivery
from vfm_flower.steps.alignment import finish_alignment
from vfm_flower.steps.training import pairwise_seeds
from vfm_flower.tables import read_party_table

SCORE_LABEL = "score/forward"
TOPIC_MODEL = "score.model_stamp"


@step_handler("query.score")
def partial_scores(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Every party: its partial score on the aligned rows from its own model slice."""
    rows = finish_alignment(runtime, request)
    model_slice = load_model_slice(runtime.work_dir, runtime.party)
    if model_slice.agreement_hash != runtime.agreement.terms_hash():
        raise DataError(
            f"party '{runtime.party}': its model slice was trained under another agreement"
        )
    if model_slice.model != request.job.model:
        raise DataError(
            f"party '{runtime.party}': its model slice is '{model_slice.model}', the job "
            f"scores '{request.job.model}'"
        )
    frame = read_party_table(
        runtime.settings.data_path, party=runtime.party, id_columns=runtime.terms.id_columns
    )
    aligned = frame.iloc[rows].reset_index(drop=True)
    plan = PreparationPlan.from_json(model_slice.preparation_json)
    prepared = apply_preparation(plan, aligned)
    if tuple(prepared.feature_names) != model_slice.feature_names:
        raise DataError(f"party '{runtime.party}': prepared columns differ from its model slice")
    partial = prepared.matrix @ model_slice.weights
    model_id = str(model_slice.info.get("run_key", ""))
    reply = StepReply(party=runtime.party, public={"rows": int(len(rows)), "model_id": model_id})
    if runtime.is_label_owner:
        runtime.state.set_array("own_score", partial + float(model_slice.intercept or 0.0))
        runtime.state.set("score_model", model_slice.model)
        runtime.state.set("score_model_id", model_id)
    else:
        runtime.claim_mask_label(SCORE_LABEL)
        reply.masked["score"] = masking.mask_vector(
            masking.encode_fixed(partial), runtime.party, pairwise_seeds(runtime), SCORE_LABEL
        )
        # the result owner checks every slice itself (a server could skip its own check)
        lo = runtime.agreement.label_owner
        stamp = json.dumps({"model_id": model_id, "model": model_slice.model}).encode()
        reply.outbox[(lo, TOPIC_MODEL)] = runtime.seal(
            lo, TOPIC_MODEL, stamp, phase="query.score", round=request.step
        )
    return reply


@step_handler("query.combine")
def combine_scores(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Result owner: unmask the sum, add its part, write its scores file."""
    own = runtime.state.array("own_score")
    expected = {
        "model_id": runtime.state.get("score_model_id"),
        "model": runtime.state.get("score_model"),
    }
    for peer in runtime.agreement.passive_parties:
        stamp = json.loads(
            runtime.open(request, peer, TOPIC_MODEL, phase="query.score", round=request.step)
        )
        if stamp != expected:
            raise DataError(
                f"party '{peer}' scores with a model slice from another training run than "
                f"'{runtime.party}': retrain, or restore matching slices"
            )
    total = own.copy()
    if runtime.agreement.passive_parties:
        masked_sum = request.sums.get("score")
        if masked_sum is None or masked_sum.shape != own.shape:
            raise ProtocolAbort(request.kind, runtime.party, "the server's score sum is missing")
        total += masking.decode_fixed(
            masking.unmask_sum(masked_sum, runtime.party, pairwise_seeds(runtime), SCORE_LABEL)
        )
    scores = link(total, str(runtime.state.get("score_model")))
    reply = StepReply(party=runtime.party, public={"scored_rows": int(len(scores))})
    if delivery.is_result_owner(runtime):
        delivery.write_scores(runtime, scores)
    else:
        delivery.send_scores(runtime, reply, scores, phase=request.kind, round=request.step)
    return reply

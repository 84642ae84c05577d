"""The end of a regression training job, party side: ``train.finish`` and ``train.evaluate``.

``train.finish`` (passive parties)
    Unmask the final encrypted weights the LO moved (or take the kept point of the best
    hold-out round, for early stopping), send the LO the packed, masked image ``[[X_k w_k]]``
    of that final model, and, for operation ``train``, write the model slice (weights still
    encrypted under the LO's key) and the party's own report (its features; no weight).
``train.evaluate`` (label owner)
    Open the summed final image on the joint rows: the scores of exactly the model the
    parties saved. Check them against the scores it tracked during training (a deviating
    party that swapped its model is refused, rule ``model_consistency``), evaluate on its
    hold-out rows, train a model on its own columns alone (locally, same rows and split) for
    comparison, build the shared report, which it keeps (result owner) or delivers, and write
    its own slice. ``evaluate`` measures a model and keeps none.

The server learns counts and a few headline metrics, rounded, and only those the agreement's
release list names.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from vfm_flower import paillier
from vfm_flower import private_gradients as pg
from vfm_flower import private_gradients_label_owner as pg_lo
from vfm_flower import report as reporting
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import ProtocolAbort
from vfm_flower.hazmat import paillier_djn as djn
from vfm_flower.model import BlockOptimizer, ModelSpec
from vfm_flower.model_label_owner import train_vertical_plaintext
from vfm_flower.model_store import ModelSlice, load_model_slice, save_model_slice
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import PreparationPlan
from vfm_flower.steps.training import (
    REGRESSION_KINDS,
    TOPIC_BACKWARD,
    TRAINING,
    ciphertext_array,
    ciphertexts_of,
    image_label,
    load_coordinator,
    load_optimizer,
    model_spec,
    offsets_from_bytes,
    offsets_to_bytes,
    params_of,
    passive_features,
    precomputed_encryptor,
    private_key,
    public_key,
    receive_backward,
)

TOPIC_FINAL = Topic("train.final_image", phase="train.finish")
TOPIC_MASKED_WEIGHTS = Topic("train.masked_weights", phase="train.finish")
TOPIC_RELEASED_WEIGHTS = Topic("train.released_weights", phase="train.evaluate")
#: The opt-in release of a passive party's plaintext weights (to that party, once).
WEIGHTS = "model-weights"
FINAL_LABEL = image_label("final")
#: Largest difference between the scores the LO tracked and those of the saved model:
#: fixed-point rounding stays far below it (about 1e-6 per iteration).
MODEL_CONSISTENCY_TOLERANCE = 1e-3

#: The closing steps of the regression training jobs.
STEPS = StepRegistry()


@STEPS.receiver("report", jobs=REGRESSION_KINDS)
def receive_report(ctx: PartyContext, payload: bytes) -> None:
    """Result owner: write the report (``report.json``, ``report.html``) in its work dir."""
    reporting.write_released_report(json.loads(payload), ctx.work_dir)


_HEADLINE = {
    "logistic": ("auc", "auc_label_owner_only", "log_loss", "top_decile_lift"),
    "linear": ("r2", "r2_label_owner_only", "rmse"),
}


def final_weights(ctx: PartyContext) -> list:
    """Passive party: its encrypted final weights after the LO's stop control."""
    t = ctx.round
    message = receive_backward(ctx, TOPIC_BACKWARD, round=t - 1)
    control = message.control
    if not control.stop or control.iteration != t:
        raise ProtocolAbort(ctx.kind, ctx.party, "training did not reach its stop control")
    public = public_key(ctx)
    m = int(ctx.state.array("X").shape[1])
    if 0 <= control.best_round < t:
        key = f"pg.moved.{control.best_round}"
        if key not in ctx.state:
            raise ProtocolAbort(ctx.kind, ctx.party, "the best round's weights were not kept")
        return list(paillier.ciphertexts_from_bytes(ctx.state.get_bytes(key), public, m))
    secrets = offsets_from_bytes(ctx.state.get_bytes("pg.offsets"))
    return pg.passive_state(public, message, secrets, m)[0]


def send_model_image(
    ctx: PartyContext,
    public,
    weights: list,
    X_int: np.ndarray,
    label: str,
    topic: Topic,
    meta: dict | None = None,
    encryptor: djn.DJNEncryptor | None = None,
) -> None:
    """Passive party: seal the packed, per-customer-masked image ``[[X w]]`` of its encrypted
    weights on all its rows to the LO (the final model at training, new rows at scoring)."""
    ctx.claim_mask_label(label)
    masks = pg.row_masks(
        ctx.party,
        ctx.label_owner,
        ctx.mask_seeds(),
        ctx.passive_parties,
        ctx.customer_tokens(),
        label,
        pg.final_image_bits(),
        public.n.bit_length(),
    )
    image = pg.passive_final_image(
        public,
        encryptor or djn.DJNEncryptor(public),
        weights,
        X_int,
        ctx.passive_layout(),
        slot_masks=masks,
        passive_parties=len(ctx.passive_parties),
    )
    payload = pack_payload(
        {"image": ciphertext_array(image, public)}, {"image": len(image), **(meta or {})}
    )
    ctx.send(ctx.label_owner, topic, payload)


@STEPS.step("train.finish", jobs=REGRESSION_KINDS, operations=TRAINING)
def passive_finish(ctx: PartyContext) -> None:
    """Passive party: final encrypted weights, their masked image for the LO, own slice."""
    public = public_key(ctx)
    weights = final_weights(ctx)
    X_int = ctx.state.array("X")
    send_model_image(
        ctx,
        public,
        weights,
        X_int,
        FINAL_LABEL,
        TOPIC_FINAL,
        encryptor=precomputed_encryptor(ctx, public),
    )
    plan = PreparationPlan.from_json(str(ctx.state.get("prep_plan")))
    ctx.publish(features=int(X_int.shape[1]))
    if ctx.operation != "train":
        return
    if ctx.may_release("party", WEIGHTS):
        masked, offsets = pg.masked_weights(public, djn.DJNEncryptor(public), weights)
        ctx.state.set_bytes("pg.weight_offsets", offsets_to_bytes(offsets))
        payload = pack_payload({"weights": ciphertext_array(masked, public)})
        ctx.send(ctx.label_owner, TOPIC_MASKED_WEIGHTS, payload)
    ctx.check_release("party", "model-slice", "party-report")
    reporting.write_party_report(
        reporting.build_encrypted_party_report(
            ctx.party,
            ctx.job.kind,
            list(plan.feature_names),
            min_cohort=ctx.min_cohort,
            rows=int(X_int.shape[0]),
            header=reporting.report_header(ctx.agreement, ctx.job),
        ),
        ctx.work_dir,
    )
    save_model_slice(
        ctx.work_dir,
        ModelSlice(
            party=ctx.party,
            model=ctx.job.kind,
            agreement_hash=ctx.agreement.terms_hash(),
            feature_names=tuple(plan.feature_names),
            weights=np.zeros(0),
            intercept=None,
            preparation_json=plan.to_json(),
            info={"iterations": ctx.round, "run_key": ctx.run_id, "scale_bits": pg.MOVED_BITS},
            encrypted_weights=paillier.ciphertexts_to_bytes(weights, public),
            public_key=ctx.state.get_bytes("paillier.public"),
        ),
    )


def receive_image(ctx: PartyContext, peer: str, topic: Topic) -> tuple[tuple, dict]:
    """LO: a passive party's packed image ciphertexts and the message's meta."""
    arrays, meta = ctx.receive_arrays(peer, topic)
    with ctx.decoding(peer, topic):
        return ciphertexts_of(arrays["image"], public_key(ctx), int(meta["image"])), meta


def open_final_scores(ctx: PartyContext, label: str, images: dict[str, tuple]) -> np.ndarray:
    """LO: the passive parties' summed image of their final weights on the joint rows."""
    public, private = public_key(ctx), private_key(ctx)
    masks = pg.joint_masks(
        ctx.mask_seeds(),
        ctx.passive_parties,
        ctx.customer_tokens(),
        label,
        pg.final_image_bits(),
        public.n.bit_length(),
    )
    return pg_lo.open_image(
        private,
        images,
        ctx.label_owner_layout(),
        masks,
        pg.final_image_bits(),
        pg.MOVED_BITS + pg.FEATURE_BITS,
    )


@STEPS.step("train.evaluate", jobs=REGRESSION_KINDS, operations=TRAINING)
def label_owner_evaluate(ctx: PartyContext) -> None:
    """LO: scores of the saved model, hold-out evaluation, report, own slice."""
    t = ctx.round
    spec = model_spec(ctx)
    optimizer = load_optimizer(ctx)
    if not optimizer.finished:
        raise ProtocolAbort(ctx.kind, ctx.party, "training did not reach its stop control")
    X = ctx.state.array("X")
    z = X @ optimizer.weights + optimizer.intercept
    if ctx.passive_parties:
        images = {p: receive_image(ctx, p, TOPIC_FINAL)[0] for p in ctx.passive_parties}
        z = z + open_final_scores(ctx, FINAL_LABEL, images)
    coordinator = load_coordinator(ctx)
    tracked = coordinator.z
    if ctx.state.get("stop_reason") == "early_stopping" and "z_best" in ctx.state:
        tracked = ctx.state.array("z_best")
    gap = float(np.max(np.abs(z - tracked))) if z.size else 0.0
    if not gap <= MODEL_CONSISTENCY_TOLERANCE * (1.0 + float(np.max(np.abs(tracked)))):
        raise ProtocolAbort(
            ctx.kind,
            ctx.party,
            f"[model_consistency] the saved model's scores differ from the trained ones by "
            f"{gap:.3g}: a party changed its weights after training",
        )
    plan = PreparationPlan.from_json(str(ctx.state.get("prep_plan")))
    info: dict[str, object] = {"iterations": t, "run_key": ctx.run_id}
    released: dict[str, object] = {"features": int(optimizer.weights.size)}
    evaluation = _evaluate(ctx, spec, optimizer, plan, z)
    released.update(evaluation)
    info.update(evaluation)
    ctx.publish(**released)
    if ctx.operation != "train":
        return
    if ctx.passive_parties and ctx.may_release("party", WEIGHTS):
        release_passive_weights(ctx)
    ctx.check_release("party", "model-slice", "party-report")
    weights = dict(zip(plan.feature_names, (float(w) for w in optimizer.weights)))
    if weights:
        reporting.write_party_report(
            reporting.build_party_report(
                ctx.party,
                spec.kind,
                weights,
                min_cohort=ctx.min_cohort,
                aligned_rows=int(X.shape[0]),
                header=reporting.report_header(ctx.agreement, ctx.job),
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
            intercept=optimizer.intercept,
            preparation_json=plan.to_json(),
            info=info,
            public_key=ctx.state.get_bytes("paillier.public"),
            private_key=ctx.state.get_bytes("paillier.private"),
        ),
    )


def _evaluate(
    ctx: PartyContext,
    spec: ModelSpec,
    optimizer: BlockOptimizer,
    plan: PreparationPlan,
    z: np.ndarray,
) -> dict[str, object]:
    """Hold-out evaluation and the result owner's report; returns the released aggregates.

    Contribution is measured without new leakage: the label owner's own block (``X_lo w_lo``,
    which it holds) and the passive parties' summed block (``z - X_lo w_lo - b``, the sum it
    already learns) are each left out in turn.
    """
    coordinator = load_coordinator(ctx)
    y = ctx.state.array("y")
    holdout = coordinator.holdout_mask
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
        header=reporting.report_header(ctx.agreement, ctx.job),
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


def release_passive_weights(ctx: PartyContext) -> None:
    """LO, only when the agreement releases ``model-weights`` to the parties: decrypt each
    passive party's statistically masked weights ``w + R`` and seal them back to it (it alone
    holds ``R``). Once per training job, at its end."""
    public, private = public_key(ctx), private_key(ctx)
    for peer in ctx.passive_parties:
        arrays, _ = ctx.receive_arrays(peer, TOPIC_MASKED_WEIGHTS)
        with ctx.decoding(peer, TOPIC_MASKED_WEIGHTS):
            count = int(arrays["weights"].size) // paillier.ciphertext_width(public)
            if count != passive_features(ctx, peer):
                raise ValueError(f"{count} weights for {passive_features(ctx, peer)} features")
            masked = ciphertexts_of(arrays["weights"], public, count)
        values = pg_lo.open_masked_weights(private, masked)
        ctx.send(peer, TOPIC_RELEASED_WEIGHTS, pg.masked_values_payload(values))


@STEPS.step("train.release", jobs=REGRESSION_KINDS, operations=("train",))
def passive_release(ctx: PartyContext) -> None:
    """Passive party, when the agreement releases its weights: unmask them, keep them in its
    slice and show them in its own report."""
    ctx.check_release("party", WEIGHTS, "model-slice", "party-report")
    blob = ctx.receive(ctx.label_owner, TOPIC_RELEASED_WEIGHTS, round=ctx.round)
    offsets = offsets_from_bytes(ctx.state.get_bytes("pg.weight_offsets")).offsets
    with ctx.decoding(ctx.label_owner, TOPIC_RELEASED_WEIGHTS):
        weights = pg.unmask_weights(pg.masked_values_from_payload(blob, len(offsets)), offsets)
    model_slice = load_model_slice(ctx.work_dir, ctx.party)
    if model_slice.info.get("run_key") != ctx.run_id:
        raise ProtocolAbort(ctx.kind, ctx.party, "its model slice is not this run's")
    save_model_slice(ctx.work_dir, dataclasses.replace(model_slice, weights=weights))
    reporting.write_party_report(
        reporting.build_party_report(
            ctx.party,
            ctx.job.kind,
            dict(zip(model_slice.feature_names, (float(w) for w in weights))),
            min_cohort=ctx.min_cohort,
            aligned_rows=int(ctx.state.array("X").shape[0]),
            header=reporting.report_header(ctx.agreement, ctx.job),
        ),
        ctx.work_dir,
    )

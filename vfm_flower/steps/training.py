"""Vertical training of the regression job kinds, party side: private gradients, two rounds.

Rounds (``t`` = iteration, from 0); the cryptography of each is in
``vfm_flower.private_gradients``, the optimizer in ``vfm_flower.model``:

``train.prepare`` (all parties, once)
    Every party selects the columns the agreement allows it to use and prepares them; a
    passive party on **all its rows** (it does not know which are joint), in fixed point,
    with its block preconditioner. The label owner (LO) encodes its labels, draws the
    hold-out split (fixed per agreement), generates its Paillier key pair, computes the
    residual at the starting point and sends every passive party ``[[d / n_train]]`` on its
    rows (zero on rows that are not joint or are held out).
``train.passive`` (passive parties), round ``t``
    Unmask its moved encrypted weights, compute the encrypted gradient and direction, and send
    the LO the packed, per-customer-masked image ``[[X_k s_k]]`` with the masked vectors and
    corrections for the L2 inner products.
``train.label_owner`` (LO), round ``t``
    Open the summed image on the joint rows, run the exact plane search, apply the move to
    the masked vectors, compute the new residual and send each passive party its encrypted
    residuals, its moved masked state and the encrypted coefficients, with the stop control.
``train.precompute`` (any party, in the round where it would otherwise wait)
    The LO during the passive round, each passive party during the LO's round: the
    encryption randomness (DJN obfuscators) of its next message, kept in its own state and
    used once, so that neither round waits for it.
``train.finish`` (passive parties) and ``train.evaluate`` (LO): see
``vfm_flower.steps.evaluation``.

Two sequential rounds per iteration. The server relays sealed envelopes only; it learns
sizes, timing and the LO's stop decision. A passive party receives ciphertexts under the LO's
key and the stop decision (with, for early stopping, the index of the best round): nothing
else that depends on labels, not even the step coefficients.
Every step uses only the public step API (``vfm_flower.context``).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd

from vfm_flower import paillier
from vfm_flower import private_gradients as pg
from vfm_flower import private_gradients_label_owner as pg_lo
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.hazmat import paillier_djn as djn
from vfm_flower.jobs_builtin import RegressionParams
from vfm_flower.model import BlockOptimizer, ModelSpec
from vfm_flower.model_label_owner import ConvergenceMonitor, LabelOwnerCoordinator, holdout_split
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import encode_labels

logger = logging.getLogger(__name__)

REGRESSION_KINDS = ("linear", "logistic")
TRAINING = ("evaluate", "train")

TOPIC_START = Topic("train.first_residuals", phase="train.prepare")
TOPIC_SHAPE = Topic("train.block_shape", phase="train.prepare")
TOPIC_BACKWARD = Topic("train.encrypted_residuals", phase="train.label_owner")
TOPIC_FORWARD = Topic("train.encrypted_image", phase="train.passive")

#: Party state key of the encryption randomness computed ahead (secret, used once).
OBFUSCATORS = "pg.obfuscators"

#: The training steps of the regression job kinds (the closing ones are in ``evaluation``).
STEPS = StepRegistry()


# --------------------------------------------------------------------------- shared helpers
def params_of(ctx: PartyContext) -> RegressionParams:
    return RegressionParams.from_job(ctx.job)


def model_spec(ctx: PartyContext) -> ModelSpec:
    return ModelSpec(kind=ctx.job.kind, l2=params_of(ctx).l2)


def image_label(t: int | str) -> str:
    return f"train/image/{t}"


def save_optimizer(ctx: PartyContext, optimizer: BlockOptimizer) -> None:
    ctx.state.set_group("opt", optimizer.to_state())


def load_optimizer(ctx: PartyContext) -> BlockOptimizer:
    return BlockOptimizer.from_state(model_spec(ctx), ctx.state.group("opt"))


def convergence_monitor(ctx: PartyContext) -> ConvergenceMonitor:
    params = params_of(ctx)
    return ConvergenceMonitor(
        max_iterations=params.max_iterations,
        tol=params.tol,
        patience=params.early_stopping or None,
    )


def save_coordinator(ctx: PartyContext, coordinator: LabelOwnerCoordinator) -> None:
    ctx.state.set_group("coord", coordinator.to_state())


def load_coordinator(ctx: PartyContext) -> LabelOwnerCoordinator:
    return LabelOwnerCoordinator.from_state(
        model_spec(ctx),
        ctx.state.array("y"),
        ctx.state.group("coord"),
        monitor=convergence_monitor(ctx),
        coefficient_bits=pg.COEFFICIENT_BITS,
    )


def agreement_holdout_seed(agreement_id: str) -> int:
    """The hold-out seed of an agreement: the same split for every job under it."""
    digest = hashlib.sha256(b"vfm-flower/holdout-seed/" + agreement_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _numeric_target(values: pd.Series, party: str) -> np.ndarray:
    target = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = int((~np.isfinite(target)).sum())
    if bad:
        raise DataError(f"party '{party}': {bad} target value(s) are missing or not numbers")
    return target


def public_key(ctx: PartyContext):
    return paillier.public_key_from_bytes(
        ctx.state.get_bytes("paillier.public"), min_bits=ctx.agreement.min_paillier_bits
    )


def private_key(ctx: PartyContext):
    return paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))


def ciphertext_array(cts, public) -> np.ndarray:
    return np.frombuffer(paillier.ciphertexts_to_bytes(cts, public), np.uint8)


def ciphertexts_of(array: np.ndarray, public, count: int) -> tuple:
    return tuple(paillier.ciphertexts_from_bytes(array.tobytes(), public, count))


def passive_features(ctx: PartyContext, peer: str) -> int:
    """A passive party's feature count, from its signed reply to ``train.prepare``."""
    counts = json.loads(str(ctx.state.get("pg.features")))
    return int(counts[peer])


def offsets_to_bytes(offsets) -> bytes:
    return b"".join(int(o).to_bytes(32, "big") for o in offsets)


def offsets_from_bytes(blob: bytes) -> pg.PassiveSecrets:
    return pg.PassiveSecrets(
        tuple(int.from_bytes(blob[i : i + 32], "big") for i in range(0, len(blob), 32))
    )


def precomputed_encryptor(
    ctx: PartyContext, public, private=None, *, key: str = OBFUSCATORS
) -> djn.DJNEncryptor:
    """This party's encryptor, holding the randomness its last precompute step stored under
    ``key`` (taken out of the state: every obfuscator is used once)."""
    encryptor = djn.DJNEncryptor(public, private=private)
    pool = ctx.state.pop_array(key)
    if pool is not None:
        encryptor.import_pool(pool.tobytes())
    return encryptor


def send_backward(ctx: PartyContext, topic: Topic, messages: dict[str, pg.BackwardMessage]) -> None:
    """LO: seal each passive party's residuals, refreshed vectors and control."""
    public = public_key(ctx)
    key_bytes = np.frombuffer(ctx.state.get_bytes("paillier.public"), np.uint8)
    for peer, msg in messages.items():
        payload = pack_payload(
            {
                "residuals": ciphertext_array(msg.residuals, public),
                "state": ciphertext_array(msg.state, public),
                "public_key": key_bytes,
            },
            {
                "control": msg.control.to_dict(),
                "residuals": len(msg.residuals),
                "state": len(msg.state),
            },
        )
        ctx.send(peer, topic, payload)


def receive_backward(ctx: PartyContext, topic: Topic, round: int) -> pg.BackwardMessage:
    """Passive party: open the LO's message, checking every count against what it may carry."""
    arrays, meta = ctx.receive_arrays(ctx.label_owner, topic, round=round)
    with ctx.decoding(ctx.label_owner, topic):
        key = arrays["public_key"].tobytes()
        if "paillier.public" not in ctx.state:
            paillier.public_key_from_bytes(key, min_bits=ctx.agreement.min_paillier_bits)
            ctx.state.set_bytes("paillier.public", key)
        elif key != ctx.state.get_bytes("paillier.public"):
            raise ValueError("the label owner's Paillier key changed during the job")
        public = public_key(ctx)
        rows = int(ctx.passive_layout().total_slots)
        m = int(ctx.state.array("X").shape[1])
        control = pg.PassiveControl.from_dict(dict(meta["control"]))
        n_res, n_state = int(meta["residuals"]), int(meta["state"])
        if n_res not in ((0, rows) if control.stop else (rows,)):
            raise ValueError(f"{n_res} residual ciphertexts for {rows} slots")
        if n_state not in ((0,) if topic is TOPIC_START else (2 * m + 2,)):
            raise ValueError(f"{n_state} state ciphertexts, the step carries {2 * m + 2}")
        residuals = ciphertexts_of(arrays["residuals"], public, n_res)
        state = ciphertexts_of(arrays["state"], public, n_state)
    return pg.BackwardMessage(control, residuals, state)


# --------------------------------------------------------------------------- prepare
@STEPS.step("train.prepare", jobs=REGRESSION_KINDS, operations=TRAINING)
def every_party_prepare(ctx: PartyContext) -> None:
    """Prepare own columns; LO: labels, split, key, the first encrypted residuals."""
    rows = ctx.rows()
    X, plan = ctx.prepared_features(junk_threshold=params_of(ctx).junk_threshold)
    spec = model_spec(ctx)
    ctx.state.set("prep_plan", plan.to_json())
    facts: dict[str, int] = {"rows": int(len(rows)), "features": int(X.shape[1])}
    if not ctx.is_label_owner:
        if X.shape[1] == 0:
            raise DataError(f"party '{ctx.party}' has no feature column for this job")
        with ctx.decoding(ctx.party, "features"):
            X_int = pg.quantize_features(X)
        pre = pg.Preconditioner.from_features(X_int, spec.curvature_bound, spec.l2)
        ctx.state.set_array("X", X_int)
        ctx.state.set_array("pg.A", pre.A)
        ctx.state.set_array("pg.B", pre.B)
        send_block_shape(ctx, TOPIC_SHAPE, *X_int.shape)
        ctx.publish(**facts)
        return
    optimizer = BlockOptimizer(spec, X.shape[1], has_intercept=True)
    optimizer.setup(X)
    ctx.state.set_array("X", X)
    params = params_of(ctx)
    labels = ctx.labels()
    y = (
        encode_labels(labels, ctx.agreement.positive_class, party=ctx.party)
        if spec.kind == "logistic"
        else _numeric_target(labels, ctx.party)
    )
    # Split in the order of the LO's own rows (the joint order is random per run) with a
    # seed fixed per agreement (seed 0: derived from the agreement id), so repeated jobs
    # hold out the same customers and never expose new hold-out rows to training.
    by_own_row = np.argsort(rows, kind="stable")
    holdout = np.empty(len(y), dtype=bool)
    holdout[by_own_row] = holdout_split(
        len(y),
        params.holdout_fraction,
        stratify=y[by_own_row] if spec.kind == "logistic" else None,
        seed=params.holdout_seed or agreement_holdout_seed(ctx.agreement.agreement_id),
    )
    ctx.check_cohort(int(holdout.sum()), "hold-out rows")
    ctx.check_cohort(int((~holdout).sum()), "training rows")
    coordinator = LabelOwnerCoordinator(
        spec,
        y,
        holdout_mask=holdout,
        monitor=convergence_monitor(ctx),
        coefficient_bits=pg.COEFFICIENT_BITS,
    )
    optimizer.initialize(intercept=coordinator.initial_intercept())
    ctx.state.set_array("y", np.asarray(y, dtype=np.float64))
    bits = max(params.paillier_bits, ctx.agreement.min_paillier_bits)
    public, private = paillier.generate_paillier_keypair(bits)
    ctx.state.set_bytes("paillier.private", paillier.private_key_to_bytes(private))
    ctx.state.set_bytes("paillier.public", paillier.public_key_to_bytes(public))
    facts.update(joint_rows=int(len(rows)), holdout_rows=int(holdout.sum()), paillier_bits=bits)
    # iteration 0: passive parties start from zero weights, so the score is the LO's own
    control, backward = coordinator.advance(optimizer.partial_score(X), optimizer.forward_scalars())
    if backward is None:
        raise ProtocolAbort(ctx.kind, ctx.party, "training stopped before its first iteration")
    optimizer.step(optimizer.data_gradient(X, backward), control)
    if control.mark_best:
        ctx.state.set_array("z_best", coordinator.z.copy())
        ctx.state.set("pg.best_round", 0)
    if ctx.passive_parties:
        encryptor = djn.DJNEncryptor(public, private=private)
        messages = pg_lo.backward_messages(
            encryptor, public, backward, ctx.label_owner_layout(), pg.PassiveControl(0), None
        )
        send_backward(ctx, TOPIC_START, messages)
    save_optimizer(ctx, optimizer)
    save_coordinator(ctx, coordinator)
    ctx.publish(**facts)


# --------------------------------------------------------------------------- iterations
@STEPS.step("train.passive", jobs=REGRESSION_KINDS, operations=TRAINING)
def passive_iteration(ctx: PartyContext) -> None:
    """Passive party: move, encrypted gradient and direction, masked image for the LO."""
    t = ctx.round
    expected = int(ctx.state.get("pg.round", 0))
    if t != expected:
        raise ProtocolAbort(ctx.kind, ctx.party, f"round {t} out of order (expected {expected})")
    topic = TOPIC_START if t == 0 else TOPIC_BACKWARD
    message = receive_backward(ctx, topic, round=0 if t == 0 else t - 1)
    if message.control.iteration != t or message.control.stop:
        raise ProtocolAbort(
            ctx.kind, ctx.party, f"the step control is for iteration {message.control.iteration}"
        )
    public = public_key(ctx)
    X_int = ctx.state.array("X")
    previous = None if t == 0 else offsets_from_bytes(ctx.state.get_bytes("pg.offsets"))
    label = image_label(t)
    ctx.claim_mask_label(label)
    seeds, passives = ctx.mask_seeds(), ctx.passive_parties
    row_masks = pg.row_masks(
        ctx.party,
        ctx.label_owner,
        seeds,
        passives,
        ctx.customer_tokens(),
        label,
        pg.iteration_image_bits(),
        public.n.bit_length(),
    )
    forward, secrets, moved = pg.passive_iteration(
        public,
        precomputed_encryptor(ctx, public),
        X_int,
        pg.Preconditioner(ctx.state.array("pg.A"), ctx.state.array("pg.B")),
        ctx.passive_layout(),
        message,
        previous,
        slot_masks=row_masks,
        scalar_masks=pg.scalar_masks(ctx.party, seeds, passives, label, public.n),
        passive_parties=len(passives),
    )
    ctx.state.set_bytes("pg.offsets", offsets_to_bytes(secrets.offsets))
    ctx.state.set_bytes(f"pg.moved.{t}", paillier.ciphertexts_to_bytes(moved, public))
    ctx.state.set("pg.round", t + 1)
    ctx.send(
        ctx.label_owner,
        TOPIC_FORWARD,
        pack_payload(
            {
                "image": ciphertext_array(forward.image, public),
                "vectors": ciphertext_array(forward.vectors, public),
                "corrections": ciphertext_array(forward.corrections, public),
            },
            {
                "image": len(forward.image),
                "vectors": len(forward.vectors),
                "corrections": len(forward.corrections),
            },
        ),
    )


def receive_forward(ctx: PartyContext, peer: str, topic: Topic) -> pg.ForwardMessage:
    """LO: a passive party's ciphertexts (their counts are checked when they are opened)."""
    arrays, meta = ctx.receive_arrays(peer, topic)
    public = public_key(ctx)
    with ctx.decoding(peer, topic):
        return pg.ForwardMessage(
            *(
                ciphertexts_of(arrays[name], public, int(meta[name]))
                for name in ("image", "vectors", "corrections")
            )
        )


@STEPS.step("train.label_owner", jobs=REGRESSION_KINDS, operations=TRAINING)
def label_owner_iteration(ctx: PartyContext) -> None:
    """LO: open the summed image, plane search, encrypted residuals for every party."""
    t = ctx.round
    coordinator = load_coordinator(ctx)
    optimizer = load_optimizer(ctx)
    X = ctx.state.array("X")
    if t + 1 != coordinator.iteration:
        raise ProtocolAbort(
            ctx.kind, ctx.party, f"round {t} out of order (expected {coordinator.iteration - 1})"
        )
    private, public = private_key(ctx), public_key(ctx)
    layout = ctx.label_owner_layout()
    label = image_label(t)
    masks = pg.joint_masks(
        ctx.mask_seeds(),
        ctx.passive_parties,
        ctx.customer_tokens(),
        label,
        pg.iteration_image_bits(),
        public.n.bit_length(),
    )
    record_passive_shapes(ctx)  # at the first of this and train.precompute
    messages = {p: receive_forward(ctx, p, TOPIC_FORWARD) for p in ctx.passive_parties}
    features = {p: passive_features(ctx, p) for p in ctx.passive_parties}
    opened = pg_lo.open_forward(private, messages, layout, features, masks)
    control, backward = coordinator.advance(
        opened.image + optimizer.partial_score(X), opened.scalars + optimizer.forward_scalars()
    )
    if control.mark_best:
        # the point after this move is the best so far: the passive parties compute it in
        # their next round (or at finish), and keep it
        ctx.state.set_array("z_best", coordinator.z.copy())
        ctx.state.set("pg.best_round", t + 1)
    optimizer.step(None if backward is None else optimizer.data_gradient(X, backward), control)
    # Only the decision goes to the server (per-iteration losses stay with the LO).
    ctx.publish(iteration=t, stop=bool(control.stop), reason=control.reason)
    best = int(ctx.state.get("pg.best_round", -1)) if control.restore_best else -1
    to_passives = pg.PassiveControl(iteration=t + 1, stop=bool(control.stop), best_round=best)
    if control.stop:
        ctx.state.set("stop_reason", control.reason)
    encryptor = precomputed_encryptor(ctx, public, private)
    send_backward(
        ctx,
        TOPIC_BACKWARD,
        pg_lo.backward_messages(
            encryptor,
            public,
            backward,
            layout,
            to_passives,
            opened,
            step=pg.quantize_coefficient(control.step),
            momentum=pg.quantize_coefficient(control.momentum),
        ),
    )
    save_optimizer(ctx, optimizer)
    save_coordinator(ctx, coordinator)


@STEPS.step("train.precompute", jobs=REGRESSION_KINDS, operations=TRAINING)
def precompute_randomness(ctx: PartyContext) -> None:
    """Any party, in a round where it would wait: the encryption randomness of its next message.

    The LO runs it in the passive round (its residuals by slot and every party's moved state),
    a passive party in the LO's round (its next image, vectors and corrections), so that
    neither spends its own round on it. The obfuscators stay in the party's own state and are
    used once (:func:`precomputed_encryptor`); nothing is sent.
    """
    public = public_key(ctx)
    if ctx.is_label_owner:
        layout = ctx.label_owner_layout()
        record_passive_shapes(ctx)
        features = {p: passive_features(ctx, p) for p in ctx.passive_parties}
        count = pg.label_owner_obfuscators(layout, features)
        encryptor = djn.DJNEncryptor(public, private=private_key(ctx))
    else:
        count = pg.passive_obfuscators(
            int(ctx.passive_layout().total_slots),
            int(ctx.state.array("X").shape[1]),
            len(ctx.passive_parties),
            public.n.bit_length(),
        )
        encryptor = djn.DJNEncryptor(public)
    ctx.state.drop_array(OBFUSCATORS)  # an unused earlier pool is dropped, never reused
    encryptor.fill_pool(count)
    ctx.state.set_bytes(OBFUSCATORS, encryptor.export_pool())


def send_block_shape(ctx: PartyContext, topic: Topic, rows: int, features: int) -> None:
    """Passive party: seal its block's row and feature counts to the LO (at preparation)."""
    shape = {"rows": int(rows), "features": int(features)}
    ctx.send(ctx.label_owner, topic, json.dumps(shape).encode())


def received_block_shapes(ctx: PartyContext, topic: Topic, state_key: str) -> dict[str, int]:
    """LO: each passive party's feature count, from what :func:`send_block_shape` sealed; its
    rows must be the ids it aligned. Read in the first step after the preparation, recorded
    under ``state_key`` for the later ones."""
    if state_key in ctx.state:
        return {k: int(v) for k, v in json.loads(str(ctx.state.get(state_key))).items()}
    layout = ctx.label_owner_layout()
    counts = {}
    for peer in ctx.passive_parties:
        blob = ctx.receive(peer, topic, round=0)
        with ctx.decoding(peer, topic):
            shape = json.loads(blob)
            rows, features = int(shape["rows"]), int(shape["features"])
            if rows != layout.slot_maps[peer].size:
                raise ValueError(f"{rows} rows, the party aligned {layout.slot_maps[peer].size}")
            if not 0 < features < 1 << 20:
                raise ValueError(f"a block of {features} features")
        counts[peer] = features
    ctx.state.set(state_key, json.dumps(counts))
    return counts


def record_passive_shapes(ctx: PartyContext) -> None:
    """LO: each passive party's block shape for the regression (see :func:`passive_features`)."""
    received_block_shapes(ctx, TOPIC_SHAPE, "pg.features")

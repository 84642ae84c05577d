"""Vertical training of the regression job kinds, party side (the iterations).

Rounds (``t`` = iteration, from 0):

``train.prepare`` (all parties, once)
    Every party selects the columns the agreement allows it to use, fits the preparation of
    its own columns on the aligned rows and sets up its block optimizer. The label owner (LO)
    encodes its labels, draws the hold-out split and generates its Paillier key pair.
``train.forward`` (passive parties), round ``t``
    From ``t >= 1``: open the LO's decrypted masked gradient of round ``t-1``, remove the
    party's own masks, and step the optimizer with the LO's step control. Then share the
    image ``X_k v_k`` of the party's forward vector on all aligned rows and six inner products
    of its own vectors, pairwise-masked (fixed point mod 2^64): the server sums the masked
    vectors and learns nothing.
``train.residual`` (LO), round ``t``
    Unmask the server's sum, add its own block, run the exact plane search
    (``vfm_flower.model.LabelOwnerCoordinator``), compute the exact residual ``d / n_train``
    (zero on hold-out rows) and encrypt it under its Paillier key, with the step control,
    for each passive party.
``train.backward`` (passive parties), round ``t``
    Compute ``[[X_k^T d + r_k]]`` with a fresh random mask ``r_k``, packed, for the LO.
``train.decrypt`` (LO), round ``t``
    Decrypt the packed masked gradients and return them to their parties.
``train.finish`` (all parties): see ``vfm_flower.steps.evaluation``.

Four sequential rounds per iteration. The server sees masked vectors, ciphertexts inside
envelopes, and the label owner's stop decision per iteration. Every step uses only the
public step API (``vfm_flower.context.PartyContext``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import pandas as pd

from vfm_flower import paillier
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.jobs_builtin import RegressionParams
from vfm_flower.model import (
    N_FORWARD_SCALARS,
    BlockOptimizer,
    ConvergenceMonitor,
    LabelOwnerCoordinator,
    ModelSpec,
    StepControl,
    holdout_split,
)
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import encode_labels

logger = logging.getLogger(__name__)

REGRESSION_KINDS = ("linear", "logistic")
TRAINING = ("evaluate", "train")

TOPIC_BACKWARD = Topic("train.encrypted_residual", phase="train.residual")
TOPIC_STOP = Topic("train.stop", phase="train.residual")
TOPIC_GRADIENT = Topic("train.masked_encrypted_gradient", phase="train.backward")
TOPIC_DECRYPTED = Topic("train.masked_gradient", phase="train.decrypt")

#: The training steps of the regression job kinds (``train.finish`` is in ``evaluation``).
STEPS = StepRegistry()


# --------------------------------------------------------------------------- shared helpers
def params_of(ctx: PartyContext) -> RegressionParams:
    return RegressionParams.from_job(ctx.job)


def model_spec(ctx: PartyContext) -> ModelSpec:
    return ModelSpec(kind=ctx.job.kind, l2=params_of(ctx).l2)


def forward_label(t: int) -> str:
    return f"train/forward/{t}"


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
    )


def _mask_state_to_payload(state: paillier.MaskState) -> bytes:
    width = max((max(state.masks).bit_length() + 7) // 8, 1) if state.masks else 1
    blob = b"".join(int(m).to_bytes(width, "big") for m in state.masks)
    return pack_payload(
        {"masks": np.frombuffer(blob, np.uint8)},
        {"width": width, "value_bits": state.value_bits, "scale_bits": state.scale_bits},
    )


def _mask_state_from_payload(blob: bytes) -> paillier.MaskState:
    arrays, meta = unpack_payload(blob)
    raw, width = arrays["masks"].tobytes(), int(meta["width"])
    masks = tuple(int.from_bytes(raw[i : i + width], "big") for i in range(0, len(raw), width))
    return paillier.MaskState(masks, int(meta["value_bits"]), int(meta["scale_bits"]))


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


# --------------------------------------------------------------------------- prepare
@STEPS.step("train.prepare", jobs=REGRESSION_KINDS, operations=TRAINING)
def every_party_prepare(ctx: PartyContext) -> None:
    """Prepare own columns, set up the optimizer (LO: labels, split, key)."""
    rows = ctx.aligned_rows()
    X, plan = ctx.prepared_features()
    spec = model_spec(ctx)
    optimizer = BlockOptimizer(spec, X.shape[1], has_intercept=ctx.is_label_owner)
    optimizer.setup(X)
    ctx.state.set_array("X", X)
    ctx.state.set("prep_plan", plan.to_json())
    facts: dict[str, int] = {"joint_rows": int(len(rows)), "features": int(X.shape[1])}
    if ctx.is_label_owner:
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
            spec, y, holdout_mask=holdout, monitor=convergence_monitor(ctx)
        )
        optimizer.initialize(intercept=coordinator.initial_intercept())
        save_coordinator(ctx, coordinator)
        ctx.state.set_array("y", np.asarray(y, dtype=np.float64))
        bits = max(params.paillier_bits, ctx.agreement.min_paillier_bits)
        public, private = paillier.generate_paillier_keypair(bits)
        ctx.state.set_bytes("paillier.private", paillier.private_key_to_bytes(private))
        ctx.state.set_bytes("paillier.public", paillier.public_key_to_bytes(public))
        facts.update(holdout_rows=int(holdout.sum()), paillier_bits=bits)
    save_optimizer(ctx, optimizer)
    ctx.publish(**facts)


# --------------------------------------------------------------------------- iterations
@STEPS.step("train.forward", jobs=REGRESSION_KINDS, operations=TRAINING)
def passive_forward(ctx: PartyContext) -> None:
    """Passive party: apply last round's gradient, share the masked forward message."""
    t = ctx.round
    optimizer = load_optimizer(ctx)
    X = ctx.state.array("X")
    if t >= 1:
        _apply_decrypted_gradient(ctx, optimizer, t - 1)
    if optimizer.iteration != t:
        raise ProtocolAbort(
            ctx.kind, ctx.party, f"forward step {t} out of order (expected {optimizer.iteration})"
        )
    forward = np.concatenate([optimizer.partial_score(X), optimizer.forward_scalars()])
    ctx.share("forward", forward, label=forward_label(t))
    save_optimizer(ctx, optimizer)


def _apply_decrypted_gradient(ctx: PartyContext, optimizer: BlockOptimizer, t: int) -> None:
    arrays, meta = ctx.receive_arrays(ctx.label_owner, TOPIC_DECRYPTED, round=t)
    mask_state = _mask_state_from_payload(ctx.state.get_bytes("mask_state"))
    with ctx.decoding(ctx.label_owner, TOPIC_DECRYPTED):
        values = paillier.masked_values_from_bytes(
            arrays["values"].tobytes(), int(meta["slot_bits"]), int(meta["count"])
        )
        gradient = paillier.unmask_gradient(values, mask_state)
    control = StepControl.from_dict(json.loads(str(ctx.state.get("pending_control"))))
    optimizer.step(gradient, control)
    ctx.state.pop_array("mask_state")


@STEPS.step("train.residual", jobs=REGRESSION_KINDS, operations=TRAINING)
def label_owner_residual(ctx: PartyContext) -> None:
    """LO: unmask the forward sum, plane search, encrypt ``d / n_train`` for every party."""
    t = ctx.round
    coordinator = load_coordinator(ctx)
    optimizer = load_optimizer(ctx)
    X = ctx.state.array("X")
    n = X.shape[0]
    passives = ctx.passive_parties
    if t != coordinator.iteration:
        raise ProtocolAbort(
            ctx.kind,
            ctx.party,
            f"residual step {t} out of order (expected {coordinator.iteration})",
        )
    forward = np.zeros(n + N_FORWARD_SCALARS)
    if passives:
        forward = ctx.unmask("forward", label=forward_label(t), length=n + N_FORWARD_SCALARS)
        if t == 0 and np.any(forward != 0):
            # passive parties start from zero weights: anything else was added on the way
            raise ProtocolAbort(
                ctx.kind, ctx.party, "the relayed forward sum was altered (iteration 0)"
            )
    forward_sum = forward[:n] + optimizer.partial_score(X)
    scalars = forward[n:] + optimizer.forward_scalars()
    control, backward = coordinator.advance(forward_sum, scalars)
    if control.mark_best:
        ctx.state.set_array("z_best", coordinator.z.copy())
    # Only the decision goes to the server: per-iteration losses computed on a sum the server
    # relays (without integrity) would let it encode label bits into them.
    ctx.publish(iteration=t, stop=bool(control.stop), reason=control.reason)
    control_json = json.dumps(control.to_dict(), sort_keys=True)
    if backward is None:
        ctx.state.set("stop_reason", control.reason)
        optimizer.step(None, control)
        for peer in passives:
            ctx.send(peer, TOPIC_STOP, control_json.encode())
    else:
        optimizer.step(optimizer.data_gradient(X, backward), control)
        public = paillier.public_key_from_bytes(ctx.state.get_bytes("paillier.public"))
        # A public bound on |d / n_train|: 1 for logistic; a power of two >= 1 for linear
        # (only its bit length is revealed).
        largest = float(np.max(np.abs(backward))) if backward.size else 0.0
        bound = 1.0 if largest <= 1.0 else 2.0 ** math.ceil(math.log2(largest))
        # the private key lets the label owner compute obfuscators by CRT (~28% less CPU)
        private = paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))
        encrypted = paillier.encrypt_residuals(public, backward, bound=bound, private=private)
        payload = pack_payload(
            {
                "residuals": np.frombuffer(
                    paillier.encrypted_vector_to_bytes(encrypted, public), np.uint8
                ),
                "public_key": np.frombuffer(paillier.public_key_to_bytes(public), np.uint8),
            },
            {"control": control_json},
        )
        for peer in passives:
            ctx.send(peer, TOPIC_BACKWARD, payload)
    save_optimizer(ctx, optimizer)
    save_coordinator(ctx, coordinator)


@STEPS.step("train.backward", jobs=REGRESSION_KINDS, operations=TRAINING)
def passive_backward(ctx: PartyContext) -> None:
    """Passive party: ``[[X_k^T d + r_k]]``, packed and re-randomized, for the LO."""
    arrays, meta = ctx.receive_arrays(ctx.label_owner, TOPIC_BACKWARD)
    with ctx.decoding(ctx.label_owner, TOPIC_BACKWARD):
        public = paillier.public_key_from_bytes(
            arrays["public_key"].tobytes(), min_bits=ctx.agreement.min_paillier_bits
        )
        encrypted = paillier.encrypted_vector_from_bytes(arrays["residuals"].tobytes(), public)
        control = str(meta["control"])
        StepControl.from_dict(json.loads(control))  # well-formed before it is kept
    X = ctx.state.array("X")
    packed, mask_state = paillier.masked_encrypted_gradient(public, encrypted, X)
    ctx.state.set_bytes("mask_state", _mask_state_to_payload(mask_state))
    ctx.state.set("pending_control", control)
    ctx.send(ctx.label_owner, TOPIC_GRADIENT, paillier.packed_to_bytes(packed, public))


@STEPS.step("train.decrypt", jobs=REGRESSION_KINDS, operations=TRAINING)
def label_owner_decrypt(ctx: PartyContext) -> None:
    """LO: decrypt each party's packed masked gradient and send it back to that party."""
    public = paillier.public_key_from_bytes(ctx.state.get_bytes("paillier.public"))
    private = paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))
    decryptor = paillier.CRTDecryptor(private)
    for peer in ctx.passive_parties:
        blob = ctx.receive(peer, TOPIC_GRADIENT)
        with ctx.decoding(peer, TOPIC_GRADIENT):
            packed = paillier.packed_from_bytes(blob, public)
        values = paillier.decrypt_masked_gradient(decryptor, packed)
        payload = pack_payload(
            {
                "values": np.frombuffer(
                    paillier.masked_values_to_bytes(values, packed.slot_bits), np.uint8
                )
            },
            {"slot_bits": packed.slot_bits, "count": packed.count},
        )
        ctx.send(peer, TOPIC_DECRYPTED, payload)

"""Phases 3 and 4, vertical training with hold-out evaluation, party side.

Rounds (``t`` = iteration, from 0):

``train.prepare`` (all parties, once)
    Passive parties first finish the alignment (positions relayed with this message). Every
    party selects the columns the agreement allows it to use, fits the preparation of its own
    columns on the aligned rows and sets up its block optimizer. The label owner (LO) encodes
    its labels, draws the hold-out split and generates its Paillier key pair.
``train.forward`` (passive parties), round ``t``
    From ``t >= 1``: open the LO's decrypted masked gradient of round ``t-1``, remove the
    party's own masks, and step the optimizer with the LO's step control. Then send the
    image ``X_k v_k`` of the party's forward vector on all aligned rows and six inner products
    of its own vectors, pairwise-masked (fixed point mod 2^64): the server sums the masked
    vectors and learns nothing.
``train.residual`` (LO), round ``t``
    Remove the LO's own pairwise masks from the server's sum, add its own block, run the
    exact plane search (``vfm_flower.model.LabelOwnerCoordinator``), compute the exact
    residual ``d / n_train`` (zero on hold-out rows) and encrypt it under its Paillier key,
    with the step control, for each passive party.
``train.backward`` (passive parties), round ``t``
    Compute ``[[X_k^T d + r_k]]`` with a fresh random mask ``r_k``, packed, for the LO.
``train.decrypt`` (LO), round ``t``
    Decrypt the packed masked gradients and return them to their parties.
``train.finish`` (all parties)
    When the LO decided to stop, every party applies the final control (its stop envelope
    from the LO), writes its own model slice atomically, and the LO evaluates on the
    hold-out rows (and a model on its own columns alone, trained locally).

Four sequential rounds per iteration. The server sees masked vectors, ciphertexts inside
envelopes, and the public aggregates the LO releases (objective, hold-out loss).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from vfm_flower import masking, paillier
from vfm_flower import report as reporting
from vfm_flower.agreement import check_features, check_min_cohort
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.model import (
    N_FORWARD_SCALARS,
    BlockOptimizer,
    ConvergenceMonitor,
    LabelOwnerCoordinator,
    ModelSpec,
    StepControl,
    holdout_split,
    train_vertical_plaintext,
)
from vfm_flower.model_store import ModelSlice, save_model_slice
from vfm_flower.party import PartyRuntime, StepReply, StepRequest, step_handler
from vfm_flower.preparation import (
    PreparationPlan,
    apply_preparation,
    encode_labels,
    fit_preparation,
)
from vfm_flower.steps import delivery
from vfm_flower.steps.alignment import finish_alignment
from vfm_flower.tables import read_party_table

logger = logging.getLogger(__name__)

TOPIC_BACKWARD = "train.encrypted_residual"
TOPIC_GRADIENT = "train.masked_encrypted_gradient"
TOPIC_DECRYPTED = "train.masked_gradient"
TOPIC_STOP = "train.stop"


# --------------------------------------------------------------------------- shared helpers
def feature_columns(runtime: PartyRuntime, frame: pd.DataFrame) -> list[str]:
    """The columns this party may use: the agreement's allowed list minus the denied ones."""
    terms = runtime.terms
    excluded = set(terms.id_columns)
    if runtime.is_label_owner:
        excluded.add(runtime.agreement.label_column)
    requested = (runtime.request.job.features or {}).get(runtime.party) if runtime.request else None
    if requested:
        check_features(runtime.agreement, runtime.party, requested)
        columns = list(requested)
    elif terms.allowed_features is not None:
        columns = [c for c in terms.allowed_features if c not in excluded]
    else:
        columns = [c for c in frame.columns if c not in excluded]
    columns = [c for c in columns if c not in set(terms.denied_features)]
    check_features(runtime.agreement, runtime.party, columns)
    if not columns and not runtime.is_label_owner:
        raise DataError(f"party '{runtime.party}' has no usable feature column")
    return columns


def model_spec(request: StepRequest) -> ModelSpec:
    return ModelSpec(kind=request.job.model, l2=float(request.params.get("l2", 1e-3)))


def pairwise_seeds(runtime: PartyRuntime) -> dict[str, bytes]:
    """This party's pairwise mask seeds with every other party (derived, never stored)."""
    peers = {
        p: runtime.agreement.party(p).public_identity
        for p in runtime.agreement.party_names
        if p != runtime.party
    }
    return masking.derive_pairwise_seeds(
        runtime.identity,
        peers,
        run_id=runtime.run_key,
        agreement_hash=runtime.agreement.terms_hash(),
    )


def _forward_label(t: int) -> str:
    return f"train/forward/{t}"


def _save_optimizer(runtime: PartyRuntime, optimizer: BlockOptimizer) -> None:
    runtime.state.set_group("opt", optimizer.to_state())


def _load_optimizer(runtime: PartyRuntime, spec: ModelSpec) -> BlockOptimizer:
    return BlockOptimizer.from_state(spec, runtime.state.group("opt"))


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


# --------------------------------------------------------------------------- prepare
@step_handler("train.prepare")
def prepare_training(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Finish alignment, prepare own columns, set up the optimizer (LO: labels, split, key)."""
    rows = finish_alignment(runtime, request)
    frame = read_party_table(
        runtime.settings.data_path, party=runtime.party, id_columns=runtime.terms.id_columns
    )
    aligned = frame.iloc[rows].reset_index(drop=True)
    columns = feature_columns(runtime, frame)
    plan = fit_preparation(aligned, columns, party=runtime.party)
    X = apply_preparation(plan, aligned).matrix
    spec = model_spec(request)
    optimizer = BlockOptimizer(spec, X.shape[1], has_intercept=runtime.is_label_owner)
    optimizer.setup(X)
    state = runtime.state
    state.set_array("X", X)
    state.set("prep_plan", plan.to_json())
    reply = StepReply(party=runtime.party, public={"joint_rows": int(len(rows))})
    if runtime.is_label_owner:
        label_column = runtime.agreement.label_column
        if label_column not in frame.columns:
            raise DataError(f"party '{runtime.party}': label column '{label_column}' is missing")
        y = (
            encode_labels(
                aligned[label_column], runtime.agreement.positive_class, party=runtime.party
            )
            if spec.kind == "logistic"
            else _numeric_target(aligned[label_column], runtime.party)
        )
        fraction = float(request.params.get("holdout_fraction", 0.3))
        seed = int(request.params.get("holdout_seed", 0)) or None  # 0: drawn from the CSPRNG
        # Split in the order of the LO's own rows (the joint order is random per run), so a
        # seed gives the same split on the same files.
        by_own_row = np.argsort(rows, kind="stable")
        holdout = np.empty(len(y), dtype=bool)
        holdout[by_own_row] = holdout_split(
            len(y),
            fraction,
            stratify=y[by_own_row] if spec.kind == "logistic" else None,
            seed=seed,
        )
        check_min_cohort(runtime.agreement, int(holdout.sum()), "hold-out rows")
        check_min_cohort(runtime.agreement, int((~holdout).sum()), "training rows")
        coordinator = LabelOwnerCoordinator(
            spec, y, holdout_mask=holdout, monitor=_monitor(request)
        )
        optimizer.initialize(intercept=coordinator.initial_intercept())
        _save_coordinator(runtime, coordinator)
        state.set_array("y", np.asarray(y, dtype=np.float64))
        bits = max(request.job.paillier_bits, runtime.agreement.min_paillier_bits)
        public, private = paillier.generate_paillier_keypair(bits)
        state.set_bytes("paillier.private", paillier.private_key_to_bytes(private))
        state.set_bytes("paillier.public", paillier.public_key_to_bytes(public))
        reply.public.update(
            {"features": int(X.shape[1]), "holdout_rows": int(holdout.sum()), "paillier_bits": bits}
        )
    else:
        reply.public["features"] = int(X.shape[1])
    _save_optimizer(runtime, optimizer)
    return reply


def _numeric_target(values: pd.Series, party: str) -> np.ndarray:
    target = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = int((~np.isfinite(target)).sum())
    if bad:
        raise DataError(f"party '{party}': {bad} target value(s) are missing or not numbers")
    return target


def _monitor(request: StepRequest) -> ConvergenceMonitor:
    patience = int(request.params.get("patience", 0)) or None
    return ConvergenceMonitor(
        max_iterations=int(request.job.max_iterations),
        tol=float(request.params.get("tol", 1e-5)),
        patience=patience,
    )


def _save_coordinator(runtime: PartyRuntime, coordinator: LabelOwnerCoordinator) -> None:
    runtime.state.set_group("coord", coordinator.to_state())


def _load_coordinator(runtime: PartyRuntime, request: StepRequest) -> LabelOwnerCoordinator:
    return LabelOwnerCoordinator.from_state(
        model_spec(request),
        runtime.state.array("y"),
        runtime.state.group("coord"),
        monitor=_monitor(request),
    )


# --------------------------------------------------------------------------- iterations
@step_handler("train.forward")
def send_masked_forward(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Passive party: apply last round's gradient, send the masked forward message."""
    t = request.step
    spec = model_spec(request)
    optimizer = _load_optimizer(runtime, spec)
    X = runtime.state.array("X")
    if t >= 1:
        _apply_decrypted_gradient(runtime, request, optimizer, t - 1)
    if optimizer.iteration != t:
        raise ProtocolAbort(
            request.kind,
            runtime.party,
            f"forward step {t} out of order (expected {optimizer.iteration})",
        )
    label = _forward_label(t)
    runtime.claim_mask_label(label)
    forward = np.concatenate([optimizer.partial_score(X), optimizer.forward_scalars()])
    masked = masking.mask_vector(
        masking.encode_fixed(forward), runtime.party, pairwise_seeds(runtime), label
    )
    _save_optimizer(runtime, optimizer)
    return StepReply(party=runtime.party, masked={"forward": masked})


def _apply_decrypted_gradient(
    runtime: PartyRuntime, request: StepRequest, optimizer: BlockOptimizer, t: int
) -> None:
    lo = runtime.agreement.label_owner
    arrays, meta = unpack_payload(
        runtime.open(request, lo, TOPIC_DECRYPTED, phase="train.decrypt", round=t)
    )
    mask_state = _mask_state_from_payload(runtime.state.get_bytes("mask_state"))
    values = paillier.masked_values_from_bytes(
        arrays["values"].tobytes(), int(meta["slot_bits"]), int(meta["count"])
    )
    try:
        gradient = paillier.unmask_gradient(values, mask_state)
    except ValueError as exc:
        raise ProtocolAbort(request.kind, runtime.party, f"gradient reply refused: {exc}") from exc
    control = StepControl.from_dict(json.loads(str(runtime.state.get("pending_control"))))
    optimizer.step(gradient, control)
    runtime.state.pop_array("mask_state")


@step_handler("train.residual")
def encrypt_residuals_step(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """LO: unmask the forward sum, plane search, encrypt ``d / n_train`` for every party."""
    t = request.step
    spec = model_spec(request)
    coordinator = _load_coordinator(runtime, request)
    optimizer = _load_optimizer(runtime, spec)
    X = runtime.state.array("X")
    n = X.shape[0]
    passives = runtime.agreement.passive_parties
    if t != coordinator.iteration:
        raise ProtocolAbort(
            request.kind,
            runtime.party,
            f"residual step {t} out of order (expected {coordinator.iteration})",
        )
    forward = np.zeros(n + N_FORWARD_SCALARS)
    if passives:
        masked_sum = request.sums.get("forward")
        if masked_sum is None or masked_sum.shape != (n + N_FORWARD_SCALARS,):
            raise ProtocolAbort(request.kind, runtime.party, "the server's forward sum is missing")
        unmasked = masking.unmask_sum(
            masked_sum, runtime.party, pairwise_seeds(runtime), _forward_label(t)
        )
        if t == 0 and np.any(unmasked != 0):
            # passive parties start from zero weights: anything else was added on the way
            raise ProtocolAbort(
                request.kind, runtime.party, "the relayed forward sum was altered (iteration 0)"
            )
        forward = masking.decode_fixed(unmasked)
    forward_sum = forward[:n] + optimizer.partial_score(X)
    scalars = forward[n:] + optimizer.forward_scalars()
    control, backward = coordinator.advance(forward_sum, scalars)
    if control.mark_best:
        runtime.state.set_array("z_best", coordinator.z.copy())
    # Only the decision goes to the server: per-iteration losses computed on a sum the server
    # relays (without integrity) would let it encode label bits into them.
    reply = StepReply(
        party=runtime.party,
        public={"iteration": t, "stop": bool(control.stop), "reason": control.reason},
    )
    control_json = json.dumps(control.to_dict(), sort_keys=True)
    if backward is None:
        runtime.state.set("stop_reason", control.reason)
        optimizer.step(None, control)
        for peer in passives:
            reply.outbox[(peer, TOPIC_STOP)] = runtime.seal(
                peer, TOPIC_STOP, control_json.encode(), phase="train.residual", round=t
            )
    else:
        optimizer.step(optimizer.data_gradient(X, backward), control)
        public = paillier.public_key_from_bytes(runtime.state.get_bytes("paillier.public"))
        # A public bound on |d / n_train|: 1 for logistic; a power of two >= 1 for linear
        # (only its bit length is revealed).
        largest = float(np.max(np.abs(backward))) if backward.size else 0.0
        bound = 1.0 if largest <= 1.0 else 2.0 ** math.ceil(math.log2(largest))
        # the private key lets the label owner compute obfuscators by CRT (~28% less CPU)
        private = paillier.private_key_from_bytes(runtime.state.get_bytes("paillier.private"))
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
            reply.outbox[(peer, TOPIC_BACKWARD)] = runtime.seal(
                peer, TOPIC_BACKWARD, payload, phase="train.residual", round=t
            )
    _save_optimizer(runtime, optimizer)
    _save_coordinator(runtime, coordinator)
    return reply


@step_handler("train.backward")
def masked_gradient_step(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Passive party: ``[[X_k^T d + r_k]]``, packed and re-randomized, for the LO."""
    t = request.step
    lo = runtime.agreement.label_owner
    arrays, meta = unpack_payload(
        runtime.open(request, lo, TOPIC_BACKWARD, phase="train.residual", round=t)
    )
    public = paillier.public_key_from_bytes(
        arrays["public_key"].tobytes(), min_bits=runtime.agreement.min_paillier_bits
    )
    encrypted = paillier.encrypted_vector_from_bytes(arrays["residuals"].tobytes(), public)
    X = runtime.state.array("X")
    packed, mask_state = paillier.masked_encrypted_gradient(public, encrypted, X)
    runtime.state.set_bytes("mask_state", _mask_state_to_payload(mask_state))
    runtime.state.set("pending_control", str(meta["control"]))
    payload = paillier.packed_to_bytes(packed, public)
    reply = StepReply(party=runtime.party)
    reply.outbox[(lo, TOPIC_GRADIENT)] = runtime.seal(
        lo, TOPIC_GRADIENT, payload, phase="train.backward", round=t
    )
    return reply


@step_handler("train.decrypt")
def decrypt_gradients_step(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """LO: decrypt each party's packed masked gradient and send it back to that party."""
    t = request.step
    public = paillier.public_key_from_bytes(runtime.state.get_bytes("paillier.public"))
    private = paillier.private_key_from_bytes(runtime.state.get_bytes("paillier.private"))
    decryptor = paillier.CRTDecryptor(private)
    reply = StepReply(party=runtime.party)
    for peer in runtime.agreement.passive_parties:
        blob = runtime.open(request, peer, TOPIC_GRADIENT, phase="train.backward", round=t)
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
        reply.outbox[(peer, TOPIC_DECRYPTED)] = runtime.seal(
            peer, TOPIC_DECRYPTED, payload, phase="train.decrypt", round=t
        )
    return reply


# --------------------------------------------------------------------------- finish
@step_handler("train.finish")
def finish_training(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Apply the final control, write the model slice; LO: hold-out evaluation."""
    t = request.step
    spec = model_spec(request)
    optimizer = _load_optimizer(runtime, spec)
    if not runtime.is_label_owner:
        blob = runtime.open(
            request, runtime.agreement.label_owner, TOPIC_STOP, phase="train.residual", round=t
        )
        optimizer.step(None, StepControl.from_dict(json.loads(blob.decode())))
    if not optimizer.finished:
        raise ProtocolAbort(request.kind, runtime.party, "training did not reach its stop control")
    plan = PreparationPlan.from_json(str(runtime.state.get("prep_plan")))
    reply = StepReply(party=runtime.party)
    info: dict[str, object] = {"iterations": t, "run_key": runtime.run_key}
    if runtime.is_label_owner:
        reply.public.update(_evaluate(runtime, request, reply, spec, optimizer, plan))
        info.update(reply.public)
    weights = dict(zip(plan.feature_names, (float(w) for w in optimizer.weights)))
    reporting.write_party_report(
        reporting.build_party_report(
            runtime.party,
            spec.kind,
            weights,
            min_cohort=runtime.agreement.min_cohort,
            aligned_rows=int(runtime.state.array("X").shape[0]),
        ),
        runtime.work_dir,
    )
    save_model_slice(
        runtime.work_dir,
        ModelSlice(
            party=runtime.party,
            model=spec.kind,
            agreement_hash=runtime.agreement.terms_hash(),
            feature_names=tuple(plan.feature_names),
            weights=optimizer.weights,
            intercept=optimizer.intercept if runtime.is_label_owner else None,
            preparation_json=plan.to_json(),
            info=info,
        ),
    )
    reply.public["features"] = int(optimizer.weights.size)
    return reply


def _evaluate(
    runtime: PartyRuntime,
    request: StepRequest,
    reply: StepReply,
    spec: ModelSpec,
    optimizer: BlockOptimizer,
    plan: PreparationPlan,
) -> dict[str, object]:
    """Hold-out evaluation and the result owner's report; returns the released aggregates.

    Besides the federated model, the label owner trains a model on its own columns alone
    (locally, same rows and split). Contribution is measured without new leakage: the label
    owner's own block (``X_lo w_lo``, which it holds) and the passive parties' summed block
    (``z - X_lo w_lo - b``, the sum it already learns) are each left out in turn.
    """
    coordinator = _load_coordinator(runtime, request)
    y = runtime.state.array("y")
    holdout = coordinator.holdout_mask
    z = coordinator.z
    if runtime.state.get("stop_reason") == "early_stopping" and "z_best" in runtime.state:
        z = runtime.state.array("z_best")
    n_hold = int(holdout.sum())
    check_min_cohort(runtime.agreement, n_hold, "hold-out metrics")
    X = runtime.state.array("X")
    own = train_vertical_plaintext(
        [X], y, spec, max_iterations=int(request.job.max_iterations), holdout_mask=holdout
    )
    own_block = X @ optimizer.weights
    score_without: dict[str, np.ndarray] = {runtime.party: (z - own_block)[holdout]}
    passives = runtime.agreement.passive_parties
    if passives:
        score_without["+".join(passives)] = (own_block + optimizer.intercept)[holdout]
    params = request.params
    inputs = reporting.EvaluationInputs(
        model=spec.kind,
        party=runtime.party,
        y_holdout=y[holdout],
        score_holdout=z[holdout],
        score_own_only=own.scores[holdout],
        score_without=score_without,
        objective_curve=[float(v) for v in coordinator.monitor.objective],
        holdout_loss_curve=[float(v) for v in coordinator.monitor.holdout_loss],
        aligned_rows=int(y.size),
        rows_per_party={str(k): int(v) for k, v in dict(params.get("rows_per_party", {})).items()},
        training_rows=int((~holdout).sum()),
        min_cohort=runtime.agreement.min_cohort,
        own_feature_weights=dict(zip(plan.feature_names, (float(w) for w in optimizer.weights))),
        outcome=str(params.get("outcome", "respond")),
    )
    report = reporting.build_shared_report(inputs)
    if delivery.is_result_owner(runtime):
        reporting.write_report(report, inputs, runtime.work_dir)
    else:
        delivery.send_report(runtime, reply, report, phase=request.kind, round=request.step)
    # What the server learns: counts and a few headline metrics, rounded to 3 decimals (the
    # full report, curves included, stays with the result owner).
    out: dict[str, object] = {
        "holdout_rows": n_hold,
        "training_rows": int((~holdout).sum()),
        "iterations": len(coordinator.monitor.objective) - 1,
        "reason": str(runtime.state.get("stop_reason", "")),
        "headline": reporting.headline(report),
    }
    keys = ("auc", "auc_label_owner_only", "log_loss", "top_decile_lift")
    if spec.kind == "linear":
        keys = ("r2", "r2_label_owner_only", "rmse")
    out.update({k: round(float(report[k]), 3) for k in keys if report.get(k) is not None})
    return out

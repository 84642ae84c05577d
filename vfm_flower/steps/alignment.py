"""Phase 2, alignment by ECDH-PSI over X25519, party side (three rounds).

Round 1: every party normalizes and hashes its ids (domain: agreement id and run key) and
blinds them with a fresh secret. The label owner (LO) sends its blinded set X^a to every
passive party P_k; P_k sends its blinded set Y_k^b, in a secret random order, to the LO.
Round 2: P_k re-blinds the LO's set (X^ab, LO order) for the LO; the LO re-blinds Y_k (Y_k^ab)
and keeps it.
Round 3: the LO matches the doubly blinded sets, applies the minimum-intersection gate before
anyone learns a match and draws a common random order of the joint customers. What P_k gets
depends on the job kind's ``membership``:

* ``"hidden"`` (the built-in kinds): a slot map (``vfm_flower.hidden_membership``), a
  uniformly random slot for each of its rows whatever its membership; P_k computes on all its
  rows and never learns which customers are joint, only how many.
* ``"revealed"`` (a custom kind that needs it, documented as such): the positions of the
  joint rows in P_k's shuffled list; P_k maps them through its secret permutation to local
  rows, and all parties hold their local rows of the joint customers in the same order.

P_k receives either with the first message of the next phase. Every party also keeps a
per-run pseudonym of each of its customers (``customer_tokens``), the input of the
per-customer masks.

Every payload travels in an envelope (``vfm_flower.envelope``): the server sees sizes only.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

import numpy as np

from vfm_flower import hidden_membership as hm
from vfm_flower import psi
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.context import PartyContext
from vfm_flower.errors import (
    DataError,
    EnvelopeError,
    PayloadError,
    PolicyViolation,
    ProtocolAbort,
)
from vfm_flower.normalize import IdSpec, check_unique
from vfm_flower.party import PartyRuntime, StepRegistry, StepRequest
from vfm_flower.policy import check_set_size, min_intersection_of

ALIGN = "query.align"
TOPIC_LO_BLINDED = "psi.lo_blinded"
TOPIC_PASSIVE_BLINDED = "psi.passive_blinded"
TOPIC_LO_DOUBLE = "psi.lo_double"
TOPIC_POSITIONS = "psi.positions"
TOPIC_SLOTS = "psi.slot_map"
JOINT_ROWS = "joint_rows"
TOKENS = "hm.tokens"

#: The plugin's alignment step; it belongs to every job kind.
STEPS = StepRegistry()


def id_spec_of(runtime: PartyRuntime) -> IdSpec:
    terms = runtime.terms
    return IdSpec(
        kind=terms.id_kind,
        columns=tuple(terms.id_columns),
        default_country_code=terms.default_country_code or "1",
        case_sensitive=terms.case_sensitive,
    )


def load_normalized_ids(runtime: PartyRuntime) -> list[str]:
    """Read this party's id columns, normalize them, refuse empties and duplicates."""
    spec = id_spec_of(runtime)
    frame = runtime.read_table()
    ids = spec.normalize(frame, party=runtime.party)
    check_unique(ids, runtime.party)
    check_set_size(len(ids), runtime.terms.max_set_size, runtime.party)
    return ids


def _points(runtime: PartyRuntime, ids: list[str], executor) -> np.ndarray:
    domain = psi.psi_domain(runtime.agreement.agreement_id, runtime.run_key)
    return psi.hash_ids_to_points(ids, domain, executor=executor)


# Below this many ids the pool's start-up (~0.3 s) costs more than it saves.
_POOL_MIN_IDS = 16_384


@contextmanager
def pool_for(count: int) -> Iterator[Executor | None]:
    """One process pool for all hashing/blinding of a message, only when it pays."""
    if count < _POOL_MIN_IDS:
        yield None
        return
    with psi.blinding_pool() as pool:
        yield pool


def _received_points(
    runtime: PartyRuntime, request: StepRequest, sender: str, topic: str, round: int
) -> np.ndarray:
    blob = runtime.open(request, sender, topic, phase=ALIGN, round=round)
    try:
        arrays, _ = unpack_payload(blob)
        points = psi.points_from_bytes(arrays["points"].tobytes())
    except (EnvelopeError, DataError, KeyError, ValueError) as exc:
        raise PayloadError(ALIGN, runtime.party, sender, topic, str(exc)[:200]) from exc
    check_set_size(len(points), runtime.agreement.party(sender).max_set_size, sender)
    return points


def _payload(points: np.ndarray) -> bytes:
    return pack_payload({"points": np.frombuffer(psi.points_to_bytes(points), np.uint8)})


@STEPS.step(ALIGN, jobs=("*",), public=("rows", "joint_rows"))
def every_party_align(ctx: PartyContext) -> None:
    """Route the three alignment rounds by role."""
    runtime, request, reply = ctx.runtime, ctx.request, ctx.reply
    lo = runtime.agreement.label_owner
    passives = runtime.agreement.passive_parties
    state = runtime.state
    if request.step == 1:
        if "psi.secret" in state or JOINT_ROWS in state or "hm.slot_of_row" in state:
            raise PolicyViolation("session", "alignment already ran in this run")
        ids = load_normalized_ids(runtime)
        secret = psi.PsiSecret.generate()
        state.set_bytes("psi.secret", secret.to_bytes())
        with pool_for(len(ids)) as pool:
            points = _points(runtime, ids, pool)
            if runtime.is_label_owner:
                blinded = psi.first_blind_label_owner(points, secret, executor=pool)
            else:
                blinded, permutation = psi.first_blind_passive(points, secret, executor=pool)
        reply.public["rows"] = len(ids)
        domain = psi.psi_domain(runtime.agreement.agreement_id, runtime.run_key) + b"/tokens"
        tokens = hm.customer_tokens(ids, domain)
        state.set_array(TOKENS, np.frombuffer(b"".join(tokens), np.uint8))
        if runtime.is_label_owner:
            payload = _payload(blinded)
            for peer in passives:
                reply.outbox[(peer, TOPIC_LO_BLINDED)] = runtime.seal(
                    peer, TOPIC_LO_BLINDED, payload, phase=ALIGN, round=1
                )
        else:
            state.set_array("psi.permutation", permutation)
            reply.outbox[(lo, TOPIC_PASSIVE_BLINDED)] = runtime.seal(
                lo, TOPIC_PASSIVE_BLINDED, _payload(blinded), phase=ALIGN, round=1
            )
        return
    secret = psi.PsiSecret.from_bytes(state.get_bytes("psi.secret"))
    if request.step == 2:
        if runtime.is_label_owner:
            received = {
                peer: _received_points(runtime, request, peer, TOPIC_PASSIVE_BLINDED, 1)
                for peer in passives
            }
            with pool_for(sum(len(v) for v in received.values())) as pool:
                for peer, theirs in received.items():
                    double = psi.second_blind(theirs, secret, executor=pool)
                    state.set_array(f"psi.passive_double.{peer}", double)
        else:
            lo_points = _received_points(runtime, request, lo, TOPIC_LO_BLINDED, 1)
            with pool_for(len(lo_points)) as pool:
                double = psi.second_blind(lo_points, secret, executor=pool)
            reply.outbox[(lo, TOPIC_LO_DOUBLE)] = runtime.seal(
                lo, TOPIC_LO_DOUBLE, _payload(double), phase=ALIGN, round=2
            )
        return
    if request.step == 3 and runtime.is_label_owner:
        lo_double = {
            peer: _received_points(runtime, request, peer, TOPIC_LO_DOUBLE, 2) for peer in passives
        }
        passive_double = {peer: state.array(f"psi.passive_double.{peer}") for peer in passives}
        minimum = min_intersection_of(runtime.agreement, request.job)
        own_rows = state.array(TOKENS).size // hm.TOKEN_BYTES
        joint = psi.match_joint_rows(
            lo_double, passive_double, min_intersection=minimum, label_owner_rows=own_rows
        )
        state.set_array(JOINT_ROWS, joint.label_owner_rows)
        if hides_membership(runtime, request):
            layout = hm.build_layouts(
                joint.passive_positions, {p: len(passive_double[p]) for p in passives}
            )
            state.set_array("hm.joint_slots", layout.joint_slots)
            state.set("hm.total_slots", int(layout.total_slots))
            for peer in passives:
                state.set_array(f"hm.positions.{peer}", layout.positions[peer])
                state.set_array(f"hm.slot_map.{peer}", layout.slot_maps[peer])
                payload = pack_payload(
                    {"slots": layout.slot_maps[peer]}, {"total_slots": layout.total_slots}
                )
                reply.outbox[(peer, TOPIC_SLOTS)] = runtime.seal(
                    peer, TOPIC_SLOTS, payload, phase=ALIGN, round=3
                )
        else:
            for peer in passives:
                positions = pack_payload({"positions": joint.passive_positions[peer]})
                reply.outbox[(peer, TOPIC_POSITIONS)] = runtime.seal(
                    peer, TOPIC_POSITIONS, positions, phase=ALIGN, round=3
                )
        for peer in passives:
            state.pop_array(f"psi.passive_double.{peer}")
        state.pop_array("psi.secret")
        reply.public["joint_rows"] = int(len(joint.label_owner_rows))
        return
    raise ProtocolAbort(ALIGN, runtime.party, f"no alignment step {request.step} for this role")


def hides_membership(runtime: PartyRuntime, request: StepRequest) -> bool:
    """Whether the job's kind keeps membership from the passive parties (its ``membership``)."""
    kind = runtime.jobs.get(request.job.kind) if request.job is not None else None
    return kind is None or kind.membership == "hidden"


def finish_alignment(runtime: PartyRuntime, request: StepRequest) -> np.ndarray:
    """First thing of the phase after alignment: every party's joint rows, in common order.

    The label owner already holds them; a passive party of a kind that reveals membership
    opens the LO's positions envelope (relayed with this message) and maps them through its
    secret permutation. A passive party of a kind that hides membership has no joint rows:
    this refuses (use :func:`finish_hidden_alignment`).
    """
    state = runtime.state
    if JOINT_ROWS in state:
        return state.array(JOINT_ROWS)
    if runtime.is_label_owner:
        raise ProtocolAbort(request.kind, runtime.party, "alignment has not run in this session")
    if hides_membership(runtime, request):
        raise PolicyViolation(
            "membership",
            f"job kind '{request.job.kind}' hides membership from passive parties: party "
            f"'{runtime.party}' computes on all its rows (PartyContext.rows) and never learns "
            "which customers are joint",
        )
    arrays, _ = unpack_payload(
        runtime.open(request, runtime.agreement.label_owner, TOPIC_POSITIONS, phase=ALIGN, round=3)
    )
    rows = psi.local_rows_from_positions(arrays["positions"], state.array("psi.permutation"))
    state.set_array(JOINT_ROWS, rows)
    state.pop_array("psi.permutation")
    state.pop_array("psi.secret")
    return rows


def finish_hidden_alignment(runtime: PartyRuntime, request: StepRequest) -> hm.PassiveLayout:
    """A passive party's slot map (opened from the LO's envelope on first use, then kept)."""
    state = runtime.state
    if "hm.slot_of_row" not in state:
        if runtime.is_label_owner or not hides_membership(runtime, request):
            raise ProtocolAbort(request.kind, runtime.party, "this party has no slot map")
        blob = runtime.open(
            request, runtime.agreement.label_owner, TOPIC_SLOTS, phase=ALIGN, round=3
        )
        try:
            arrays, meta = unpack_payload(blob)
            layout = hm.passive_layout(
                arrays["slots"], state.array("psi.permutation"), int(meta["total_slots"])
            )
        except (DataError, KeyError, TypeError, ValueError) as exc:
            raise PayloadError(
                ALIGN, runtime.party, runtime.agreement.label_owner, TOPIC_SLOTS, str(exc)[:200]
            ) from exc
        state.set_array("hm.slot_of_row", layout.slot_of_row)
        state.set_array("hm.row_of_position", layout.row_of_position)
        state.set("hm.total_slots", layout.total_slots)
        state.pop_array("psi.permutation")
        state.pop_array("psi.secret")
    return hm.PassiveLayout(
        int(state.get("hm.total_slots")),
        state.array("hm.slot_of_row"),
        state.array("hm.row_of_position"),
    )


def label_owner_layout(runtime: PartyRuntime, request: StepRequest) -> hm.LabelOwnerLayout:
    """The LO's slot maps of a kind that hides membership."""
    state = runtime.state
    if not runtime.is_label_owner or "hm.joint_slots" not in state:
        raise ProtocolAbort(request.kind, runtime.party, "this party holds no slot maps")
    passives = runtime.agreement.passive_parties
    return hm.LabelOwnerLayout(
        total_slots=int(state.get("hm.total_slots")),
        joint_slots=state.array("hm.joint_slots"),
        positions={p: state.array(f"hm.positions.{p}") for p in passives},
        slot_maps={p: state.array(f"hm.slot_map.{p}") for p in passives},
    )


def customer_tokens(runtime: PartyRuntime, request: StepRequest) -> list[bytes]:
    """Per-run pseudonyms of the customers: the LO's joint customers in the common order, a
    passive party's rows in its own order."""
    raw = runtime.state.array(TOKENS).tobytes()
    size = hm.TOKEN_BYTES
    tokens = [raw[i : i + size] for i in range(0, len(raw), size)]
    if runtime.is_label_owner:
        rows = finish_alignment(runtime, request)
        return [tokens[int(r)] for r in rows]
    return tokens

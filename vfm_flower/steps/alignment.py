"""Phase 2, alignment by ECDH-PSI over X25519, party side, in chunks (three rounds or more).

Round 1: every party normalizes and hashes its ids (domain: agreement id and run key) and
blinds them with a fresh secret, into its own spool (:mod:`vfm_flower.psi_stream`: files
read a block at a time, so memory is bounded by a block, not by the set). A passive party
P_k puts its blinded set Y_k^b in a secret uniformly random order. Then each set travels one
chunk per round (:mod:`vfm_flower.psi_chunks`, 2**20 ids by default: a set up to that takes
the three rounds of the unchunked protocol), pipelined: the label owner (LO) sends X^a chunk
by chunk to every P_k, which re-blinds each chunk (X^{ab_k}, LO order) and returns it the
next round; P_k sends Y_k^b chunk by chunk to the LO, which re-blinds each (Y_k^{b_k a}) and
keeps it. The chunk sizes follow from the set sizes in the signed hellos; every party checks
each chunk's round and size against that schedule.
Last round: the LO matches the doubly blinded sets bucket by bucket, applies the
minimum-intersection gate before anyone learns a match and draws a common random order of
the joint customers. What P_k gets depends on the job kind's ``membership``:

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

import logging
import shutil
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
from vfm_flower.psi_chunks import (
    DEFAULT_CHUNK_IDS,
    ChunkSchedule,
    check_chunk_ids,
    join_chunk_files,
    read_chunk,
)
from vfm_flower.psi_spool import AlignmentSpool, _no_progress
from vfm_flower.psi_stream import DEFAULT_BLOCK_IDS, match_streamed, stream_first_blind

partner_log = logging.getLogger("vfm_flower.partner")

ALIGN = "query.align"
TOPIC_LO_BLINDED = "psi.lo_blinded"
TOPIC_PASSIVE_BLINDED = "psi.passive_blinded"
TOPIC_LO_DOUBLE = "psi.lo_double"
TOPIC_POSITIONS = "psi.positions"
TOPIC_SLOTS = "psi.slot_map"
JOINT_ROWS = "joint_rows"
#: The alignment's spool, in the run's directory.
SPOOL = "psi"
#: The request parameter naming the ids per message (the run-config ``align-chunk-ids``).
CHUNK_PARAM = "chunk_ids"
#: Sets from this size get progress lines in the partner's log.
LOG_PROGRESS_FROM = 1 << 20
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
    frame = runtime.read_table(id_columns_only=True)
    ids = spec.normalize(frame, party=runtime.party)
    del frame
    check_unique(ids, runtime.party)
    check_set_size(len(ids), runtime.terms.max_set_size, runtime.party)
    return ids


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


def _payload(points: np.ndarray) -> bytes:
    return pack_payload({"points": np.ascontiguousarray(points).reshape(-1)})


def alignment_schedule(ctx: PartyContext) -> ChunkSchedule:
    """The chunk schedule of this alignment, from the signed hellos' set sizes and the chunk
    size the server asked for (the same in every round)."""
    runtime = ctx.runtime
    chunk_ids = check_chunk_ids(ctx.request.params.get(CHUNK_PARAM, DEFAULT_CHUNK_IDS))
    kept = runtime.state.get("psi.chunk_ids")
    if kept is not None and int(kept) != chunk_ids:
        raise ProtocolAbort(ALIGN, runtime.party, "the chunk size changed during the alignment")
    rows = ctx.party_rows
    if set(rows) != set(runtime.agreement.party_names):
        raise ProtocolAbort(ALIGN, runtime.party, "the session lacks a party's signed hello")
    for party, count in rows.items():  # the agreement's bound on every set, checked here too
        check_set_size(count, runtime.agreement.party(party).max_set_size, party)
    try:
        return ChunkSchedule(rows, runtime.agreement.label_owner, chunk_ids)
    except DataError as exc:
        raise ProtocolAbort(ALIGN, runtime.party, str(exc)) from exc


def _received_chunk(
    runtime: PartyRuntime,
    request: StepRequest,
    sender: str,
    topic: str,
    *,
    round: int,
    expected: int,
) -> np.ndarray:
    """Open one chunk of blinded points; refuse a wrong count or a non-canonical point."""
    blob = runtime.open(request, sender, topic, phase=ALIGN, round=round)
    try:
        arrays, _ = unpack_payload(blob)
        points = psi.points_from_bytes(arrays["points"].tobytes(), party=sender)
        limit = runtime.agreement.party(sender).max_set_size
        points = psi.check_received_points(points, max_set_size=limit, party=sender)
        if points.shape[0] != expected:
            raise DataError(f"a chunk of {points.shape[0]} points where {expected} are due")
    except (EnvelopeError, DataError, KeyError, ValueError) as exc:
        raise PayloadError(ALIGN, runtime.party, sender, topic, str(exc)[:200]) from exc
    return points


def _partner_progress(total: int):
    """Progress lines in the partner's log for a large set (about every tenth)."""
    if total < LOG_PROGRESS_FROM:
        return None
    step = max(1, total // 10)
    shown: dict[str, int] = {}

    def progress(stage: str, done: int, of: int) -> None:
        if done - shown.get(stage, 0) >= step or done == of:
            shown[stage] = done
            partner_log.info("alignment: %s %d of %d", stage, done, of or total)

    return progress


@STEPS.step(ALIGN, jobs=("*",), public=("rows", "joint_rows"))
def every_party_align(ctx: PartyContext) -> None:
    """Run round ``request.step`` of the chunked alignment (:mod:`vfm_flower.psi_chunks`)."""
    runtime, request = ctx.runtime, ctx.request
    state = runtime.state
    try:
        if request.step == 1 and (
            "psi.secret" in state or JOINT_ROWS in state or "hm.slot_of_row" in state
        ):
            raise PolicyViolation("session", "alignment already ran in this run")
        if request.step != int(state.get("psi.round", 0)) + 1:
            raise ProtocolAbort(
                ALIGN, runtime.party, f"alignment round {request.step} out of order"
            )
        schedule = alignment_schedule(ctx)
        if request.step > schedule.rounds_of(runtime.party):
            # a passive party whose work is done while a larger set still travels: nothing
            # to do (the server may as well leave it out of these rounds)
            if request.step > schedule.passive_last_round:
                raise ProtocolAbort(
                    ALIGN, runtime.party, f"no alignment round {request.step} for this party"
                )
        else:
            spool = AlignmentSpool.at(runtime.scratch_directory(SPOOL))
            if request.step == 1:
                _blind_own_set(ctx, schedule, spool)
            if runtime.is_label_owner:
                _label_owner_round(ctx, schedule, spool)
            else:
                _passive_round(ctx, schedule, spool)
            if request.step == schedule.rounds_of(runtime.party):
                spool.remove()
    except BaseException:
        remove_spool(runtime)  # the alignment cannot resume: nothing of it stays on disk
        raise
    state.set("psi.round", request.step)


def remove_spool(runtime: PartyRuntime) -> None:
    """Remove this run's alignment spool (its blinded points), if any."""
    shutil.rmtree(runtime.scratch_directory(SPOOL), ignore_errors=True)


def _blind_own_set(ctx: PartyContext, schedule: ChunkSchedule, spool: AlignmentSpool) -> None:
    """Round 1: hash, blind (and for a passive party shuffle) the own set into the spool."""
    runtime, state = ctx.runtime, ctx.runtime.state
    frame = runtime.read_table(id_columns_only=True)
    count = len(frame)  # the schedule checked the hello's count against the agreement's bound
    if count != schedule.rows[runtime.party]:
        raise ProtocolAbort(
            ALIGN, runtime.party, "its ids changed since its hello: run the job again"
        )
    # normalized a block at a time as the blinding consumes them (an invalid id is reported
    # after the last block, a duplicate by the blinded set's uniqueness check)
    blocks = id_spec_of(runtime).normalize_blocks(
        frame, party=runtime.party, block=DEFAULT_BLOCK_IDS
    )
    del frame
    secret = psi.PsiSecret.generate()
    state.set_bytes("psi.secret", secret.to_bytes())
    state.set("psi.chunk_ids", schedule.chunk_ids)
    state.set("psi.match_round", schedule.match_round)
    domain = psi.psi_domain(runtime.agreement.agreement_id, runtime.run_key)
    token_domain = domain + b"/tokens"
    with pool_for(count) as pool:
        first = stream_first_blind(
            blocks,
            domain,
            secret,
            spool,
            party=runtime.party,
            label_owner=runtime.is_label_owner,
            max_set_size=runtime.terms.max_set_size,
            executor=pool,
            progress=_partner_progress(count) or _no_progress,
            total=count,
            tokens=lambda block: b"".join(hm.customer_tokens(block, token_domain)),
        )
    tokens = spool.path("tokens.bin")
    state.set_array(TOKENS, np.fromfile(tokens, dtype=np.uint8))
    tokens.unlink()
    if first.permutation is not None:
        state.set_array("psi.permutation", np.load(first.permutation))
        first.permutation.unlink()
    ctx.reply.public["rows"] = first.rows


def _send_own_chunk(
    ctx: PartyContext, schedule: ChunkSchedule, spool: AlignmentSpool, index: int | None
) -> None:
    runtime, reply, step = ctx.runtime, ctx.reply, ctx.request.step
    if index is None:
        return
    first, count = schedule.chunk_rows(runtime.party, index)
    payload = _payload(read_chunk(spool.path("first.pts"), first, count))
    if runtime.is_label_owner:
        for peer in schedule.passive_parties:
            reply.outbox[(peer, TOPIC_LO_BLINDED)] = runtime.seal(
                peer, TOPIC_LO_BLINDED, payload, phase=ALIGN, round=step
            )
    else:
        lo = schedule.label_owner
        reply.outbox[(lo, TOPIC_PASSIVE_BLINDED)] = runtime.seal(
            lo, TOPIC_PASSIVE_BLINDED, payload, phase=ALIGN, round=step
        )


def _passive_round(ctx: PartyContext, schedule: ChunkSchedule, spool: AlignmentSpool) -> None:
    """P_k: re-blind the LO's chunk of the round before and return it; send its own chunk."""
    runtime, request, step = ctx.runtime, ctx.request, ctx.request.step
    lo = schedule.label_owner
    index = schedule.label_owner_chunk_returned(step)
    if index is not None:
        _, count = schedule.chunk_rows(lo, index)
        points = _received_chunk(
            runtime, request, lo, TOPIC_LO_BLINDED, round=step - 1, expected=count
        )
        secret = psi.PsiSecret.from_bytes(runtime.state.get_bytes("psi.secret"))
        with pool_for(count) as pool:
            double = psi.second_blind(points, secret, executor=pool)
        ctx.reply.outbox[(lo, TOPIC_LO_DOUBLE)] = runtime.seal(
            lo, TOPIC_LO_DOUBLE, _payload(double), phase=ALIGN, round=step
        )
    _send_own_chunk(ctx, schedule, spool, schedule.passive_chunk_sent(runtime.party, step))


def _label_owner_round(ctx: PartyContext, schedule: ChunkSchedule, spool: AlignmentSpool) -> None:
    """LO: keep the chunks of the round before (re-blinding P_k's), send its own; match last."""
    runtime, request, step = ctx.runtime, ctx.request, ctx.request.step
    lo = schedule.label_owner
    due = [
        (peer, index)
        for peer in schedule.passive_parties
        if (index := schedule.passive_chunk_received(peer, step)) is not None
    ]
    with pool_for(sum(schedule.chunk_rows(p, i)[1] for p, i in due)) as pool:
        if due:
            secret = psi.PsiSecret.from_bytes(runtime.state.get_bytes("psi.secret"))
        for peer, index in due:
            _, count = schedule.chunk_rows(peer, index)
            points = _received_chunk(
                runtime, request, peer, TOPIC_PASSIVE_BLINDED, round=step - 1, expected=count
            )
            double = psi.second_blind(points, secret, executor=pool)
            spool.path(f"double.{peer}.{index}.pts").write_bytes(double.tobytes())
    index = schedule.double_chunk_received(step)
    if index is not None:
        _, count = schedule.chunk_rows(lo, index)
        for peer in schedule.passive_parties:
            points = _received_chunk(
                runtime, request, peer, TOPIC_LO_DOUBLE, round=step - 1, expected=count
            )
            spool.path(f"lo_double.{peer}.{index}.pts").write_bytes(points.tobytes())
    _send_own_chunk(ctx, schedule, spool, schedule.label_owner_chunk_sent(step))
    if step == schedule.match_round:
        _match_and_order(ctx, schedule, spool)


def _match_and_order(ctx: PartyContext, schedule: ChunkSchedule, spool: AlignmentSpool) -> None:
    """LO, last round: match, apply the minimum-intersection gate, draw the common order and
    address each passive party its slot map (or its positions)."""
    runtime, request, reply = ctx.runtime, ctx.request, ctx.reply
    state = runtime.state
    passives = schedule.passive_parties
    lo_double, passive_double = {}, {}
    own_chunks = schedule.chunks(schedule.label_owner)
    for peer in passives:
        lo_double[peer] = spool.path(f"lo_double.{peer}.pts")
        join_chunk_files(
            [spool.path(f"lo_double.{peer}.{j}.pts") for j in range(own_chunks)],
            lo_double[peer],
        )
        passive_double[peer] = spool.path(f"double.{peer}.pts")
        received = join_chunk_files(
            [spool.path(f"double.{peer}.{j}.pts") for j in range(schedule.chunks(peer))],
            passive_double[peer],
        )
        if received != schedule.rows[peer]:
            raise ProtocolAbort(
                ALIGN, runtime.party, f"'{peer}' sent {received} ids, its hello declared "
                f"{schedule.rows[peer]}",
            )  # fmt: skip
    minimum = min_intersection_of(runtime.agreement, request.job)
    own_rows = schedule.rows[schedule.label_owner]
    joint = match_streamed(
        lo_double,
        passive_double,
        min_intersection=minimum,
        label_owner_rows=own_rows,
        spool=spool,
        progress=_partner_progress(own_rows) or _no_progress,
    )
    state.set_array(JOINT_ROWS, joint.label_owner_rows)
    if hides_membership(runtime, request):
        layout = hm.build_layouts(joint.passive_positions, {p: schedule.rows[p] for p in passives})
        state.set_array("hm.joint_slots", layout.joint_slots)
        state.set("hm.total_slots", int(layout.total_slots))
        for peer in passives:
            state.set_array(f"hm.positions.{peer}", layout.positions[peer])
            state.set_array(f"hm.slot_map.{peer}", layout.slot_maps[peer])
            payload = pack_payload(
                {"slots": layout.slot_maps[peer]}, {"total_slots": layout.total_slots}
            )
            reply.outbox[(peer, TOPIC_SLOTS)] = runtime.seal(
                peer, TOPIC_SLOTS, payload, phase=ALIGN, round=request.step
            )
    else:
        for peer in passives:
            positions = pack_payload({"positions": joint.passive_positions[peer]})
            reply.outbox[(peer, TOPIC_POSITIONS)] = runtime.seal(
                peer, TOPIC_POSITIONS, positions, phase=ALIGN, round=request.step
            )
    state.drop_array("psi.secret")
    reply.public["joint_rows"] = int(len(joint.label_owner_rows))


def _match_round(state) -> int:
    """The round of the LO's match, whose envelopes a passive party opens next."""
    return int(state.get("psi.match_round", 3))


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
        runtime.open(
            request,
            runtime.agreement.label_owner,
            TOPIC_POSITIONS,
            phase=ALIGN,
            round=_match_round(state),
        )
    )
    rows = psi.local_rows_from_positions(arrays["positions"], state.array("psi.permutation"))
    remove_spool(runtime)
    state.set_array(JOINT_ROWS, rows)
    state.drop_array("psi.permutation")
    state.drop_array("psi.secret")
    return rows


def finish_hidden_alignment(runtime: PartyRuntime, request: StepRequest) -> hm.PassiveLayout:
    """A passive party's slot map (opened from the LO's envelope on first use, then kept)."""
    state = runtime.state
    if "hm.slot_of_row" not in state:
        if runtime.is_label_owner or not hides_membership(runtime, request):
            raise ProtocolAbort(request.kind, runtime.party, "this party has no slot map")
        blob = runtime.open(
            request,
            runtime.agreement.label_owner,
            TOPIC_SLOTS,
            phase=ALIGN,
            round=_match_round(state),
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
        remove_spool(runtime)
        state.set_array("hm.slot_of_row", layout.slot_of_row)
        state.set_array("hm.row_of_position", layout.row_of_position)
        state.set("hm.total_slots", layout.total_slots)
        state.drop_array("psi.permutation")
        state.drop_array("psi.secret")
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

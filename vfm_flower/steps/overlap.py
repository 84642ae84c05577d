"""The ``overlap`` job, party side: PSI cardinality in three rounds (:mod:`vfm_flower.overlap`).

Round 1 (every party): hash and blind its ids. The label owner (LO) sends ``X^a`` to every
passive party; a passive party sends ``Y_k^{b_k}`` in a secret order to the LO; the first
passive party also seals the group seed to the other passive parties. The holder of the
segment column, if the job names one, sends one padded partition per value instead.
Round 2: a passive party returns ``X^{a b_k}`` in the group seed's order; the LO blinds every
``Y_k^{b_k}`` again. Round 3 (LO): count, apply the minimum-intersection gate and the minimum
cohort, publish the released counts and deliver the overlap report to the result owner.

Every payload is an envelope; every received set is checked against the sender's signed
row count (and the number of partitions the job allows) before it is used. Nothing here
uses alignment: no party, the LO included, learns which customers are shared.
"""

from __future__ import annotations

import json

import numpy as np

from vfm_flower import overlap, psi
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import PayloadError, ProtocolAbort
from vfm_flower.jobs_builtin import OVERLAP_KIND, OverlapParams
from vfm_flower.party import StepRegistry
from vfm_flower.policy import min_intersection_of
from vfm_flower.report_overlap import build_overlap_report, write_overlap_report
from vfm_flower.steps.alignment import pool_for

STEP = "query.overlap"
LABEL_OWNER_SET = Topic("overlap.label_owner_set", phase=STEP)
PASSIVE_SET = Topic("overlap.passive_set", phase=STEP)
GROUP_SEED = Topic("overlap.group_seed", phase=STEP)
RETURNED_SET = Topic("overlap.returned_set", phase=STEP)

#: The report's name on the release list (to the result owner).
REPORT = "overlap-report"

STEPS = StepRegistry()


def _domain(ctx: PartyContext) -> bytes:
    return psi.psi_domain(ctx.agreement.agreement_id, ctx.run_id) + b"/overlap"


def _payload(sets: np.ndarray, meta: dict | None = None) -> bytes:
    return pack_payload({"points": np.ascontiguousarray(sets).reshape(-1)}, meta or {})


def _open_sets(
    ctx: PartyContext,
    sender: str,
    topic: Topic,
    params: OverlapParams,
    *,
    round: int,
    owner: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Open the ``(partitions, rows, 32)`` set ``sender`` sealed, a set of ``owner``'s ids
    (default: the sender's): as many partitions as ``owner`` may send, each of exactly its
    signed row count of points, every point well formed."""
    owner = owner or sender
    rows = ctx.party_rows.get(owner, 0)
    limit = _partitions_of(ctx, owner, params)
    arrays, meta = ctx.receive_arrays(sender, topic, round=round)
    with ctx.decoding(sender, topic):
        count = int(meta["partitions"])
        if not 1 <= count <= limit:
            raise ValueError(f"{count} partitions, at most {limit} allowed")
        flat = np.asarray(arrays["points"], dtype=np.uint8)
        if rows < 1 or flat.size != count * rows * psi.POINT_BYTES:
            raise ValueError(
                f"expected {count} x {rows} points (a signed row count), got "
                f"{flat.size // psi.POINT_BYTES}"
            )
        sets = flat.reshape(count, rows, psi.POINT_BYTES)
        psi.check_received_points(
            sets.reshape(-1, psi.POINT_BYTES), max_set_size=count * rows, party=sender
        )
    return sets, meta


def _partitions_of(ctx: PartyContext, party: str, params: OverlapParams) -> int:
    """How many partitions ``party`` sends: one per segment value for the holder (what it
    declares, at most ``max-segments``), else one."""
    return params.max_segments if party == params.segment_party else 1


@STEPS.step(STEP, jobs=(OVERLAP_KIND.name,))
def every_party_overlap(ctx: PartyContext) -> None:
    """Route the three overlap rounds by role."""
    params = OverlapParams.from_job(ctx.job)
    params.check_holder(ctx.label_owner)
    if params.segment_party and params.segment_party not in ctx.agreement.party_names:
        raise ProtocolAbort(
            STEP, ctx.party, f"segment-party '{params.segment_party}' is not a party"
        )
    if ctx.round == 1:
        _first_round(ctx, params)
    elif ctx.round == 2:
        _second_round(ctx, params)
    elif ctx.round == 3 and ctx.is_label_owner:
        _count(ctx, params)
    else:
        raise ProtocolAbort(STEP, ctx.party, f"no overlap round {ctx.round} for this role")


def _first_round(ctx: PartyContext, params: OverlapParams) -> None:
    if "overlap.secret" in ctx.state:
        raise ProtocolAbort(STEP, ctx.party, "the overlap's first round already ran in this run")
    ids = ctx.normalized_ids()
    secret = psi.PsiSecret.generate()
    ctx.state.set_bytes("overlap.secret", secret.to_bytes())
    domain = _domain(ctx)
    meta: dict = {}
    with pool_for(len(ids)) as pool:
        points = psi.hash_ids_to_points(ids, domain, executor=pool)
        del ids
        if ctx.party == params.segment_party:
            ctx.check_columns([params.segment_column])
            values, codes = overlap.segment_codes(
                ctx.table()[params.segment_column].tolist(),
                max_values=params.max_segments,
                party=ctx.party,
                column=params.segment_column,
            )
            sets = overlap.partition_points(points, codes, len(values), domain, executor=pool)
            meta["values"] = values
            ctx.state.set("overlap.values", json.dumps(values))
        elif ctx.is_label_owner:
            sets = points[None]
        else:
            sets = points[psi.secure_permutation(points.shape[0])][None]
        blinded = overlap.blind_sets(sets, secret, executor=pool)
    meta["partitions"] = int(blinded.shape[0])
    if ctx.is_label_owner:
        payload = _payload(blinded, meta)
        for peer in ctx.passive_parties:
            ctx.send(peer, LABEL_OWNER_SET, payload)
        return
    ctx.send(ctx.label_owner, PASSIVE_SET, _payload(blinded, meta))
    if ctx.party == ctx.passive_parties[0]:
        seed = overlap.new_group_seed()
        ctx.state.set_bytes("overlap.group_seed", seed)
        for peer in ctx.passive_parties[1:]:
            ctx.send(peer, GROUP_SEED, seed)


def _second_round(ctx: PartyContext, params: OverlapParams) -> None:
    secret = psi.PsiSecret.from_bytes(ctx.state.get_bytes("overlap.secret"))
    if ctx.is_label_owner:
        for peer in ctx.passive_parties:
            sets, meta = _open_sets(ctx, peer, PASSIVE_SET, params, round=1)
            if peer == params.segment_party:
                with ctx.decoding(peer, PASSIVE_SET):
                    values = [str(v) for v in meta["values"]]
                    if len(values) != sets.shape[0] or len(set(values)) != len(values):
                        raise ValueError("one distinct segment value per partition expected")
                ctx.state.set("overlap.values", json.dumps(values))
            with pool_for(sets.shape[0] * sets.shape[1]) as pool:
                double = overlap.blind_sets(sets, secret, executor=pool)
            ctx.state.set_array(f"overlap.passive.{peer}", double)
        ctx.state.drop_array("overlap.secret")
        return
    lo = ctx.label_owner
    sets, _ = _open_sets(ctx, lo, LABEL_OWNER_SET, params, round=1)
    count = sets.shape[0]
    if ctx.party == ctx.passive_parties[0]:
        seed = ctx.state.get_bytes("overlap.group_seed")
    else:
        seed = ctx.receive(ctx.passive_parties[0], GROUP_SEED, round=1)
        if len(seed) != overlap.GROUP_SEED_BYTES:
            raise PayloadError(
                STEP, ctx.party, ctx.passive_parties[0], GROUP_SEED.name, "malformed group seed"
            )
    with pool_for(sets.shape[0] * sets.shape[1]) as pool:
        returned = overlap.permute_returned_sets(sets, secret, seed, executor=pool)
    ctx.send(lo, RETURNED_SET, _payload(returned, {"partitions": count}))
    ctx.state.drop_array("overlap.secret")
    ctx.state.drop_array("overlap.group_seed")


def _count(ctx: PartyContext, params: OverlapParams) -> None:
    returned: dict[str, np.ndarray] = {}
    for peer in ctx.passive_parties:
        returned[peer], _ = _open_sets(
            ctx, peer, RETURNED_SET, params, round=2, owner=ctx.label_owner
        )
    passive_sets = {p: ctx.state.pop_array(f"overlap.passive.{p}") for p in ctx.passive_parties}
    if any(v is None for v in passive_sets.values()):
        raise ProtocolAbort(STEP, ctx.party, "the overlap's second round did not run")
    counts = overlap.count_overlaps(
        returned,
        passive_sets,  # type: ignore[arg-type]
        segment_holder=params.segment_party or None,
        label_owner=ctx.label_owner,
    )
    values = json.loads(ctx.state.get("overlap.values")) if params.segment_party else None
    release = overlap.release_overlap(
        counts,
        label_owner=ctx.label_owner,
        set_sizes=ctx.party_rows,
        min_intersection=min_intersection_of(ctx.agreement, ctx.job),
        min_cohort=ctx.min_cohort,
        segment_values=values,
        segment_party=params.segment_party or None,
        segment_column=params.segment_column or None,
    )
    ctx.publish(**release.public_facts())
    report = build_overlap_report(release, ctx.agreement, ctx.job)
    ctx.deliver(REPORT, json.dumps(report, sort_keys=True).encode())


@STEPS.receiver(REPORT, jobs=(OVERLAP_KIND.name,))
def receive_overlap_report(ctx: PartyContext, payload: bytes) -> None:
    """Result owner: write ``overlap.json`` and ``overlap.html`` in its work dir."""
    with ctx.decoding(ctx.label_owner, REPORT):
        report = json.loads(payload)
    write_overlap_report(report, ctx.work_dir)

"""The ``segments`` job, the partners' steps: forward, split, sums, merge tests, masks.

See :mod:`vfm_flower.steps.segments` for the protocol and the label owner's steps; this
module holds what a passive party runs: the target holder's forward
(``query.segment_forward``), the splitter's per-value split for a cross of two partners'
columns (``query.segment_split``), the aggregator's per-cell sums, noise or cohort tests and
masks (``query.segment_sums``), its tests of widened withheld groups
(``query.segment_merge``) and the masks of the released cells (``query.segment_reveal``).
Every ciphertext it passes on is refreshed; everything the label owner decrypts has fresh
full-size randomness.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vfm_flower import segment_stats as ss
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.jobs_builtin import SegmentParams
from vfm_flower.party import StepRegistry
from vfm_flower.policy import table_groups
from vfm_flower.steps.segments import (
    CELLS,
    FORWARD,
    JOINT,
    KINDS,
    MASKS,
    MERGE,
    MERGED,
    REVEAL,
    SLOTS,
    SPLIT,
    SPLIT_SLOTS,
    SPLIT_VALUES,
    SUMS,
    WITHHELD,
    _as_shape,
    _codes_of,
    _encoding,
    _noise,
    _params,
    _target_values,
)

STEPS = StepRegistry()


def _splits(ctx: PartyContext, sender: str, meta: dict, vectors: dict, rows: int) -> int:
    """How many stream pairs (values of the LO's column) a payload carries, checked."""
    with ctx.decoding(sender, JOINT):
        splits = int(meta["splits"])
        limit = _params(ctx).max_segments
        if not 1 <= splits <= limit or any(len(v) != rows for v in vectors.values()):
            raise ValueError(f"{splits} splits (at most {limit}) of {rows} ciphertexts each")
        for a in range(splits):
            vectors[f"count{a}"]  # noqa: B018 - a missing stream is a KeyError here
    return splits


@STEPS.step(FORWARD, jobs=KINDS)
def target_holder_forward(ctx: PartyContext) -> None:
    """``G`` (passive, not ``H``): ``[[j]]`` and ``[[j u]]`` to ``H``, laid out by slot."""
    params = _params(ctx)
    layout = ctx.passive_layout()
    keys, vectors, meta = ctx.receive_encrypted(ctx.label_owner, JOINT, max_count=layout.rows)
    splits = _splits(ctx, ctx.label_owner, meta, vectors, layout.rows)
    target, _ = _encoding(params).encode(_target_values(ctx, params, ctx.table()))
    by_position = target[layout.row_of_position].astype(object)
    slot_of_position = layout.slot_of_row[layout.row_of_position]
    free_slots = layout.total_slots - layout.rows
    out = {}
    for a in range(splits):
        # fresh randomness before they leave: H could otherwise solve [[j]]^u for u, and
        # tell this party's rows from its fresh zeros in the free slots
        count = keys.refresh_for_peers(vectors[f"count{a}"])
        summed = keys.refresh_for_peers(keys.multiply_plain(vectors[f"count{a}"], by_position))
        zeros = iter(
            keys.encrypt_integers(
                np.zeros(2 * free_slots, dtype=np.int64), value_bits=1
            ).ciphertexts
        )
        for name, vector in ((f"count{a}", count), (f"sum{a}", summed)):
            slots: list[Any] = [None] * layout.total_slots
            for position, slot in enumerate(slot_of_position):
                slots[int(slot)] = vector.ciphertexts[position]
            slots = [c if c is not None else next(zeros) for c in slots]
            out[name] = type(vector)(tuple(slots), vector.value_bits, vector.fraction_bits)
    following = params.splitter(ctx.label_owner) or params.aggregator(ctx.label_owner)
    ctx.send_encrypted(following, SLOTS, keys, out, {"splits": splits})


@STEPS.step(SPLIT, jobs=KINDS)
def splitter_split(ctx: PartyContext) -> None:
    """For a cross of two partners' columns, the segment column's holder: per value of its
    column, the streams of its rows with that value laid out by slot (refreshed), fresh
    encryptions of 0 in every other slot, for the aggregator; its values to the LO."""
    params = _params(ctx)
    lo, layout = ctx.label_owner, ctx.passive_layout()
    aggregator = params.aggregator(lo)
    forwarded = params.target_party not in (lo, ctx.party, aggregator)
    if forwarded:
        sender, topic, rows = params.target_party, SLOTS, layout.total_slots
    else:
        sender, topic, rows = lo, JOINT, layout.rows
    keys, vectors, meta = ctx.receive_encrypted(sender, topic, max_count=rows)
    if _splits(ctx, sender, meta, vectors, rows) != 1:
        raise ProtocolAbort(SPLIT, ctx.party, "one pair of streams expected")
    if forwarded:
        order = layout.slot_of_row  # by slot: this party's rows
    else:
        order = np.argsort(layout.row_of_position)  # by position: each row's position
    streams = {"count": _pick(vectors["count0"], order)}
    if params.target_party == ctx.party:
        target, _ = _encoding(params).encode(_target_values(ctx, params, ctx.table()))
        streams["sum"] = keys.multiply_plain(streams["count"], target.astype(object))
    elif params.target_party != aggregator:
        streams["sum"] = _pick(vectors["sum0"], order)
    values, codes, _ = _codes_of(ctx, params, ctx.table(), ctx.party)
    out = {}
    for v in range(len(values)):
        mine = np.flatnonzero(codes == v)
        for name, stream in streams.items():
            slots = list(
                keys.encrypt_integers(
                    np.zeros(layout.total_slots, dtype=np.int64), value_bits=1
                ).ciphertexts
            )
            refreshed = keys.refresh_for_peers(_pick(stream, mine))
            for row, ciphertext in zip(mine, refreshed.ciphertexts, strict=True):
                slots[int(layout.slot_of_row[row])] = ciphertext
            out[f"{name}{v}"] = type(stream)(tuple(slots), stream.value_bits, stream.fraction_bits)
    ctx.send_encrypted(aggregator, SPLIT_SLOTS, keys, out, {"splits": len(values)})
    ctx.send(lo, SPLIT_VALUES, json.dumps(values).encode())


@STEPS.step(SUMS, jobs=KINDS)
def holder_sums(ctx: PartyContext) -> None:
    """``H`` (passive): the per-value sums; or ``G`` for a segment the LO holds."""
    params = _params(ctx)
    if params.aggregator(ctx.label_owner) is None:
        _packed_sums(ctx, params)
        return
    layout = ctx.passive_layout()
    values, codes, own = _codes_of(ctx, params, ctx.table(), ctx.party)
    encoding = _encoding(params)
    splitter = params.splitter(ctx.label_owner)
    forwarded = splitter is not None or params.target_party not in (ctx.label_owner, ctx.party)
    if splitter is not None:
        sender, topic, rows = splitter, SPLIT_SLOTS, layout.total_slots
    elif forwarded:
        sender, topic, rows = params.target_party, SLOTS, layout.total_slots
    else:
        sender, topic, rows = ctx.label_owner, JOINT, layout.rows
    keys, vectors, meta = ctx.receive_encrypted(sender, topic, max_count=rows)
    splits = _splits(ctx, sender, meta, vectors, rows)
    if forwarded:  # by slot: this party's rows, in its own order
        vectors = {name: _pick(v, layout.slot_of_row) for name, v in vectors.items()}
        groups = codes
    else:  # by position
        groups = codes[layout.row_of_position]
    if params.target_party == ctx.party:
        target, _ = encoding.encode(_target_values(ctx, params, ctx.table()))
        in_order = target if forwarded else target[layout.row_of_position]
    counts, sums = [], []
    for a in range(splits):
        count = vectors[f"count{a}"]
        counts.append(keys.grouped_sum(count, groups, len(values)))
        if params.target_party == ctx.party:  # the target is this party's own column
            matrix = np.zeros((layout.rows, len(values)), dtype=np.int64)
            matrix[np.arange(layout.rows), groups] = in_order
            sums.append(keys.dot(matrix, count))
        else:
            sums.append(keys.grouped_sum(vectors[f"sum{a}"], groups, len(values)))
    shape = own if own is not None else ((splits, len(values)) if params.cross_party else None)
    _send_cells(ctx, params, keys, values, _joined(counts), _joined(sums), shape)


def _joined(parts: list[Any]) -> Any:
    """One encrypted vector of the cells of every split, in order (LO-major)."""
    bits = max(p.value_bits for p in parts)
    cts = tuple(c for p in parts for c in p.ciphertexts)
    return type(parts[0])(cts, bits, parts[0].fraction_bits)


def _pick(vector: Any, slots: np.ndarray) -> Any:
    cts = vector.ciphertexts
    return type(vector)(tuple(cts[int(s)] for s in slots), vector.value_bits, vector.fraction_bits)


def _send_cells(
    ctx: PartyContext,
    params: SegmentParams,
    keys: Any,
    values: list[str],
    counts: Any,
    sums: Any,
    shape: tuple[int, int] | None = None,
) -> None:
    """Noise, or cohort tests and masks; to the LO."""
    noise = _noise(params)
    encoding = _encoding(params)
    meta = {"values": values, "shape": list(shape) if shape else None}
    ctx.state.set("segments.shape", json.dumps(list(shape) if shape else None))
    if noise is not None:
        counts = keys.add_plain(
            counts, np.array(ss.cell_noise(noise, 1, len(counts)), dtype=object)
        )
        extra = ss.cell_noise(noise, encoding.sensitivity, len(counts))
        sums = keys.add_plain(sums, np.array(extra, dtype=object))
        ctx.send_encrypted(
            ctx.label_owner,
            CELLS,
            keys,
            {"count": keys.rerandomize(counts), "sum": keys.rerandomize(sums)},
            meta,
        )
        return
    cells = len(counts)
    tests = keys.equality_tests(counts, ss.cohort_candidates(cells, ctx.min_cohort))
    count_masks = ss.mask_values(cells, counts.value_bits)
    sum_masks = ss.mask_values(cells, sums.value_bits)
    # fresh randomness on everything the LO decrypts: ciphertexts sharing randomness with
    # the tests would let it solve for the withheld counts
    masked_count = keys.rerandomize(keys.add_plain(counts, np.array(count_masks, dtype=object)))
    masked_sum = keys.rerandomize(keys.add_plain(sums, np.array(sum_masks, dtype=object)))
    ctx.state.set(
        "segments.masks",
        json.dumps({"count": [str(m) for m in count_masks], "sum": [str(m) for m in sum_masks]}),
    )
    ctx.state.set_bytes("segments.counts", keys.ciphertexts_to_bytes(counts))
    ctx.state.set_bytes("segments.public_key", keys.public_bytes())
    ctx.send_encrypted(
        ctx.label_owner,
        CELLS,
        keys,
        {"tests": tests, "masked_count": masked_count, "masked_sum": masked_sum},
        meta,
    )


def _packed_sums(ctx: PartyContext, params: SegmentParams) -> None:
    """``G`` for a segment the LO holds: its target against each released cell's encrypted
    indicators (its noise added to the sums)."""
    layout = ctx.passive_layout()
    keys, vectors, meta = ctx.receive_encrypted(ctx.label_owner, JOINT, max_count=layout.rows)
    encoding = _encoding(params)
    target, _ = encoding.encode(_target_values(ctx, params, ctx.table()))
    column = target[layout.row_of_position].reshape(-1, 1)
    with ctx.decoding(ctx.label_owner, JOINT):
        cells = int(meta["cells"])
        if not 0 <= cells <= params.max_segments or len(vectors) != cells:
            raise ValueError("one indicator vector per released cell, at most max-segments")
    sums = []
    for i in range(cells):
        indicator = vectors[f"cell{i}"]
        if len(indicator) != layout.rows:
            raise ProtocolAbort(SUMS, ctx.party, "one encrypted indicator per row expected")
        sums.append(keys.dot(column, indicator, rerandomize=False))
    out = {}
    if sums:
        total = type(sums[0])(
            tuple(v.ciphertexts[0] for v in sums), sums[0].value_bits, sums[0].fraction_bits
        )
        noise = _noise(params)
        if noise is not None:
            extra = ss.cell_noise(noise, encoding.sensitivity, cells)
            total = keys.add_plain(total, np.array(extra, dtype=object))
        out["sums"] = keys.rerandomize(total)
    ctx.send_encrypted(ctx.label_owner, CELLS, keys, out, {"cells": cells})


@STEPS.step(MERGE, jobs=KINDS)
def holder_merge(ctx: PartyContext) -> None:
    """``H``: do the withheld groups the LO names each cover 0 or at least the minimum
    cohort? (Each list it is sent is remembered: the final list must withhold them all.)"""
    params = _params(ctx)
    raw = ctx.receive(ctx.label_owner, WITHHELD, round=ctx.round - 1)
    keys, counts = _kept_counts(ctx, params)
    with ctx.decoding(ctx.label_owner, WITHHELD):
        asked = [[int(i) for i in group] for group in json.loads(raw)["withheld"]]
        if not asked or any(not g or min(g) < 0 or max(g) >= len(counts) for g in asked):
            raise ValueError("the withheld cells are out of range")
    # a group to test is a set of distinct cells of one row or column of the table (or of
    # all cells), at most one per row and column: no repeated cell can scale a count
    groups = table_groups(len(counts), _as_shape(json.loads(ctx.state.get("segments.shape"))))
    if len(asked) > len(groups) or any(
        len(set(g)) != len(g) or not any(set(g) <= set(row) for row in groups) for g in asked
    ):
        raise PolicyViolation(
            "min_cohort",
            "the label owner asked to test cells that are not distinct cells of one row or "
            "column: refusing",
        )
    seen = set(json.loads(ctx.state.get("segments.seen_withheld", "[]")))
    ctx.state.set(
        "segments.seen_withheld", json.dumps(sorted(seen | {c for g in asked for c in g}))
    )
    nsq = keys.public_key.nsquare
    totals = []
    for group in asked:
        total = counts.ciphertexts[group[0]]
        for i in group[1:]:
            total = total * counts.ciphertexts[i] % nsq
        totals.append(total)
    merged = type(counts)(tuple(totals), counts.value_bits + 8, 0)
    candidates = [
        [c for c in shuffled if c > 0]
        for shuffled in ss.cohort_candidates(len(asked), ctx.min_cohort)
    ]
    ctx.send_encrypted(
        ctx.label_owner, MERGED, keys, {"tests": keys.equality_tests(merged, candidates)}
    )


def _kept_counts(ctx: PartyContext, params: SegmentParams):  # type: ignore[no-untyped-def]
    from vfm_flower.paillier import PaillierContext

    public = ctx.state.get_bytes("segments.public_key")
    keys = PaillierContext.from_public_bytes(public, min_bits=ctx.agreement.min_paillier_bits)
    blob = ctx.state.get_bytes("segments.counts")
    return keys, keys.ciphertexts_from_bytes(blob, max_count=params.max_segments**2)


@STEPS.step(REVEAL, jobs=KINDS)
def holder_reveal(ctx: PartyContext) -> None:
    """``H``: the masks of the released cells (the LO's final list)."""
    raw = ctx.receive(ctx.label_owner, WITHHELD, round=int(ctx.server_params.get("decided", 1)))
    with ctx.decoding(ctx.label_owner, WITHHELD):
        decision = json.loads(raw)
        withheld = {int(i) for group in decision["withheld"] for i in group}
        if not decision.get("final"):
            raise ValueError("not the final list")
    seen = set(json.loads(ctx.state.get("segments.seen_withheld", "[]")))
    if not seen <= withheld:  # a cell once withheld stays withheld
        raise PolicyViolation(
            "min_cohort",
            "the label owner's final list releases cells it withheld before: refusing to "
            "reveal their masks",
        )
    masks = json.loads(ctx.state.get("segments.masks"))
    cells = len(masks["count"])
    released = [i for i in range(cells) if i not in withheld]
    payload = {
        "count": [masks["count"][i] for i in released],
        "sum": [masks["sum"][i] for i in released],
    }
    ctx.send(ctx.label_owner, MASKS, pack_payload({"masks": json.dumps(payload).encode()}))

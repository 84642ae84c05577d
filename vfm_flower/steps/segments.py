"""The ``segments`` job, party side: secure segment statistics (:mod:`vfm_flower.segment_stats`).

After alignment (membership hidden from the passive parties), with ``H`` the holder of the
segment column and ``G`` the holder of the target (the label owner, LO, by default):

- ``query.segment_encrypt`` (LO): encrypts, by the recipient's positions, 1 for each joint
  customer and 0 for every other row (``[[j]]``), with the target when the LO holds it
  (``[[j u]]``), for ``H`` or, if the target is another passive party's, for ``G``. When the
  LO holds the segment column itself it knows the cells: with its own target it computes the
  table here; with a passive target it sends one packed indicator vector per group of
  released cells (one lane per cell) to ``G``.
- ``query.segment_forward`` (``G``, a passive party other than ``H``): multiplies ``[[j]]`` by
  its target and sends both streams to ``H`` laid out by slot (fresh zeros in free slots).
- ``query.segment_sums`` (``H`` passive, or ``G`` for an LO segment): the per-value sums
  ``[[C_s]]``, ``[[S_s]]``; with noise, noised and sent; without, the minimum-cohort tests
  and the masked figures. ``G`` for an LO segment: the packed sums, noised if asked.
- ``query.segment_decide`` (LO): the cohort tests' answers; asks ``H`` to test a larger
  withheld group (``query.segment_merge``) until the withheld cells cover 0 or at least the
  minimum cohort; then asks for the masks of the released cells (``query.segment_reveal``)
  and writes the table (``query.segment_table``). With noise it writes the table at once.

A cross of two columns: two columns of one party are combined into one code; a partner's
column crossed with the LO's own makes the LO send one pair of streams per value of its
column (``count{a}``, ``sum{a}``), and the cells of each of its values form a group whose
withheld cells must cover 0 or at least the minimum cohort (the LO knows that group's
total). For a cross of two partners' columns the segment column's holder splits the streams
per value of its column (``query.segment_split``: by slot, its rows refreshed, fresh
encryptions of 0 elsewhere) for the cross column's holder, which sums them; the LO knows no
marginal then but the joint customers' total.

The partners' steps are in :mod:`vfm_flower.steps.segments_partners`. The LO publishes
``segment_next`` (``merge``, ``reveal`` or ``done``) for the server to drive
the rounds and ``segment_cells`` (how many cells were released), never a value.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from vfm_flower import segment_stats as ss
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.jobs_builtin import SEGMENTS_KIND, SegmentParams
from vfm_flower.overlap import segment_codes
from vfm_flower.party import StepRegistry
from vfm_flower.policy import table_groups
from vfm_flower.privacy import NoiseSpec

ENCRYPT = "query.segment_encrypt"
FORWARD = "query.segment_forward"
SUMS = "query.segment_sums"
DECIDE = "query.segment_decide"
MERGE = "query.segment_merge"
SPLIT = "query.segment_split"
REVEAL = "query.segment_reveal"
TABLE = "query.segment_table"

JOINT = Topic("segments.joint_vectors", phase=ENCRYPT)
SLOTS = Topic("segments.slot_vectors", phase=FORWARD)
SPLIT_SLOTS = Topic("segments.split_vectors", phase=SPLIT)
SPLIT_VALUES = Topic("segments.split_values", phase=SPLIT)
CELLS = Topic("segments.cell_sums", phase=SUMS)
WITHHELD = Topic("segments.withheld", phase=DECIDE)
MERGED = Topic("segments.merged_tests", phase=MERGE)
MASKS = Topic("segments.masks", phase=REVEAL)

REPORT = "segment-report"
KINDS = (SEGMENTS_KIND.name,)
STEPS = StepRegistry()


def _params(ctx: PartyContext) -> SegmentParams:
    return SegmentParams.from_job(ctx.job, ctx.label_owner)


def _encoding(params: SegmentParams) -> ss.TargetEncoding:
    return ss.TargetEncoding(params.target_min, params.target_max)


def _noise(params: SegmentParams) -> NoiseSpec | None:
    if not params.noised:
        return None
    return NoiseSpec(params.noise, params.epsilon, params.delta).halves()


def _target_is_label(ctx: PartyContext, params: SegmentParams) -> bool:
    return params.target_party == ctx.label_owner and not params.target_column


def _target_values(ctx: PartyContext, params: SegmentParams, frame: pd.DataFrame) -> np.ndarray:
    """The target holder's values of ``frame``'s rows (its label as 0/1, or a numeric column
    that must have a value in every row)."""
    if _target_is_label(ctx, params):
        return ctx.binary_labels().astype(np.float64)
    column = params.target_column
    ctx.check_columns([column])
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    missing = int(np.count_nonzero(~np.isfinite(values)))
    if missing:
        raise DataError(
            f"party '{ctx.party}': target column '{column}' has {missing} missing or "
            "non-numeric value(s): a target needs a value for every customer (fill them, e.g. "
            "0 spend, or choose another column)"
        )
    return values


def _codes_of(
    ctx: PartyContext, params: SegmentParams, frame: pd.DataFrame, party: str
) -> tuple[list[str], np.ndarray, tuple[int, int] | None]:
    """The values and per-row codes of ``party``'s columns among the job's (one column, or
    both of a cross, combined ``"a x b"``; one value with one code when it holds none), and
    the ``(rows, columns)`` shape when it holds both columns of a cross."""
    columns = [c for p, c in params.columns if p == party]
    if not columns:
        return [""], np.zeros(len(frame), dtype=np.int64), None
    ctx.check_columns(columns)
    values, codes = segment_codes(
        frame[columns[0]].tolist(),
        max_values=params.max_segments,
        party=ctx.party,
        column=columns[0],
    )
    shape = None
    for column in columns[1:]:
        more, extra = segment_codes(
            frame[column].tolist(), max_values=params.max_segments, party=ctx.party, column=column
        )
        shape = (len(values), len(more))
        values = [f"{a} \u00d7 {b}" for a in values for b in more]
        codes = codes * len(more) + extra
    return values, codes, shape


def _cell_names(
    params: SegmentParams, lo: str, lo_values: list[str], values: list[str]
) -> list[str]:
    """Names of the cells ``(LO value, partner value)`` in that order (LO-major), the
    segment column's value first in each name."""
    if lo_values == [""]:
        return list(values)
    lo_first = params.segment_party == lo
    return [f"{a} \u00d7 {b}" if lo_first else f"{b} \u00d7 {a}" for a in lo_values for b in values]


def _by_position(ctx: PartyContext, party: str, values: np.ndarray) -> np.ndarray:
    """The LO's joint-row values laid out by ``party``'s positions (0 elsewhere)."""
    layout = ctx.label_owner_layout()
    out = np.zeros(ctx.party_rows[party], dtype=object)
    out[layout.positions[party]] = list(values)
    return out


# ------------------------------------------------------------------------------ the LO


@STEPS.step(ENCRYPT, jobs=KINDS)
def label_owner_encrypt(ctx: PartyContext) -> None:
    params = _params(ctx)
    lo = ctx.label_owner
    for party in (params.segment_party, params.target_party, params.cross_party or lo):
        if party not in ctx.agreement.party_names:
            raise ProtocolAbort(ENCRYPT, ctx.party, f"'{party}' is not a party of the agreement")
    keys = ctx.paillier()
    holder = params.aggregator(lo)
    if holder is None:
        _label_owner_segments(ctx, params, keys)
        return
    frame = ctx.aligned_table()
    lo_values, lo_codes, _ = _codes_of(ctx, params, frame, lo)  # [""] without an LO column
    splitter = params.splitter(lo)
    first = splitter or holder  # the first partner of the chain, unless a target forwards
    target_party = params.target_party
    recipient = first if target_party in (lo, holder, splitter) else target_party
    vectors = {}
    target = None
    if params.target_party == lo:
        target, _ = _encoding(params).encode(_target_values(ctx, params, frame))
    for a in range(len(lo_values)):  # one pair of streams per value of the LO's column
        joint = (lo_codes == a).astype(np.int64)
        vectors[f"count{a}"] = keys.encrypt_integers(
            _by_position(ctx, recipient, joint), value_bits=1
        )
        if target is not None:
            vectors[f"sum{a}"] = keys.encrypt_integers(
                _by_position(ctx, recipient, joint * target),
                value_bits=_encoding(params).value_bits,
            )
    ctx.state.set("segments.lo_values", json.dumps(lo_values))
    ctx.send_encrypted(recipient, JOINT, keys, vectors, {"splits": len(lo_values)})
    ctx.publish(segment_next="sums")


def _label_owner_segments(ctx: PartyContext, params: SegmentParams, keys: Any) -> None:
    """The LO holds the segment column: it knows the cells of the joint customers."""
    frame = ctx.aligned_table()
    values, codes, shape = _codes_of(ctx, params, frame, ctx.label_owner)
    ctx.state.set("segments.shape", json.dumps(shape))
    counts = np.bincount(codes, minlength=len(values)).astype(np.float64)
    noise = _noise(params)
    if noise is not None:  # the LO's own counts, noised by the LO before any release
        counts = counts + np.array(ss.cell_noise(noise, 1, len(values)), dtype=np.float64)
    encoding = _encoding(params)
    if params.target_party == ctx.label_owner:
        target, _ = encoding.encode(_target_values(ctx, params, frame))
        sums = np.bincount(codes, weights=target, minlength=len(values)).astype(np.float64)
        if noise is not None:
            extra = ss.cell_noise(noise, encoding.sensitivity, len(values))
            sums = sums + np.array(extra, dtype=np.float64)
        _write_table(ctx, params, values, list(counts), list(sums), withheld=None)
        return
    # a passive target: one indicator vector per cell the minimum cohort releases
    released = [
        c["segment"]
        for c in ss.release_cells(
            values,
            list(counts),
            [0.0] * len(values),
            encoding=encoding,
            min_cohort=ctx.min_cohort,
            shape=shape,
        )
        if not c["suppressed"]
    ]
    vectors = {}
    for i, value in enumerate(released):
        indicator = (codes == values.index(value)).astype(np.int64)
        vectors[f"cell{i}"] = keys.encrypt_integers(
            _by_position(ctx, params.target_party, indicator), value_bits=1
        )
    ctx.state.set("segments.values", json.dumps(values))
    ctx.state.set("segments.released", json.dumps(released))
    ctx.state.set("segments.counts", json.dumps([float(c) for c in counts]))
    ctx.send_encrypted(params.target_party, JOINT, keys, vectors, {"cells": len(released)})
    ctx.publish(segment_next="sums")


@STEPS.step(DECIDE, jobs=KINDS)
def label_owner_decide(ctx: PartyContext) -> None:
    """The cohort tests' answers (or, with noise, the noised figures: the table at once)."""
    params = _params(ctx)
    holder = params.aggregator(ctx.label_owner)
    if ctx.round == 1:
        lo_values = json.loads(ctx.state.get("segments.lo_values"))
        cells_bound = params.max_segments**2
        keys, vectors, meta = ctx.receive_encrypted(
            holder, CELLS, max_count=cells_bound * max(ctx.min_cohort, 1)
        )
        with ctx.decoding(holder, CELLS):
            theirs = [str(v) for v in meta["values"]]
            if not 1 <= len(theirs) <= cells_bound or len(set(theirs)) != len(theirs):
                raise ValueError("distinct values, at most max-segments squared")
            values = _cell_names(params, ctx.label_owner, lo_values, theirs)
        if params.splitter(ctx.label_owner) is not None:  # a cross of two partners' columns
            raw = ctx.receive(params.splitter(ctx.label_owner), SPLIT_VALUES, round=1)
            with ctx.decoding(params.splitter(ctx.label_owner), SPLIT_VALUES):
                firsts = [str(v) for v in json.loads(raw)]
                if not 1 <= len(firsts) <= params.max_segments:
                    raise ValueError("at most max-segments values")
            values = [f"{a} \u00d7 {b}" for a in firsts for b in theirs]
        shape = _table_shape(params, ctx, lo_values, meta, values)
        ctx.state.set("segments.shape", json.dumps(shape))
        if params.noised:
            counts = keys.decrypt(vectors["count"])
            sums = keys.decrypt(vectors["sum"])
            _write_table(ctx, params, values, list(counts), list(sums), withheld=None)
            return
        tests = keys.decrypt_zeros(vectors["tests"]).reshape(len(values), ctx.min_cohort)
        failing = sorted(int(i) for i in np.flatnonzero(tests.any(axis=1)))
        ctx.state.set("segments.values", json.dumps(values))
        ctx.state.set_bytes(
            "segments.masked_count", keys.ciphertexts_to_bytes(vectors["masked_count"])
        )
        ctx.state.set_bytes("segments.masked_sum", keys.ciphertexts_to_bytes(vectors["masked_sum"]))
        ctx.state.set("segments.failing", json.dumps(failing))
        withheld = set(failing)
        passed: dict[str, list[int]] = {}
    else:
        values = json.loads(ctx.state.get("segments.values"))
        shape = _as_shape(json.loads(ctx.state.get("segments.shape")))
        withheld = set(json.loads(ctx.state.get("segments.withheld")))
        passed = json.loads(ctx.state.get("segments.passed"))
        asked = json.loads(ctx.state.get("segments.asked"))
        keys, vectors, _ = ctx.receive_encrypted(
            holder, MERGED, max_count=len(asked) * ctx.min_cohort
        )
        answers = keys.decrypt_zeros(vectors["tests"])
        with ctx.decoding(holder, MERGED):
            if len(answers) != len(asked) * (ctx.min_cohort - 1):
                raise ValueError("one test per candidate of every group asked")
        per_group = answers.reshape(len(asked), ctx.min_cohort - 1)
        groups = table_groups(len(values), shape)
        for (g, cells), zero in zip(asked, per_group, strict=True):
            if zero.any():  # 0 < the group's withheld cells < k: withhold one more of it
                rest = [c for c in groups[g] if c not in withheld]
                withheld.update(rest[:1])
            else:
                passed[str(g)] = cells
    # every row and column of a cross (else all cells) must have its withheld cells cover 0
    # or at least k: test the groups whose withheld cells changed since they last passed
    groups = table_groups(len(values), shape)
    ask = []
    for g, group in enumerate(groups):
        hidden = sorted(c for c in group if c in withheld)
        if hidden and len(hidden) < len(group) and passed.get(str(g)) != hidden:
            ask.append([g, hidden])
    ctx.state.set("segments.withheld", json.dumps(sorted(withheld)))
    ctx.state.set("segments.passed", json.dumps(passed))
    ctx.state.set("segments.asked", json.dumps(ask))
    if ask:
        ctx.send(holder, WITHHELD, json.dumps({"withheld": [h for _, h in ask]}).encode())
        ctx.publish(segment_next="merge")
        return
    flat = sorted(withheld)
    released = [i for i in range(len(values)) if i not in flat]
    if not released:
        _write_table(ctx, params, values, [None] * len(values), [None] * len(values), flat)
        return
    ctx.send(holder, WITHHELD, json.dumps({"withheld": [flat], "final": True}).encode())
    ctx.publish(segment_next="reveal")


def _as_shape(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def _table_shape(
    params: SegmentParams, ctx: PartyContext, lo_values: list[str], meta: dict, values: list[str]
) -> tuple[int, int] | None:
    """The cross table's shape as the LO knows it: its own values x the partner's, the
    splitter's x the aggregator's, or the aggregator's two columns (its ``shape``)."""
    if not params.cross_party:
        return None
    if lo_values != [""]:
        return (len(lo_values), len(values) // len(lo_values))
    holder = params.aggregator(ctx.label_owner)
    with ctx.decoding(holder, CELLS):
        shape = _as_shape(meta["shape"])
        if shape is None or shape[0] * shape[1] != len(values):
            raise ValueError("the cross table's shape does not match its cells")
    return shape


@STEPS.step(TABLE, jobs=KINDS)
def label_owner_table(ctx: PartyContext) -> None:
    """The exact figures of the released cells (masks removed), or the packed sums."""
    params = _params(ctx)
    keys = ctx.paillier()
    if params.aggregator(ctx.label_owner) is None:
        target = params.target_party
        values = json.loads(ctx.state.get("segments.values"))
        released = json.loads(ctx.state.get("segments.released"))
        counts = json.loads(ctx.state.get("segments.counts"))
        _, vectors, _ = ctx.receive_encrypted(target, CELLS, max_count=len(released) or 1)
        with ctx.decoding(target, CELLS):
            cell_sums = keys.decrypt(vectors["sums"]) if released else []
            if len(cell_sums) != len(released):
                raise ValueError("one sum per released cell expected")
        sums_of = {v: float(x) for v, x in zip(released, cell_sums, strict=True)}
        sums = [sums_of.get(v) for v in values]
        # the same counts decide the same cells again (with the reasons)
        _write_table(ctx, params, values, counts, sums, None)
        return
    holder = params.aggregator(ctx.label_owner)
    values = json.loads(ctx.state.get("segments.values"))
    withheld = sorted(json.loads(ctx.state.get("segments.withheld")))
    released = [i for i in range(len(values)) if i not in withheld]
    arrays, _ = ctx.receive_arrays(holder, MASKS)
    with ctx.decoding(holder, MASKS):
        count_masks = [int(x) for x in json.loads(arrays["masks"].tobytes())["count"]]
        sum_masks = [int(x) for x in json.loads(arrays["masks"].tobytes())["sum"]]
        if len(count_masks) != len(released) or len(sum_masks) != len(released):
            raise ValueError("one pair of masks per released cell")
    width = len(values)
    masked_c = keys.decrypt(
        keys.ciphertexts_from_bytes(ctx.state.get_bytes("segments.masked_count"), max_count=width)
    )
    masked_s = keys.decrypt(
        keys.ciphertexts_from_bytes(ctx.state.get_bytes("segments.masked_sum"), max_count=width)
    )
    counts: list[float | None] = [None] * width
    sums: list[float | None] = [None] * width
    for i, cm, sm in zip(released, count_masks, sum_masks, strict=True):
        counts[i] = float(int(masked_c[i]) - cm)
        sums[i] = float(int(masked_s[i]) - sm)
    _write_table(ctx, params, values, counts, sums, withheld)


def _write_table(
    ctx: PartyContext,
    params: SegmentParams,
    values: list[str],
    counts: list[Any],
    sums: list[Any],
    withheld: list[int] | None,
) -> None:
    from vfm_flower.report_segments import build_segment_report

    failing = ctx.state.get("segments.failing")
    cells = ss.release_cells(
        values,
        counts,
        sums,
        encoding=_encoding(params),
        min_cohort=ctx.min_cohort,
        withheld=withheld,
        failing=json.loads(failing) if failing else (withheld or ()),
        binary=_target_is_label(ctx, params),
        shape=_as_shape(json.loads(ctx.state.get("segments.shape", "null"))),
    )
    report = build_segment_report(cells, params, ctx.agreement, ctx.job)
    ctx.deliver(REPORT, json.dumps(report, sort_keys=True).encode())
    ctx.publish(segment_cells=sum(1 for c in cells if not c["suppressed"]), segment_next="done")


@STEPS.receiver(REPORT, jobs=KINDS)
def receive_segment_report(ctx: PartyContext, payload: bytes) -> None:
    """Result owner: write ``segments.json`` and ``segments.html`` in its work dir."""
    from vfm_flower.report_segments import write_segment_report

    with ctx.decoding(ctx.label_owner, REPORT):
        report = json.loads(payload)
    write_segment_report(report, ctx.work_dir)

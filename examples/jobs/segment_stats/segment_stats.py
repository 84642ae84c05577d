"""Secure segment statistics, written as a Flower team would, on vfm-flower's public API.

The label owner learns, for each value of one passive party's categorical column, how many
joint customers have it and their conversion rate; values with fewer customers than the
agreement's minimum cohort are withheld. The column's holder sees only Paillier ciphertexts of
the labels (it learns nothing about them); the server relays envelopes and learns the number
of released cells.

Steps, after alignment (3 rounds up to 2**20 ids a set):
1. ``query.encrypt_labels`` (label owner): encrypt the 0/1 labels of the joint rows;
2. ``query.segment_sums`` (the column's holder): per value, the count and the homomorphic sum
   of the encrypted labels (cells under the minimum cohort are not sent);
3. ``query.segment_table`` (label owner): decrypt the sums, check every cell's size again,
   keep or deliver the table to the result owner.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.serverapp import ServerApp

from vfm_flower import (
    JobKind,
    ParamSpec,
    PartyContext,
    ProtocolAbort,
    Topic,
    VerticalClientApp,
    vertical_session,
)

SEGMENT_STATS = JobKind(
    name="segment_stats",
    operations=("run",),
    params=(
        ParamSpec("party", str, "bank", help="the party holding the segment column"),
        ParamSpec("column", str, "segment", help="the categorical column"),
        ParamSpec("paillier-bits", int, 2048, (2048, 8192)),
    ),
    releases={"server": ("cells",), "result-owner": ("segments",)},
    uses_paillier=True,
    membership="revealed",  # passive parties learn which of their customers are joint
)
LABELS = Topic("stats.encrypted_labels", phase="query.encrypt_labels")
SUMS = Topic("stats.segment_sums", phase="query.segment_sums")

client = VerticalClientApp(jobs=[SEGMENT_STATS])
server = ServerApp()


@client.step("query.encrypt_labels")
def encrypt_labels(ctx: PartyContext) -> None:
    keys = ctx.paillier()
    labels = keys.encrypt_integers(ctx.binary_labels(), value_bits=1)
    ctx.send_encrypted(ctx.job["party"], LABELS, keys, {"labels": labels})


@client.step("query.segment_sums")
def segment_sums(ctx: PartyContext) -> None:
    column, rows = ctx.job["column"], len(ctx.aligned_rows())
    ctx.check_columns([column])
    keys, received, _ = ctx.receive_encrypted(ctx.label_owner, LABELS, max_count=rows)
    if len(received["labels"]) != rows:
        raise ProtocolAbort(ctx.kind, ctx.party, "one encrypted label per joint row expected")
    values, groups, counts = group_rows(ctx.aligned_table()[column], ctx.min_cohort)
    sums = keys.grouped_sum(received["labels"], groups, len(values))
    meta = {"values": values, "counts": counts, "withheld": int((groups < 0).sum())}
    ctx.send_encrypted(ctx.label_owner, SUMS, keys, {"sums": sums}, meta)


@client.step("query.segment_table")
def segment_table(ctx: PartyContext) -> None:
    keys, received, meta = ctx.receive_encrypted(ctx.job["party"], SUMS, max_count=10_000)
    sums, table = keys.decrypt(received["sums"]), []
    for value, count, positives in zip(meta["values"], meta["counts"], sums, strict=True):
        ctx.check_cohort(int(count), f"segment {value!r}")  # the holder could have cheated
        table.append({"value": value, "count": int(count), "rate": int(positives) / int(count)})
    result = {"column": ctx.job["column"], "cells": table, "withheld_rows": meta["withheld"]}
    ctx.deliver("segments", json.dumps(result).encode())
    ctx.publish(cells=len(table))


@server.main()
def main(grid, context) -> None:
    job = SEGMENT_STATS.bind_config(context.run_config, "run")
    with vertical_session(grid, context, job, job_kind=SEGMENT_STATS) as session:
        session.align()
        session.send("query.encrypt_labels", to=[session.label_owner])
        session.send("query.segment_sums", to=[job["party"]])
        table = session.send("query.segment_table", to=[session.label_owner])
        session.publish(**table[session.label_owner].public)


# --------------------------------------------------------------------------- plain helpers
def group_rows(values, min_cohort: int) -> tuple[list[str], np.ndarray, list[int]]:
    """Values with at least ``min_cohort`` rows, each row's group (-1: withheld), counts."""
    text = values.astype(str).to_numpy()
    levels, index, counts = np.unique(text, return_inverse=True, return_counts=True)
    kept = np.flatnonzero(counts >= min_cohort)
    group_of_level = np.full(len(levels), -1)
    group_of_level[kept] = np.arange(len(kept))
    return [str(v) for v in levels[kept]], group_of_level[index], [int(c) for c in counts[kept]]

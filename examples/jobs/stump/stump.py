"""A vertical decision stump, a model vfm-flower does not ship, on the public step API.

One split over every party's numeric columns, for the label owner's 0/1 label (squared loss
on ``g = y - mean(y)``, the first tree of a boosted model). The label owner encrypts ``g``;
each passive party bins its own columns into quantile bins and returns, per bin, the
encrypted sum of ``g`` and the bin's count; the label owner decrypts, finds the best split
over all parties (its own columns in the clear) with both leaves of at least the minimum
cohort, and tells each passive party whether the split is its own. Only the split's owner
knows its threshold; the label owner (the result owner) gets the stump: owner, leaf values,
and the column name only when the split is its own.

Who learns what: a passive party sees ciphertexts only (nothing about the labels); the label
owner learns per-bin label sums and counts of the passive columns (the SecureBoost leakage:
bin cohorts, never a threshold or a value); the server learns that one split was made.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.serverapp import ServerApp

from vfm_flower import (
    DataError,
    JobKind,
    ParamSpec,
    PartyContext,
    Topic,
    VerticalClientApp,
    vertical_session,
)

STUMP = JobKind(
    name="stump",
    operations=("train",),
    params=(ParamSpec("bins", int, 16, (2, 64)), ParamSpec("paillier-bits", int, 2048)),
    releases={"server": ("splits",), "result-owner": ("stump",), "party": ("stump-split",)},
    uses_paillier=True,
    membership="revealed",  # passive parties learn which of their customers are joint
)
GRADIENTS = Topic("stump.encrypted_gradients", phase="train.stump_gradients")
HISTOGRAMS = Topic("stump.histograms", phase="train.stump_histograms")
DECISION = Topic("stump.decision", phase="train.stump_split")

client = VerticalClientApp(jobs=[STUMP])
server = ServerApp()


@client.step("train.stump_gradients")
def encrypt_gradients(ctx: PartyContext) -> None:
    keys, y = ctx.paillier(), ctx.binary_labels().astype(float)
    g = keys.encrypt(y - y.mean(), bound=1.0)
    for peer in ctx.passive_parties:
        ctx.send_encrypted(peer, GRADIENTS, keys, {"g": g})


@client.step("train.stump_histograms")
def encrypted_histograms(ctx: PartyContext) -> None:
    rows = len(ctx.aligned_rows())
    keys, received, _ = ctx.receive_encrypted(ctx.label_owner, GRADIENTS, max_count=rows)
    cuts, groups = bin_columns(ctx.aligned_table(), numeric_columns(ctx), ctx.job["bins"])
    ctx.state.set("cuts", json.dumps(cuts))
    sums = {c: keys.grouped_sum(received["g"], groups[c], len(cuts[c]) + 1) for c in cuts}
    meta = {"counts": bin_counts(cuts, groups)}
    ctx.send_encrypted(ctx.label_owner, HISTOGRAMS, keys, sums, meta)


@client.step("train.stump_split")
def choose_split(ctx: PartyContext) -> None:
    y = ctx.binary_labels().astype(float)
    cuts, groups = bin_columns(ctx.aligned_table(), numeric_columns(ctx), ctx.job["bins"])
    candidates = plain_histograms(ctx.party, cuts, groups, y - y.mean())
    for peer in ctx.passive_parties:
        keys, sums, meta = ctx.receive_encrypted(peer, HISTOGRAMS, max_count=65)
        for column, counts in meta["counts"].items():
            candidates.append(checked_histogram(peer, column, keys.decrypt(sums[column]), counts))
    _, owner, *cut, left, right = best_split(candidates, ctx.min_cohort, y.mean())
    for peer in ctx.passive_parties:
        decision = {"column": cut[0], "cut": cut[1]} if peer == owner else {}
        ctx.send(peer, DECISION, json.dumps(decision).encode().ljust(256))  # one size for all
    stump = {"owner": owner, "left": left, "right": right} | own_split(ctx, owner, cuts, cut)
    ctx.deliver("stump", json.dumps(stump).encode())
    ctx.publish(splits=1)


@client.step("train.stump_finish")
def keep_threshold(ctx: PartyContext) -> None:
    decision = json.loads(ctx.receive(ctx.label_owner, DECISION))
    if decision:
        threshold = json.loads(str(ctx.state.get("cuts")))[decision["column"]][decision["cut"]]
        ctx.save_artifact("stump-split", {}, {"column": decision["column"], "threshold": threshold})


@server.main()
def main(grid, context) -> None:
    job = STUMP.bind_config(context.run_config, "train")
    with vertical_session(grid, context, job, job_kind=STUMP) as session:
        session.align()
        session.send("train.stump_gradients", to=[session.label_owner])
        session.send("train.stump_histograms", to=session.passive_parties)
        split = session.send("train.stump_split", to=[session.label_owner])
        session.send("train.stump_finish", to=session.passive_parties)
        session.publish(**split[session.label_owner].public)


# --------------------------------------------------------------------------- model math
def numeric_columns(ctx: PartyContext) -> list[str]:
    table = ctx.aligned_table()
    return [c for c in ctx.feature_columns() if np.issubdtype(table[c].dtype, np.number)]


def quantile_bins(values, bins: int) -> tuple[list[float], np.ndarray]:
    """Cut points at the quantiles (distinct, finite) and each row's bin (0..len(cuts))."""
    x = values.to_numpy(dtype=float)
    x = np.where(np.isfinite(x), x, np.nanmedian(x))
    cuts = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(c) for c in cuts], np.searchsorted(cuts, x, side="right")


def checked_histogram(peer: str, column: str, sums, counts) -> tuple:
    """A passive party's decrypted histogram, refused unless every bin has a count."""
    if len(sums) != len(counts) or min(counts, default=-1) < 0 or len(counts) < 2:
        raise DataError(f"party '{peer}': histogram of {column!r} does not match its counts")
    return peer, column, sums, counts


def own_split(ctx: PartyContext, owner: str, cuts: dict, cut: tuple[str, int]) -> dict:
    """The column and threshold of a split: known to its owner only."""
    column, index = cut
    return {"column": column, "threshold": cuts[column][index]} if owner == ctx.party else {}


def bin_counts(cuts: dict, groups: dict) -> dict[str, list[int]]:
    return {c: np.bincount(groups[c], minlength=len(cuts[c]) + 1).tolist() for c in cuts}


def plain_histograms(party: str, cuts: dict, groups: dict, g: np.ndarray) -> list:
    """The label owner's own columns: per-bin gradient sums and counts, in the clear."""
    counts = bin_counts(cuts, groups)
    return [(party, c, np.bincount(groups[c], g, len(cuts[c]) + 1), counts[c]) for c in cuts]


def bin_columns(table, columns: list[str], bins: int) -> tuple[dict, dict]:
    """Quantile cut points and every row's bin, per column."""
    cuts, groups = {}, {}
    for column in columns:
        cuts[column], groups[column] = quantile_bins(table[column], bins)
    return cuts, groups


def best_split(candidates, min_leaf: int, base: float):
    """The split of largest squared-loss gain with both leaves >= ``min_leaf`` rows."""
    best = (-1.0, None, None, None, None, None)
    for owner, column, sums, counts in candidates:
        sums, counts = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
        total_n, left_g, left_n = counts.sum(), np.cumsum(sums)[:-1], np.cumsum(counts)[:-1]
        for cut, (g, n) in enumerate(zip(left_g, left_n)):
            if n < min_leaf or total_n - n < min_leaf:
                continue
            gain = g * g * (1.0 / n + 1.0 / (total_n - n))
            if gain > best[0] + 1e-12:
                best = (gain, owner, column, cut, base + g / n, base - g / (total_n - n))
    if best[1] is None:
        raise DataError("no split leaves both sides with at least the minimum cohort")
    return best

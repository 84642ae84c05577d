"""The ``secureboost`` job kind, party side: vertical gradient-boosted trees, four rounds a level.

Rounds (``s`` = the server's step counter; every envelope is opened at step ``s + 1`` with
``round = s``, so a replayed or skipped message is refused by the envelope layer, and every
payload names its tree and level, which the receiver checks against its own count):

``train.tree_prepare`` (every party, once)
    Prepare the allowed columns (on all its rows for a passive party, which does not know
    which are joint; the preparation drops a constant column with a warning naming it, and a
    party left with none is refused) and bin each into quantile bins on its own data (a
    one-hot level that never occurs is skipped). A passive party sends the label owner (LO)
    its column count. The LO
    encodes its labels (0/1, class indices, or a numeric target), draws the hold-out split
    (fixed per agreement), generates its Paillier key, starts the first tree and sends every
    passive party the level's ciphertexts by slot.
``train.tree_histograms`` (passive parties) with ``train.tree_precompute`` (LO)
    The encrypted, compressed histograms of its columns (:func:`vfm_flower.secureboost.
    passive_histograms`); meanwhile the LO computes the next level's encryption randomness.
``train.tree_decide`` (LO)
    Decrypt, add its own plain histograms, pick the best split of every node
    (:class:`vfm_flower.tree_growth.RoundGrowth`) and send every passive party its split
    requests (possibly none).
``train.tree_partition`` (passive parties) with ``train.tree_precompute`` (LO)
    Record each requested split (column and threshold, its own secret) and answer the side
    of each of its rows by slot.
``train.tree_advance`` (LO)
    Route the rows; send the next level's ciphertexts, or end the tree (leaf values, hold-out
    loss, early stopping) and start the next one; publish whether training stops.
``train.tree_evaluate`` (LO), then ``train.tree_finish`` (passive parties)
    The LO computes the hold-out metrics and publishes those the agreement releases, builds
    the report and tells each passive party which of its splits the model keeps; each party
    saves its own part of the model (``tree-model``) and its own features' importance
    (:mod:`vfm_flower.steps.trees_model`).

What crosses: see :mod:`vfm_flower.secureboost`. The server relays sealed envelopes and
learns sizes, timing, the stop decision and the released metrics.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from vfm_flower import paillier
from vfm_flower import secureboost as sb
from vfm_flower.codec import pack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.jobs_builtin import SecureBoostParams
from vfm_flower.party import StepRegistry
from vfm_flower.preparation import encode_labels
from vfm_flower.steps.training import (
    agreement_holdout_seed,
    ciphertext_array,
    precomputed_encryptor,
    public_key,
    received_block_shapes,
    send_block_shape,
)
from vfm_flower.tree_growth import RoundGrowth, growth_from_payload, growth_to_payload
from vfm_flower.tree_model import SplitTable, TreeEnsemble
from vfm_flower.trees import (
    bin_codes,
    objective_for,
    quantile_bin_edges,
    quantize_gradients,
)

logger = logging.getLogger(__name__)

KIND = "secureboost"
TRAINING = ("evaluate", "train")
MODEL = "tree-model"

TOPIC_SHAPE = Topic("trees.shape", phase="train.tree_prepare")
TOPIC_FIRST_LEVEL = Topic("trees.level_start", phase="train.tree_prepare")
TOPIC_LEVEL = Topic("trees.level", phase="train.tree_advance")
TOPIC_HISTOGRAMS = Topic("trees.histogram_sums", phase="train.tree_histograms")
TOPIC_REQUESTS = Topic("trees.requests", phase="train.tree_decide")
TOPIC_PARTITIONS = Topic("trees.partitions", phase="train.tree_partition")

#: Party state key of the LO's encryption randomness for the next level (secret, used once).
OBFUSCATORS = "sb.obfuscators"

STEPS = StepRegistry()


# --------------------------------------------------------------------------- helpers
def params_of(ctx: PartyContext) -> SecureBoostParams:
    return SecureBoostParams.from_job(ctx.job)


def min_node_rows(ctx: PartyContext) -> int:
    """The fewest training customers of a node the trees split: the job's ``min-node-rows``,
    never below the agreement's minimum cohort."""
    return max(params_of(ctx).min_node_rows, ctx.min_cohort)


def tree_columns(X: np.ndarray, names: list[str], sources: list[str], party: str, bins: int):
    """Bin edges of the prepared columns a tree can split on, and their indices.

    One-hot levels that never occur are dropped; a source column whose every prepared column
    is constant is refused (a tree cannot split on it)."""
    edges, keep = [], []
    by_source: dict[str, list[int]] = {}
    for j, source in enumerate(sources):
        by_source.setdefault(source, []).append(j)
    for source, cols in by_source.items():
        usable = [j for j in cols if np.unique(X[:, j]).size > 1]
        if not usable:
            raise DataError(
                f"party '{party}': column '{source}' is constant on its rows: a tree cannot "
                "split on it (drop it from the job's features)"
            )
        for j in usable:
            edges.append(quantile_bin_edges(X[:, j], bins, name=f"column '{names[j]}'"))
            keep.append(j)
    return edges, np.array(keep, dtype=np.int64)


def _source_of(plan) -> tuple[list[str], list[str]]:
    names, sources = [], []
    for column in plan.columns:
        for f in column.feature_names:
            names.append(f)
            sources.append(column.name)
    return names, sources


def _edges_to_state(ctx: PartyContext, edges: list[np.ndarray]) -> None:
    ctx.state.set("sb.edge_counts", json.dumps([int(len(e)) for e in edges]))
    ctx.state.set_array("sb.edges", np.concatenate(edges) if edges else np.zeros(0))


def _edges_from_state(ctx: PartyContext) -> list[np.ndarray]:
    counts = json.loads(str(ctx.state.get("sb.edge_counts")))
    flat = ctx.state.array("sb.edges")
    cuts = np.cumsum([0, *counts])
    return [flat[cuts[i] : cuts[i + 1]] for i in range(len(counts))]


def _labels(ctx: PartyContext, objective: str, classes: int) -> tuple[np.ndarray, list[str]]:
    labels = ctx.labels()
    if objective == "binary":
        return encode_labels(labels, ctx.agreement.positive_class, party=ctx.party), []
    if objective == "squared_error":
        y = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=np.float64)
        bad = int((~np.isfinite(y)).sum())
        if bad:
            raise DataError(
                f"party '{ctx.party}': {bad} target value(s) are missing or not numbers"
            )
        return y, []
    if labels.isna().any():
        raise DataError(f"party '{ctx.party}': {int(labels.isna().sum())} label(s) are missing")
    values = labels.astype(str)
    names = sorted(values.unique().tolist())
    if len(names) != classes:
        raise DataError(
            f"party '{ctx.party}': the labels hold {len(names)} classes, the job says "
            f"classes = {classes}: set classes to {len(names)}"
        )
    index = {n: i for i, n in enumerate(names)}
    return values.map(index).to_numpy(dtype=np.float64), names


# --------------------------------------------------------------------------- prepare
@STEPS.step("train.tree_prepare", jobs=(KIND,), operations=TRAINING)
def every_party_prepare(ctx: PartyContext) -> None:
    """Prepare and bin own columns; LO: labels, split, key, the first level's ciphertexts."""
    params = params_of(ctx)
    bins = params.boosting.n_bins
    X, plan = ctx.prepared_features(junk_threshold=params.junk_threshold)
    if X.shape[1] == 0:
        raise DataError(f"party '{ctx.party}' has no feature column for this job")
    names, sources = _source_of(plan)
    edges, keep = tree_columns(X, names, sources, ctx.party, bins)
    codes = bin_codes(X[:, keep], edges)
    ctx.state.set("prep_plan", plan.to_json())
    ctx.state.set("sb.names", json.dumps([names[j] for j in keep.tolist()]))
    ctx.state.set_array("sb.keep", keep)
    ctx.state.set_array("sb.codes", codes)
    _edges_to_state(ctx, edges)
    facts = {"rows": int(X.shape[0]), "features": int(codes.shape[1])}
    if not ctx.is_label_owner:
        send_block_shape(ctx, TOPIC_SHAPE, *codes.shape)
        ctx.state.set("sb.tree", 0)
        ctx.state.set("sb.level", 0)
        ctx.state.set("sb.splits", json.dumps(SplitTable().to_state()))
        ctx.publish(**facts)
        return
    if not ctx.passive_parties:
        raise ProtocolAbort(ctx.kind, ctx.party, "secureboost needs at least one passive party")
    boosting = params.boosting
    objective = objective_for(boosting)
    y, class_names = _labels(ctx, boosting.objective, boosting.n_classes)
    y = objective.check_labels(y, boosting)
    rows = ctx.rows()
    from vfm_flower.model_label_owner import holdout_split

    by_own_row = np.argsort(rows, kind="stable")
    holdout = np.empty(len(y), dtype=bool)
    holdout[by_own_row] = holdout_split(
        len(y),
        params.holdout_fraction,
        stratify=y[by_own_row] if boosting.objective != "squared_error" else None,
        seed=params.holdout_seed or agreement_holdout_seed(ctx.agreement.agreement_id),
    )
    ctx.check_cohort(int(holdout.sum()), "hold-out rows")
    ctx.check_cohort(int((~holdout).sum()), "training rows")
    bits = max(params.paillier_bits, ctx.agreement.min_paillier_bits)
    public, private = paillier.generate_paillier_keypair(bits)
    ctx.state.set_bytes("paillier.private", paillier.private_key_to_bytes(private))
    ctx.state.set_bytes("paillier.public", paillier.public_key_to_bytes(public))
    base = objective.base_margin(y[~holdout], boosting)
    ctx.state.set_array("sb.y", np.asarray(y, dtype=np.float64))
    ctx.state.set_array("sb.holdout", holdout)
    ctx.state.set_array("sb.margins", np.tile(base, (len(y), 1)))
    ctx.state.set("sb.classes", json.dumps(class_names))
    model = TreeEnsemble(boosting.objective, base.tolist())
    ctx.state.set("sb.model", json.dumps(model.to_state()))
    ctx.state.set("sb.splits", json.dumps(SplitTable().to_state()))
    ctx.state.set("sb.history", json.dumps([]))
    ctx.state.set("sb.tree", 0)
    facts.update(
        joint_rows=int(len(y)),
        holdout_rows=int(holdout.sum()),
        training_rows=int((~holdout).sum()),
        paillier_bits=bits,
    )
    growth = _start_tree(ctx, 0)
    _send_level(ctx, growth, TOPIC_FIRST_LEVEL, tree=0)
    ctx.publish(**facts)


def _start_tree(ctx: PartyContext, tree: int) -> RoundGrowth:
    """LO: the gradients of tree ``tree`` at the current margins, and its growth state."""
    params = params_of(ctx).boosting
    objective = objective_for(params)
    y = ctx.state.array("sb.y")
    if params.objective == "multiclass":
        y = y.astype(np.int64)
    holdout = ctx.state.array("sb.holdout").astype(bool)
    margins = ctx.state.array("sb.margins")
    # row and column sampling: OS randomness (the draws are the LO's own)
    rng = np.random.default_rng()
    train = ~holdout
    if params.subsample < 1.0:
        train &= rng.random(len(y)) < params.subsample
    g, h = objective.gradients(margins, y)
    g[~train] = 0.0
    h[~train] = 0.0
    g_int, h_int, scale = quantize_gradients(g, h)
    own = ctx.state.array("sb.codes")
    growth = RoundGrowth(
        params,
        g_int,
        h_int,
        scale,
        train,
        parties=[ctx.party, *ctx.passive_parties],
        label_owner=ctx.party,
        own_codes=own,
        min_node_rows=min_node_rows(ctx),
    )
    ctx.state.set("sb.level", 0)
    return growth


def draw_columns(ctx: PartyContext, growth: RoundGrowth) -> None:
    """LO, at a tree's first decision: the columns of every party the tree may split on
    (``colsample``; OS randomness, the draw is the LO's own). Here, not when the tree starts:
    the first tree starts before the passive parties' column counts have arrived."""
    params = params_of(ctx).boosting
    if params.colsample >= 1.0 or growth.level != 0 or growth.allowed:
        return
    rng = np.random.default_rng()
    counts = {ctx.party: growth.own_codes.shape[1], **_passive_columns(ctx)}
    for party, m in counts.items():
        keep = np.zeros(m, dtype=bool)
        keep[rng.choice(m, max(1, int(round(params.colsample * m))), replace=False)] = True
        growth.allowed[party] = keep


def _passive_columns(ctx: PartyContext) -> dict[str, int]:
    """LO: each passive party's column count, sealed to it at ``train.tree_prepare``."""
    return received_block_shapes(ctx, TOPIC_SHAPE, "sb.columns")


def _send_level(ctx: PartyContext, growth: RoundGrowth, topic: Topic, *, tree: int) -> None:
    """LO: encrypt this level's packed gradients by slot and seal them to every passive party."""
    public = public_key(ctx)
    private = paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))
    layout = ctx.label_owner_layout()
    L = int(layout.total_slots)
    hl = sb.histogram_layout(public.n.bit_length(), L, growth.padded_pairs)
    plain = sb.encode_level(
        growth.g_int, growth.h_int, growth.pair_of_rows(), layout.joint_slots, hl, L
    )
    encryptor = precomputed_encryptor(ctx, public, private, key=OBFUSCATORS)
    cts = [c for chunk in plain for c in encryptor.encrypt_ints(chunk)]
    meta = {"tree": tree, "level": growth.level, "pairs": growth.padded_pairs, "slots": L}
    payload = pack_payload(
        {
            "ciphertexts": ciphertext_array(cts, public),
            "public_key": np.frombuffer(ctx.state.get_bytes("paillier.public"), np.uint8),
        },
        meta,
    )
    for peer in ctx.passive_parties:
        ctx.send(peer, topic, payload)
    ctx.state.set_bytes("sb.growth", growth_to_payload(growth))


def _load_growth(ctx: PartyContext) -> RoundGrowth:
    return growth_from_payload(
        ctx.state.get_bytes("sb.growth"), params_of(ctx).boosting, ctx.state.array("sb.codes")
    )


# --------------------------------------------------------------------------- passive rounds
def _expect(ctx: PartyContext, peer: str, topic: Topic, meta: dict, **want: int) -> None:
    for key, value in want.items():
        if int(meta.get(key, -1)) != int(value):
            raise ProtocolAbort(
                ctx.kind,
                ctx.party,
                f"'{peer}' sent {topic.name} for {key} {meta.get(key)}, this party is at {value}",
            )


@STEPS.step("train.tree_histograms", jobs=(KIND,), operations=TRAINING)
def passive_histograms(ctx: PartyContext) -> None:
    """Passive party: the encrypted histograms of its columns for the level it was sent."""
    params = params_of(ctx).boosting
    tree, level = int(ctx.state.get("sb.tree")), int(ctx.state.get("sb.level"))
    topic = TOPIC_FIRST_LEVEL if ctx.round == 1 else TOPIC_LEVEL
    arrays, meta = ctx.receive_arrays(ctx.label_owner, topic, round=ctx.round - 1)
    layout = ctx.passive_layout()
    L = int(layout.total_slots)
    pairs = params.n_outputs * (1 << max(level - 1, 0))
    _expect(ctx, ctx.label_owner, topic, meta, tree=tree, level=level, pairs=pairs, slots=L)
    with ctx.decoding(ctx.label_owner, topic):
        key = arrays["public_key"].tobytes()
        if "paillier.public" not in ctx.state:
            paillier.public_key_from_bytes(key, min_bits=ctx.agreement.min_paillier_bits)
            ctx.state.set_bytes("paillier.public", key)
        elif key != ctx.state.get_bytes("paillier.public"):
            raise ValueError("the label owner's Paillier key changed during the job")
        public = public_key(ctx)
        hl = sb.histogram_layout(public.n.bit_length(), L, pairs)
        flat = paillier.ciphertexts_from_bytes(
            arrays["ciphertexts"].tobytes(), public, hl.chunks * L
        )
    chunks = [flat[c * L : (c + 1) * L] for c in range(hl.chunks)]
    hist = sb.passive_histograms(
        public.n, chunks, layout.slot_of_row, ctx.state.array("sb.codes"), params.n_bins, hl
    )
    counts = [len(c) for c in hist.ciphertexts]
    payload = pack_payload(
        {"ciphertexts": ciphertext_array([c for ch in hist.ciphertexts for c in ch], public)},
        {
            "tree": tree,
            "level": level,
            "columns": hist.columns,
            "bins": hist.bins,
            "counts": counts,
        },
    )
    ctx.send(ctx.label_owner, TOPIC_HISTOGRAMS, payload)


@STEPS.step("train.tree_partition", jobs=(KIND,), operations=TRAINING)
def passive_partition(ctx: PartyContext) -> None:
    """Passive party: record the splits the LO chose among its bins; answer their sides."""
    tree, level = int(ctx.state.get("sb.tree")), int(ctx.state.get("sb.level"))
    arrays, meta = ctx.receive_arrays(ctx.label_owner, TOPIC_REQUESTS, round=ctx.round - 1)
    _expect(ctx, ctx.label_owner, TOPIC_REQUESTS, meta, tree=tree, level=level)
    codes = ctx.state.array("sb.codes")
    edges = _edges_from_state(ctx)
    table = SplitTable.from_state(json.loads(str(ctx.state.get("sb.splits"))))
    layout = ctx.passive_layout()
    answers = []
    limit = params_of(ctx).boosting.n_outputs * (1 << level)
    with ctx.decoding(ctx.label_owner, TOPIC_REQUESTS):
        requests = [tuple(int(v) for v in r) for r in meta["requests"]]
        if len(requests) > limit:
            raise ValueError(f"{len(requests)} split requests at level {level}, at most {limit}")
        label = f"trees/partition/{tree}/{level}"
        ctx.claim_mask_label(label)
        masks = sb.partition_masks(
            ctx.mask_seeds()[ctx.label_owner], label, ctx.customer_tokens(), len(requests)
        )
        for j, (split_id, column, b) in enumerate(requests):
            if not 0 <= column < codes.shape[1] or not 0 <= b < len(edges[column]):
                raise ValueError(f"split {split_id}: column {column}, bin {b} out of range")
            table.add(split_id, column, float(edges[column][b]))
            answers.append(
                sb.partition_bits(
                    codes, column, b, layout.slot_of_row, layout.total_slots, masks[:, j]
                )
            )
    ctx.state.set("sb.splits", json.dumps(table.to_state()))
    bits = np.concatenate(answers) if answers else np.zeros(0, dtype=np.uint8)
    ctx.send(
        ctx.label_owner,
        TOPIC_PARTITIONS,
        pack_payload(
            {"bits": bits}, {"tree": tree, "level": level, "splits": [r[0] for r in requests]}
        ),
    )
    # the next message is the next level of this tree, or the first level of the next tree
    if level + 1 < params_of(ctx).boosting.max_depth:
        ctx.state.set("sb.level", level + 1)
    else:
        ctx.state.set("sb.tree", tree + 1)
        ctx.state.set("sb.level", 0)


# --------------------------------------------------------------------------- LO rounds
@STEPS.step("train.tree_precompute", jobs=(KIND,), operations=TRAINING)
def label_owner_precompute(ctx: PartyContext) -> None:
    """LO, while the passive parties work: half of the next level's encryption randomness."""
    _passive_columns(ctx)
    public = public_key(ctx)
    private = paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))
    params = params_of(ctx).boosting
    level = int(ctx.state.get("sb.level"))
    next_level = level + 1 if level + 1 < params.max_depth else 0
    pairs = params.n_outputs * (1 << max(next_level - 1, 0))
    L = int(ctx.label_owner_layout().total_slots)
    need = sb.histogram_layout(public.n.bit_length(), L, pairs).chunks * L
    target = need if ctx.server_params.get("share", 1.0) >= 1.0 else (need + 1) // 2
    encryptor = precomputed_encryptor(ctx, public, private, key=OBFUSCATORS)
    encryptor.fill_pool(max(0, target - encryptor.pooled))
    ctx.state.set_array(OBFUSCATORS, np.frombuffer(encryptor.export_pool(), np.uint8))


@STEPS.step("train.tree_decide", jobs=(KIND,), operations=TRAINING)
def label_owner_decide(ctx: PartyContext) -> None:
    """LO: open every passive party's histograms, find the best splits, send the requests."""
    growth = _load_growth(ctx)
    tree = int(ctx.state.get("sb.tree"))
    private = paillier.private_key_from_bytes(ctx.state.get_bytes("paillier.private"))
    public = public_key(ctx)
    L = int(ctx.label_owner_layout().total_slots)
    hl = sb.histogram_layout(public.n.bit_length(), L, growth.padded_pairs)
    columns = _passive_columns(ctx)
    draw_columns(ctx, growth)
    growth.receive(ctx.party, *growth.own_histograms())
    for peer in ctx.passive_parties:
        arrays, meta = ctx.receive_arrays(peer, TOPIC_HISTOGRAMS, round=ctx.round - 1)
        _expect(ctx, peer, TOPIC_HISTOGRAMS, meta, tree=tree, level=growth.level)
        with ctx.decoding(peer, TOPIC_HISTOGRAMS):
            counts = [int(c) for c in meta["counts"]]
            flat = paillier.ciphertexts_from_bytes(
                arrays["ciphertexts"].tobytes(), public, sum(counts)
            )
            cuts = np.cumsum([0, *counts])
            hist = sb.EncryptedHistograms(
                int(meta["columns"]),
                int(meta["bins"]),
                tuple(tuple(flat[cuts[i] : cuts[i + 1]]) for i in range(len(counts))),
            )
            hg, hh, hc = sb.open_histograms(
                private,
                hist,
                hl,
                expected_columns=columns[peer],
                expected_bins=params_of(ctx).boosting.n_bins,
            )
            growth.receive(peer, hg, hh, hc)
    requests = growth.decide()
    table = SplitTable.from_state(json.loads(str(ctx.state.get("sb.splits"))))
    edges = _edges_from_state(ctx)
    for split in growth.own_splits:
        table.add(split.split_id, split.column, float(edges[split.column][split.bin]))
    ctx.state.set("sb.splits", json.dumps(table.to_state()))
    for peer in ctx.passive_parties:
        mine = [[r.split_id, r.column, r.bin] for r in requests.get(peer, [])]
        ctx.send(
            peer,
            TOPIC_REQUESTS,
            pack_payload({}, {"tree": tree, "level": growth.level, "requests": mine}),
        )
    ctx.state.set_bytes("sb.growth", growth_to_payload(growth))


@STEPS.step("train.tree_advance", jobs=(KIND,), operations=TRAINING)
def label_owner_advance(ctx: PartyContext) -> None:
    """LO: route the rows of the passive splits; the next level, or the next tree, or stop."""
    growth = _load_growth(ctx)
    tree = int(ctx.state.get("sb.tree"))
    layout = ctx.label_owner_layout()
    tokens = ctx.customer_tokens()
    seeds = ctx.mask_seeds()
    for peer in ctx.passive_parties:
        arrays, meta = ctx.receive_arrays(peer, TOPIC_PARTITIONS, round=ctx.round - 1)
        _expect(ctx, peer, TOPIC_PARTITIONS, meta, tree=tree, level=growth.level)
        with ctx.decoding(peer, TOPIC_PARTITIONS):
            ids = [int(s) for s in meta["splits"]]
            asked = growth.requested_of(peer)
            if ids != asked:
                raise ValueError(f"partitions for splits {ids}, the label owner asked {asked}")
            width = -(-int(layout.total_slots) // 8)
            bits = arrays["bits"]
            if bits.size != width * len(ids):
                raise ValueError(f"{bits.size} partition bytes for {len(ids)} splits")
            label = f"trees/partition/{tree}/{growth.level}"
            masks = sb.partition_masks(seeds[peer], label, tokens, len(ids))
            for j, split_id in enumerate(ids):
                left = sb.slot_partition(
                    bits[j * width : (j + 1) * width],
                    layout.joint_slots,
                    layout.total_slots,
                    masks[:, j],
                )
                growth.apply_partition(peer, split_id, left)
    if growth.next_level():
        _send_level(ctx, growth, TOPIC_LEVEL, tree=tree)
        ctx.state.set("sb.level", growth.level)
        ctx.publish(stop=False, tree=tree, level=growth.level)
        return
    stop = _end_tree(ctx, growth, tree)
    if stop:
        ctx.publish(stop=True, tree=tree)
        return
    nxt = _start_tree(ctx, tree + 1)
    ctx.state.set("sb.tree", tree + 1)
    _send_level(ctx, nxt, TOPIC_LEVEL, tree=tree + 1)
    ctx.publish(stop=False, tree=tree + 1, level=0)


def _end_tree(ctx: PartyContext, growth: RoundGrowth, tree: int) -> bool:
    """LO: leaf values, margins, hold-out loss; whether training stops."""
    params = params_of(ctx).boosting
    objective = objective_for(params)
    margins = ctx.state.array("sb.margins") + growth.finish()
    ctx.state.set_array("sb.margins", margins)
    model = TreeEnsemble.from_state(json.loads(str(ctx.state.get("sb.model"))))
    model.trees.extend(growth.trees)
    ctx.state.set("sb.model", json.dumps(model.to_state()))
    y = ctx.state.array("sb.y")
    if params.objective == "multiclass":
        y = y.astype(np.int64)
    holdout = ctx.state.array("sb.holdout").astype(bool)
    history = json.loads(str(ctx.state.get("sb.history")))
    history.append(objective.loss(margins[holdout], y[holdout]))
    ctx.state.set("sb.history", json.dumps(history))
    if history[-1] <= min(history):
        ctx.state.set_array("sb.best_margins", margins)
    if len(history) >= params.n_trees:
        return True
    if params.early_stopping:
        best = int(np.argmin(history))
        return len(history) - 1 - best >= params.early_stopping
    return False

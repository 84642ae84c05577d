"""Tree attacks of ``benchmarks/label_leakage.py``: what SecureBoost lets each party learn.

The attacks run on the protocol's own functions, in process, with 2048-bit keys
(:class:`vfm_flower.secureboost_local.LocalSecureBoost`: the job's steps call the same
functions; the tests prove both grow the same trees), on breast cancer: the label owner holds
10 columns and the label, a passive party the other 20 columns and 120 customers the label
owner does not have.

Passive party (honest but curious)
    ``tree_passive_ciphertext_auc``: each of its rows scored by the parity and by the leading
    16 bits of the level ciphertext of its slot, at every level; the largest AUC against the
    labels (``max(AUC, 1 - AUC)``: the attacker does not know the direction).
    ``tree_passive_membership_auc``: joint against non-joint rows from the same statistics.
    ``tree_random_max_auc``, ``tree_random_membership_max_auc``: the same maxima over as many
    random scores (the nulls).
    ``tree_passive_chosen_split_separation``: the documented leakage, which of its bins were
    chosen: for each of its splits, the side of each joint row as a label guess, the best
    ``max(AUC, 1 - AUC)`` over its splits (the direction stays unknown to it); beside
    ``tree_passive_own_threshold_separation``, the best it would reach with thresholds at its
    own columns' quartiles had it the labels to pick them. The chosen splits tell it which of
    its columns predict the label, and a partition of its customers that does.
Label owner
    ``tree_label_owner_partition_share``: share of the joint customers whose side it learns at
    each passive split (1.0 by design: the documented instance partitions).
    ``tree_label_owner_nonjoint_side_accuracy``: the sides it reads for customers it does not
    hold (masked per customer): 0.5 is chance.
    ``tree_label_owner_bins_recovered``: the histogram attack: from the per-bin sums of ``g``
    and ``h`` of every node it built and every row's exact ``g`` and ``h``, it looks for the
    bins holding one or two of the node's rows (one sum equal to a row's, or to two rows'), per
    ``min-node-rows``: the share of (joint row, passive column) bins it recovers, and how many
    of those are right.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from vfm_flower import secureboost_local, tree_growth
from vfm_flower.trees import BoostingParams


def _bidirectional_auc(y, score) -> float:
    a = float(roc_auc_score(y, score))
    return max(a, 1.0 - a)


def _data(rng):
    data = load_breast_cancer()
    X, y = data.data, data.target.astype(float)
    extra = 120
    block = np.vstack([X[:, 10:], X[rng.integers(0, len(y), extra), 10:]])
    perm = rng.permutation(len(block))
    joint = np.argsort(perm)[: len(y)]
    return X[:, :10], y, {"p1": block[perm]}, {"p1": joint}


def passive_and_owner_attacks(rng) -> dict[str, float]:
    """Run encrypted trees once, recording what the passive party received."""
    X_lo, y, passives, joint = _data(rng)
    seen: list[tuple[list, np.ndarray]] = []
    answers: list[tuple[np.ndarray, int, int, np.ndarray]] = []
    original = secureboost_local.passive_histograms
    original_bits = secureboost_local.partition_bits

    def spy(n, level, slot_of_row, *args, **kwargs):
        seen.append(([list(c) for c in level], np.asarray(slot_of_row)))
        return original(n, level, slot_of_row, *args, **kwargs)

    def spy_bits(codes, column, b, slot_of_row, total, masks=None):
        packed = original_bits(codes, column, b, slot_of_row, total, masks)
        answers.append((packed, column, b, np.asarray(slot_of_row)))
        return packed

    secureboost_local.passive_histograms = spy
    secureboost_local.partition_bits = spy_bits
    try:
        run = secureboost_local.LocalSecureBoost(
            BoostingParams(n_trees=4, max_depth=3), min_node_rows=40, seed=1
        ).fit("lo", X_lo, y, passives, joint)
    finally:
        secureboost_local.passive_histograms = original
        secureboost_local.partition_bits = original_bits
    party = run.parties["p1"]
    rows = passives["p1"].shape[0]
    is_joint = np.zeros(rows, dtype=bool)
    is_joint[joint["p1"]] = True
    y_rows = np.full(rows, -1.0)
    y_rows[joint["p1"]] = y
    label_auc, member_auc = [], []
    for chunks, slots in seen:
        cts = [int(chunks[0][s]) for s in slots.tolist()]
        for stat in (
            np.array([c & 1 for c in cts], dtype=float),
            np.array([c >> (c.bit_length() - 16) for c in cts], dtype=float),
        ):
            label_auc.append(_bidirectional_auc(y_rows[is_joint], stat[is_joint]))
            member_auc.append(_bidirectional_auc(is_joint, stat))
    X = passives["p1"]
    ids = run.model.splits_of("p1")
    sides = party.splits.decisions(X[joint["p1"]], ids) if ids else np.zeros((len(y), 0))
    chosen = max((_bidirectional_auc(y, sides[:, j]) for j in range(sides.shape[1])), default=0.5)
    own = max(
        _bidirectional_auc(y, X[joint["p1"], c] <= np.quantile(X[:, c], q))
        for c in range(X.shape[1])
        for q in (0.25, 0.5, 0.75)
    )
    # the label owner reading the sides of customers it does not hold: the bit it received
    # (it cannot remove their masks) against the true side
    hits, total = 0, 0
    for packed, column, b, slots in answers:
        bits = np.unpackbits(packed, count=run.total_slots).astype(bool)
        truth = party.codes[~is_joint, column] <= b
        hits += int((bits[slots[~is_joint]] == truth).sum())
        total += truth.size
    nonjoint_accuracy = hits / max(total, 1)
    # the null: the same maximum over as many random scores of the same rows
    null_rng = np.random.default_rng(11)
    null = [
        _bidirectional_auc(y_rows[is_joint], null_rng.random(int(is_joint.sum())))
        for _ in label_auc
    ]
    null_member = [_bidirectional_auc(is_joint, null_rng.random(rows)) for _ in member_auc]
    return {
        "tree_random_max_auc": round(max(null), 4),
        "tree_random_membership_max_auc": round(max(null_member), 4),
        "tree_passive_ciphertext_auc": round(max(label_auc), 4),
        "tree_passive_membership_auc": round(max(member_auc), 4),
        "tree_passive_chosen_split_separation": round(chosen, 4),
        "tree_passive_own_threshold_separation": round(own, 4),
        "tree_passive_splits": len(ids),
        "tree_label_owner_partition_share": 1.0 if ids else 0.0,
        "tree_label_owner_nonjoint_side_accuracy": round(nonjoint_accuracy, 4),
    }


def histogram_attack(rng, min_node_rows: int) -> dict[str, float]:
    """The label owner's bin recovery from small (node, bin) cells, in plain (the histograms
    it decrypts are exactly these)."""
    X_lo, y, passives, joint = _data(rng)
    captured = []
    original = tree_growth.RoundGrowth.receive

    def spy(self, party, hg, hh, hc):
        if party == "p1":
            captured.append(
                (self.pair_of_rows().copy(), self.g_int.copy(), self.h_int.copy(), hg, hh)
            )
        return original(self, party, hg, hh, hc)

    tree_growth.RoundGrowth.receive = spy
    try:
        run = secureboost_local.LocalSecureBoost(
            BoostingParams(n_trees=5, max_depth=6),
            encrypt=False,
            seed=1,
            min_node_rows=min_node_rows,
        ).fit("lo", X_lo, y, passives, joint)
    finally:
        tree_growth.RoundGrowth.receive = original
    true = run.parties["p1"].codes[joint["p1"]]
    known: dict[tuple[int, int], int] = {}
    for pairs, g, h, hg, hh in captured:
        for j in range(hg.shape[0]):
            rows = np.flatnonzero(pairs[:, 0] == j)
            if rows.size == 0:
                continue
            single: dict[tuple[int, int], list[int]] = {}
            for r in rows.tolist():
                single.setdefault((int(g[r, 0]), int(h[r, 0])), []).append(r)
            double: dict[tuple[int, int], list[tuple[int, int]]] = {}
            if rows.size <= 1500:
                for a in range(rows.size):
                    ra = int(rows[a])
                    for rb in rows[a + 1 :].tolist():
                        key = (int(g[ra, 0] + g[rb, 0]), int(h[ra, 0] + h[rb, 0]))
                        double.setdefault(key, []).append((ra, rb))
            for f in range(hg.shape[1]):
                for b in range(hg.shape[2]):
                    key = (int(hg[j, f, b]), int(hh[j, f, b]))
                    if key == (0, 0):
                        continue
                    hits = single.get(key, [])
                    if len(hits) == 1 and key not in double:
                        known[(hits[0], f)] = b
                    elif not hits and len(double.get(key, [])) == 1:
                        for r in double[key][0]:
                            known[(r, f)] = b
    correct = sum(int(true[r, f] == b) for (r, f), b in known.items())
    cells = true.size
    return {
        f"tree_label_owner_bins_recovered_min_node_rows_{min_node_rows}": round(
            len(known) / cells, 4
        ),
        f"tree_label_owner_bins_correct_min_node_rows_{min_node_rows}": round(
            correct / max(len(known), 1), 4
        ),
    }


def tree_attacks(rng) -> dict[str, float]:
    """Every tree attack; one dict of figures, with ``tree_attacks_within_bar``: the passive
    party's ciphertext statistics stay within 0.03 of their nulls and the label owner reads
    non-joint sides at chance (within 0.05)."""
    out = passive_and_owner_attacks(rng)
    for rows in (1, 100, 200):
        out.update(histogram_attack(np.random.default_rng(3), rows))
    out["tree_attacks_within_bar"] = bool(
        out["tree_passive_ciphertext_auc"] <= out["tree_random_max_auc"] + 0.03
        and out["tree_passive_membership_auc"] <= out["tree_random_membership_max_auc"] + 0.03
        and abs(out["tree_label_owner_nonjoint_side_accuracy"] - 0.5) <= 0.05
    )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(tree_attacks(np.random.default_rng(2026))))

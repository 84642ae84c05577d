"""The label owner's side of growing trees level by level (plain numbers, no crypto).

Who learns what
---------------
The label owner (LO) knows, for every joint customer, its gradients and which node of each
tree it is in; it receives, per level, the histograms of ``g`` and ``h`` over every party's
bins for the nodes it asks for (decrypted from the passive parties' encrypted histograms, see
:mod:`vfm_flower.secureboost`; computed in plain over its own columns), and for every split a
passive party owns, the side of every joint customer. It never learns a passive party's
column, bin edges or threshold: a passive split is an opaque id with the owner's name.

One level
---------
:meth:`RoundGrowth.built_pairs` lists the nodes whose histograms the parties compute (the
roots at level 0; below, the child with fewer training rows of every split node: the other
child's histogram is its parent's minus that one, *histogram subtraction*, so the parties sum
each row once per level). :meth:`RoundGrowth.receive` takes one party's histograms of those
nodes; :meth:`RoundGrowth.decide` finds the best split of every node over all parties
(XGBoost's gain, ties to the party listed first, the LO), routes the rows of the LO's own
splits, and returns the split requests of each passive party; :meth:`RoundGrowth.apply_partition`
routes the rows of a passive split from the owner's answer. Nodes at the last level, and nodes
without a split that passes ``gamma`` and ``min_child_weight``, become leaves
(:meth:`RoundGrowth.finish`).

A softmax round grows one tree per class at once: a "pair" is ``(output, node)`` and every
level of all classes' trees costs the same rounds as one tree.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vfm_flower.tree_model import Tree, TreeEnsemble
from vfm_flower.trees import (
    GRADIENT_BITS,
    BoostingParams,
    SplitChoice,
    find_splits,
    leaf_values,
)

__all__ = ["SplitRequest", "RoundGrowth", "plain_histograms", "grow_plain"]

Pair = tuple[int, int]  # (output, node)


@dataclass(frozen=True)
class SplitRequest:
    """A split the LO asks its owner to make: ``split_id`` at ``column``, bins ``<= bin`` left.

    What the owner learns: which of its bins was chosen (and so the side of each of its rows),
    and an opaque id; not the node, the gain or any gradient.
    """

    split_id: int
    column: int
    bin: int


class RoundGrowth:
    """The LO's state while it grows the ``K`` trees of one boosting round.

    Parameters
    ----------
    params : BoostingParams
        Depth, regularization, ``gamma``, ``min_child_weight``.
    g_int, h_int : np.ndarray
        ``(rows, K)`` fixed-point gradients and hessians of the joint customers (LO's joint
        order), zero on rows that do not train this round (held out, not sampled).
    scale : np.ndarray
        ``(K,)`` gradient scale of :func:`vfm_flower.trees.quantize_gradients`.
    train : np.ndarray
        ``(rows,)`` booleans: rows that train this round.
    parties : Sequence[str]
        Every party with columns, the LO first (the order breaks ties).
    label_owner : str
        The LO's name (its splits are routed at once, from ``own_codes``).
    own_codes : np.ndarray
        The LO's bin codes on the joint rows, ``(rows, columns)``.
    allowed : Mapping[str, np.ndarray], optional
        Columns drawn for this round per party (``colsample``); all when absent.
    min_node_rows : int
        The fewest training rows of a node whose histograms the parties compute and which may
        split (see *small nodes* below); smaller nodes are leaves.
    id_source : callable, optional
        Draws a split id (default: 62 random bits from ``secrets``). Ids are random so that a
        passive party cannot tell from its ids where its splits sit in the tree.

    Small nodes
    -----------
    The LO knows every row's ``g`` and ``h``; from the per-bin sums of a node with few rows it
    could solve which rows fall in which bin of a passive column (a subset sum). A node with
    fewer than ``min_node_rows`` training rows is never split, and its histograms are never
    asked for: of two children, the smaller is built only if it is large enough, else the
    larger is built directly and the smaller becomes a leaf.
    """

    def __init__(
        self,
        params: BoostingParams,
        g_int: np.ndarray,
        h_int: np.ndarray,
        scale: np.ndarray,
        train: np.ndarray,
        *,
        parties: Sequence[str],
        label_owner: str,
        own_codes: np.ndarray,
        allowed: Mapping[str, np.ndarray] | None = None,
        min_node_rows: int = 1,
        id_source: Callable[[], int] | None = None,
    ) -> None:
        self.params = params
        self.g_int = np.asarray(g_int, dtype=np.int64)
        self.h_int = np.asarray(h_int, dtype=np.int64)
        rows, k = self.g_int.shape
        self.scale = np.asarray(scale, dtype=np.float64)
        self.train = np.asarray(train, dtype=bool)
        self.parties = list(parties)
        self.label_owner = label_owner
        self.own_codes = np.asarray(own_codes)
        self.allowed = dict(allowed or {})
        self.min_node_rows = max(1, int(min_node_rows))
        self.id_source = id_source or (lambda: secrets.randbits(62))
        self.used_ids: set[int] = set()
        self.node = np.zeros((rows, k), dtype=np.int64)
        self.trees = [Tree(params.max_depth, output=c) for c in range(k)]
        self.level = 0
        big_enough = int(self.train.sum()) >= self.min_node_rows
        self.active: list[Pair] = [(c, 0) for c in range(k)] if big_enough else []
        self._built: list[Pair] = list(self.active)
        self._derived: dict[Pair, Pair] = {}  # derived pair -> (its built sibling)
        self._parent_hist: dict[str, dict[Pair, tuple[np.ndarray, ...]]] = {}
        self._hist: dict[str, dict[Pair, tuple[np.ndarray, ...]]] = {}
        self._pending: dict[int, tuple[str, Pair]] = {}
        self.done = False

    # ------------------------------------------------------------------ what to build

    def built_pairs(self) -> list[Pair]:
        """The nodes whose histograms every party computes at this level, in order."""
        return list(self._built)

    def pair_of_rows(self) -> np.ndarray:
        """``(rows, K)`` index into :meth:`built_pairs` of each training row's node, or -1."""
        out = np.full(self.node.shape, -1, dtype=np.int64)
        for j, (c, n) in enumerate(self._built):
            out[(self.node[:, c] == n) & self.train, c] = j
        return out

    def own_histograms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The LO's histograms of the built nodes over its own columns, ``(pairs, F, B)``."""
        return plain_histograms(
            self.own_codes,
            self.g_int,
            self.h_int,
            self.pair_of_rows(),
            len(self._built),
            self.params.n_bins,
        )

    # ------------------------------------------------------------------ histograms

    @property
    def padded_pairs(self) -> int:
        """Pairs every level is laid out for, whatever the data: ``K`` at the root,
        ``K 2**(level - 1)`` below (every node of the previous level split). The passive
        parties see this count, never the number of nodes actually built."""
        return len(self.trees) * (1 << max(self.level - 1, 0))

    def receive(
        self, party: str, hist_g: np.ndarray, hist_h: np.ndarray, hist_c: np.ndarray
    ) -> None:
        """One party's integer histograms of the built nodes: sums of ``g``, ``h`` and rows,
        ``(pairs, F, B)`` each (``pairs`` the built or the padded count; padding is dropped)."""
        if party not in self.parties:
            raise ValueError(f"'{party}' holds no columns in this job")
        if party in self._hist:
            raise ValueError(f"a second reply of '{party}' at level {self.level}")
        hists = [np.asarray(a, dtype=np.int64) for a in (hist_g, hist_h, hist_c)]
        shape = hists[0].shape
        if (
            any(a.shape != shape for a in hists)
            or len(shape) != 3
            or shape[0] not in (len(self._built), self.padded_pairs)
        ):
            raise ValueError(
                f"histograms of '{party}' have shape {shape}, expected "
                f"({len(self._built)}, columns, bins)"
            )
        if shape[0] > len(self._built) and any(a[len(self._built) :].any() for a in hists):
            raise ValueError(f"histograms of '{party}' hold values in padding nodes")
        mine: dict[Pair, tuple[np.ndarray, ...]] = {}
        for j, pair in enumerate(self._built):
            mine[pair] = tuple(a[j] for a in hists)
            rows = self._train_rows(pair)
            if (mine[pair][2].sum(axis=1) != rows).any():
                raise ValueError(f"histograms of '{party}' do not count the node's {rows} rows")
        parents = self._parent_hist.get(party, {})
        for pair, sibling in self._derived.items():
            parent = (pair[0], (pair[1] - 1) // 2)
            mine[pair] = tuple(p - q for p, q in zip(parents[parent], mine[sibling], strict=True))
        self._hist[party] = mine

    # ------------------------------------------------------------------ decisions

    def _true_units(self, c: int, g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unit = float(1 << GRADIENT_BITS)
        return g * (self.scale[c] / unit), h / unit

    def decide(self) -> dict[str, list[SplitRequest]]:
        """Best split of every active node over all parties; returns the passive requests.

        The LO's own splits are routed here; a passive split waits for
        :meth:`apply_partition`. Raises ``ValueError`` if a party's histograms are missing.
        """
        missing = [p for p in self.parties if p not in self._hist]
        if missing:
            raise ValueError(f"no histograms from {', '.join(missing)} at level {self.level}")
        requests: dict[str, list[SplitRequest]] = {}
        splittable = self.level < self.params.max_depth
        self._splits: list[Pair] = []
        self.own_splits: list[SplitRequest] = []
        for pair in self.active:
            c, n = pair
            best: tuple[str, SplitChoice] | None = None
            if splittable:
                for party in self.parties:
                    g, h, rows = self._hist[party][pair]
                    tg, th = self._true_units(c, g.astype(np.float64), h.astype(np.float64))
                    choice = find_splits(
                        tg[None],
                        th[None],
                        self.params,
                        allowed=self.allowed.get(party),
                        counts=rows[None],
                        min_rows=self.min_node_rows,
                    )[0]
                    if choice.feature >= 0 and (best is None or choice.gain > best[1].gain):
                        best = (party, choice)
            if best is None:
                continue
            party, choice = best
            split_id = self.id_source()
            while split_id in self.used_ids or split_id < 0:
                split_id = self.id_source()
            self.used_ids.add(split_id)
            tree = self.trees[c]
            tree.owner[n], tree.split[n], tree.gain[n] = party, split_id, choice.gain
            self._splits.append(pair)
            if party == self.label_owner:
                left = self.own_codes[:, choice.feature] <= choice.bin
                self._route(pair, left)
                self.own_splits.append(SplitRequest(split_id, choice.feature, choice.bin))
            else:
                requests.setdefault(party, []).append(
                    SplitRequest(split_id, choice.feature, choice.bin)
                )
                self._pending[split_id] = (party, pair)
        for reqs in requests.values():  # the order must not tell the node either
            random.SystemRandom().shuffle(reqs)
        self._requested = {p: [r.split_id for r in reqs] for p, reqs in requests.items()}
        return requests

    def requested_of(self, party: str) -> list[int]:
        """The split ids asked of ``party`` at this level, in the order they were sent."""
        return list(getattr(self, "_requested", {}).get(party, []))

    def _route(self, pair: Pair, left: np.ndarray) -> None:
        c, n = pair
        here = self.node[:, c] == n
        self.node[here, c] = np.where(left[here], 2 * n + 1, 2 * n + 2)

    def apply_partition(self, party: str, split_id: int, left: np.ndarray) -> None:
        """Route the rows of a passive split from its owner's answer (True: left), joint rows."""
        owner = self._pending.pop(split_id, None)
        if owner is None or owner[0] != party:
            raise ValueError(f"split {split_id} was not asked of '{party}'")
        left = np.asarray(left, dtype=bool)
        if left.shape != (self.node.shape[0],):
            raise ValueError(f"the partition of split {split_id} has {left.size} rows")
        self._route(owner[1], left)

    @property
    def pending(self) -> list[int]:
        """Passive splits still waiting for their partition."""
        return sorted(self._pending)

    # ------------------------------------------------------------------ next level

    def _train_rows(self, pair: Pair) -> int:
        c, n = pair
        return int(np.count_nonzero((self.node[:, c] == n) & self.train))

    def next_level(self) -> bool:
        """Move to the next level; False after the last histogram level."""
        if self._pending:
            raise ValueError(f"splits {self.pending} still wait for their partition")
        children: list[Pair] = []
        built: list[Pair] = []
        derived: dict[Pair, Pair] = {}
        for c, n in self._splits:
            left, right = (c, 2 * n + 1), (c, 2 * n + 2)
            rows = {left: self._train_rows(left), right: self._train_rows(right)}
            if min(rows.values()) < self.min_node_rows:  # the counts said otherwise: refuse
                raise ValueError(
                    f"a split left {min(rows.values())} training rows in a child, below "
                    f"min-node-rows {self.min_node_rows}: the partition does not match the "
                    "histograms"
                )
            small, large = (left, right) if rows[left] <= rows[right] else (right, left)
            children += [left, right]
            built.append(small)
            derived[large] = small
        self._parent_hist = self._hist
        self._hist = {}
        self.level += 1
        self.active = children if self.level < self.params.max_depth else []
        self._built = built if self.active else []
        self._derived = derived if self.active else {}
        return self.level < self.params.max_depth

    def needs_histograms(self) -> bool:
        """Whether this level is a histogram level (every level below the maximum depth is,
        with or without nodes to split: the schedule does not depend on the data)."""
        return self.level < self.params.max_depth

    def finish(self) -> np.ndarray:
        """Leaf values of every tree (from the training rows' sums); returns ``(rows, K)``
        margin updates for every joint row, held-out rows included."""
        unit = float(1 << GRADIENT_BITS)
        update = np.zeros(self.node.shape, dtype=np.float64)
        for c, tree in enumerate(self.trees):
            leaves = np.unique(self.node[:, c])
            for n in leaves.tolist():
                here = self.node[:, c] == n
                rows = here & self.train
                g = float(self.g_int[rows, c].sum()) * self.scale[c] / unit
                h = float(self.h_int[rows, c].sum()) / unit
                value = float(leaf_values(np.array(g), np.array(h), self.params))
                tree.value[n] = value
                update[here, c] = value
        self.done = True
        return update


def plain_histograms(
    codes: np.ndarray,
    g_int: np.ndarray,
    h_int: np.ndarray,
    pair_of_rows: np.ndarray,
    pairs: int,
    n_bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer histograms ``(pairs, F, B)`` of ``g``, ``h`` and rows over plain bin codes.

    ``pair_of_rows[i, c]`` is the built pair of row ``i`` in output ``c``'s tree, or -1.
    Exact: sums of integers below ``2**53`` in float64.
    """
    codes = np.asarray(codes)
    rows, features = codes.shape
    out = [np.zeros((pairs, features, n_bins), dtype=np.int64) for _ in range(3)]
    for c in range(pair_of_rows.shape[1]):
        sel = pair_of_rows[:, c] >= 0
        if not sel.any():
            continue
        pj = pair_of_rows[sel, c]
        weights = (
            g_int[sel, c].astype(np.float64),
            h_int[sel, c].astype(np.float64),
            np.ones(int(sel.sum())),
        )
        for f in range(features):
            key = pj * n_bins + codes[sel, f].astype(np.int64)
            for hist, w in zip(out, weights, strict=True):
                counts = np.bincount(key, w, pairs * n_bins)
                hist[:, f, :] += np.rint(counts).astype(np.int64).reshape(pairs, n_bins)
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------- persistence


def _hist_arrays(prefix: str, hists: dict[str, dict[Pair, tuple[np.ndarray, ...]]]):
    arrays: dict[str, np.ndarray] = {}
    order: dict[str, list[list[int]]] = {}
    for party, by_pair in hists.items():
        pairs = sorted(by_pair)
        order[party] = [list(p) for p in pairs]
        if pairs:
            for i, name in enumerate("ghc"):
                arrays[f"{prefix}.{party}.{name}"] = np.stack([by_pair[p][i] for p in pairs])
    return arrays, order


def _hist_from(prefix: str, arrays: Mapping[str, np.ndarray], order: Mapping[str, list]):
    out: dict[str, dict[Pair, tuple[np.ndarray, ...]]] = {}
    for party, pairs in order.items():
        by_pair: dict[Pair, tuple[np.ndarray, ...]] = {}
        if pairs:
            stacks = [arrays[f"{prefix}.{party}.{name}"] for name in "ghc"]
            for j, p in enumerate(pairs):
                by_pair[(int(p[0]), int(p[1]))] = tuple(a[j] for a in stacks)
        out[party] = by_pair
    return out


def growth_to_payload(growth: RoundGrowth) -> bytes:
    """The LO's growth state as bytes, for the party state between two messages (the
    Deployment Engine runs every message in a fresh process). The LO's own codes are not
    included: pass them again to :func:`growth_from_payload`."""
    from vfm_flower.codec import pack_payload

    hist, hist_order = _hist_arrays("hist", growth._hist)
    parent, parent_order = _hist_arrays("parent", growth._parent_hist)
    arrays = {
        "g_int": growth.g_int,
        "h_int": growth.h_int,
        "scale": growth.scale,
        "train": growth.train,
        "node": growth.node,
        **hist,
        **parent,
        **{f"allowed.{k}": np.asarray(v, dtype=bool) for k, v in growth.allowed.items()},
    }
    meta = {
        "parties": growth.parties,
        "label_owner": growth.label_owner,
        "min_node_rows": growth.min_node_rows,
        "level": growth.level,
        "active": [list(p) for p in growth.active],
        "built": [list(p) for p in growth._built],
        "derived": [[list(k), list(v)] for k, v in growth._derived.items()],
        "pending": {str(k): [v[0], list(v[1])] for k, v in growth._pending.items()},
        "splits": [list(p) for p in getattr(growth, "_splits", [])],
        "requested": getattr(growth, "_requested", {}),
        "trees": [t.to_state() for t in growth.trees],
        "hist_order": hist_order,
        "parent_order": parent_order,
        "allowed": sorted(growth.allowed),
        "done": growth.done,
    }
    return pack_payload(arrays, meta)


def growth_from_payload(blob: bytes, params: BoostingParams, own_codes: np.ndarray) -> RoundGrowth:
    """Inverse of :func:`growth_to_payload`."""
    from vfm_flower.codec import unpack_payload

    arrays, meta = unpack_payload(blob)
    growth = RoundGrowth(
        params,
        arrays["g_int"],
        arrays["h_int"],
        arrays["scale"],
        arrays["train"],
        parties=meta["parties"],
        label_owner=meta["label_owner"],
        own_codes=own_codes,
        allowed={k: arrays[f"allowed.{k}"] for k in meta["allowed"]},
        min_node_rows=int(meta["min_node_rows"]),
    )
    growth.node = np.array(arrays["node"], dtype=np.int64)
    growth.level = int(meta["level"])
    growth.active = [tuple(p) for p in meta["active"]]
    growth._built = [tuple(p) for p in meta["built"]]
    growth._derived = {tuple(k): tuple(v) for k, v in meta["derived"]}
    growth._pending = {int(k): (v[0], tuple(v[1])) for k, v in meta["pending"].items()}
    growth._splits = [tuple(p) for p in meta["splits"]]
    growth._requested = {k: [int(i) for i in v] for k, v in meta["requested"].items()}
    growth.trees = [Tree.from_state(t) for t in meta["trees"]]
    growth.used_ids = {s for t in growth.trees for s in t.split if s >= 0}
    growth._hist = _hist_from("hist", arrays, meta["hist_order"])
    growth._parent_hist = _hist_from("parent", arrays, meta["parent_order"])
    growth.done = bool(meta["done"])
    return growth


# --------------------------------------------------------------------------- in plain


def grow_plain(
    params: BoostingParams,
    codes: Mapping[str, np.ndarray],
    y: np.ndarray,
    holdout: np.ndarray,
    *,
    label_owner: str,
    min_node_rows: int = 1,
) -> tuple[TreeEnsemble, np.ndarray, list[float]]:
    """The same boosting on plain bin codes of the joint rows (no crypto, no sampling).

    For what one party may compute on its own data (the label owner's own-columns model the
    report compares with) and for tests (the federated job must grow these trees exactly).
    Returns the model, the margins of every row and the hold-out loss per round.
    """
    from vfm_flower.trees import objective_for, quantize_gradients

    objective = objective_for(params)
    y = objective.check_labels(y, params)
    holdout = np.asarray(holdout, dtype=bool)
    base = objective.base_margin(y[~holdout], params)
    margins = np.tile(base, (len(y), 1))
    model = TreeEnsemble(params.objective, base.tolist())
    parties = [label_owner, *(p for p in codes if p != label_owner)]
    history: list[float] = []
    for _ in range(params.n_trees):
        g, h = objective.gradients(margins, y)
        g[holdout] = 0.0
        h[holdout] = 0.0
        g_int, h_int, scale = quantize_gradients(g, h)
        growth = RoundGrowth(
            params,
            g_int,
            h_int,
            scale,
            ~holdout,
            parties=parties,
            label_owner=label_owner,
            own_codes=codes[label_owner],
            min_node_rows=min_node_rows,
        )
        while True:
            pairs = growth.pair_of_rows()
            for party in parties:
                growth.receive(
                    party,
                    *plain_histograms(
                        codes[party],
                        g_int,
                        h_int,
                        pairs,
                        len(growth.built_pairs()),
                        params.n_bins,
                    ),
                )
            for party, reqs in growth.decide().items():
                for r in reqs:
                    growth.apply_partition(party, r.split_id, codes[party][:, r.column] <= r.bin)
            if not growth.next_level():
                break
        margins = margins + growth.finish()
        model.trees.extend(growth.trees)
        history.append(objective.loss(margins[holdout], y[holdout]) if holdout.any() else 0.0)
    return model, margins, history

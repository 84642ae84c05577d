"""SecureBoost in one process: every party's step of the federated protocol, run in order.

For tests, benchmarks and experiments without Flower: the label owner (LO) and each passive
party are objects that hold only their own data and call the same protocol functions as the
job steps (:mod:`vfm_flower.secureboost`, :mod:`vfm_flower.tree_growth`); what crosses
between them is what the job sends (level ciphertexts by slot, compressed encrypted
histograms, split requests, partitions by slot), counted in :attr:`LocalSecureBoost.rounds`
and :attr:`LocalSecureBoost.bytes_sent`.

Alignment is given, not computed: ``joint_rows`` says which rows of each party are the same
customers, and the slot maps are drawn with :func:`vfm_flower.hidden_membership.build_layouts`
exactly as after PSI, so passive parties work on all their rows, joint or not.

``encrypt=False`` runs the same protocol with plain histograms (no Paillier): the reference
the tests compare the encrypted run with (the trees must be identical), and a quick way to
check accuracy. It has no privacy at all.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from phe import paillier as phe

from vfm_flower.hazmat import paillier_djn as _djn
from vfm_flower.hidden_membership import build_layouts, passive_layout
from vfm_flower.secureboost import (
    encode_level,
    histogram_layout,
    open_histograms,
    partition_bits,
    partition_masks,
    passive_histograms,
    slot_partition,
)
from vfm_flower.tree_growth import RoundGrowth, plain_histograms
from vfm_flower.tree_model import SplitTable, TreeEnsemble
from vfm_flower.trees import (
    BoostingParams,
    bin_codes,
    objective_for,
    quantile_bin_edges,
    quantize_gradients,
)

logger = logging.getLogger(__name__)

__all__ = ["PassiveParty", "LocalSecureBoost"]


@dataclass
class PassiveParty:
    """A passive party: its columns on all its rows, its bins, slots and split table."""

    name: str
    X: np.ndarray
    edges: list[np.ndarray] = field(default_factory=list)
    codes: np.ndarray | None = None
    slot_of_row: np.ndarray | None = None
    splits: SplitTable = field(default_factory=SplitTable)
    seed: bytes = b""
    tokens: list[bytes] = field(default_factory=list)
    joint_tokens: list[bytes] = field(default_factory=list)

    def bin(self, n_bins: int) -> None:
        self.edges = [
            quantile_bin_edges(self.X[:, j], n_bins, name=f"{self.name} column {j}")
            for j in range(self.X.shape[1])
        ]
        self.codes = bin_codes(self.X, self.edges)


class LocalSecureBoost:
    """Train vertical gradient-boosted trees with every party in this process.

    Rounds are counted as the job layer runs them: four server rounds per level (level
    ciphertexts to the passive parties, their histograms to the LO, split requests to the
    passive parties, their partitions to the LO).

    Parameters
    ----------
    params : BoostingParams
        The hyper-parameters.
    key_bits : int
        Paillier modulus (2048 at least).
    holdout_fraction : float
        Share of the joint rows the LO holds out (early stopping and the reported metrics).
    seed : int, optional
        Seed of the hold-out split, row and column sampling (not of any key or mask).
    encrypt : bool
        False: plain histograms (reference only, no privacy).
    workers : int, optional
        Processes for the Paillier work.
    min_node_rows : int
        See :class:`vfm_flower.tree_growth.RoundGrowth` (the job uses the agreement's rule).
    """

    def __init__(
        self,
        params: BoostingParams,
        *,
        key_bits: int = 2048,
        holdout_fraction: float = 0.2,
        seed: int | None = 0,
        encrypt: bool = True,
        workers: int | None = None,
        min_node_rows: int = 1,
    ) -> None:
        self.params = params
        self.key_bits = key_bits
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.encrypt = encrypt
        self.workers = workers
        self.min_node_rows = min_node_rows
        if params.early_stopping and not holdout_fraction > 0:
            raise ValueError("early stopping needs hold-out rows (holdout_fraction > 0)")
        self.rounds = 0
        self.bytes_sent = 0
        self.levels: list[dict[str, float]] = []
        self.history: list[float] = []

    def critical_path_seconds(self) -> float:
        """Seconds of the protocol's critical path, every party on its own machine: per level,
        the passive parties' histograms in parallel, with the LO's randomness for the next
        level computed meanwhile (whichever is slower), then the LO's decryption, decision,
        the partitions and the encoding."""
        return sum(
            max(lv.get("passive_histograms_max", 0.0), lv.get("label_owner_randomness", 0.0))
            + lv.get("label_owner_decrypt", 0.0)
            + lv.get("label_owner_decide", 0.0)
            + lv.get("partitions", 0.0)
            + lv.get("label_owner_encode", 0.0)
            for lv in self.levels
        )

    def sequential_seconds(self) -> float:
        """Seconds of every party's work one after the other (one machine for everyone)."""
        keys = (
            "label_owner_randomness",
            "label_owner_encode",
            "passive_histograms_sum",
            "label_owner_decrypt",
            "label_owner_decide",
            "partitions",
        )
        return sum(lv.get(k, 0.0) for lv in self.levels for k in keys)

    def fit(
        self,
        label_owner: str,
        X_lo: np.ndarray,
        y: np.ndarray,
        passives: Mapping[str, np.ndarray],
        joint_rows: Mapping[str, np.ndarray],
    ) -> LocalSecureBoost:
        """Train.

        Parameters
        ----------
        label_owner : str
            The LO's name.
        X_lo, y : np.ndarray
            The LO's columns and labels on its joint rows (in joint order).
        passives : Mapping[str, np.ndarray]
            Each passive party's columns on all its rows.
        joint_rows : Mapping[str, np.ndarray]
            For each passive party, its row of each joint customer (joint order).
        """
        p = self.params
        objective = objective_for(p)
        y = objective.check_labels(y, p)
        rng = np.random.default_rng(self.seed)
        n = len(y)
        # alignment outcome: slot maps as after PSI (positions = row indices here)
        sizes = {k: int(np.asarray(v).shape[0]) for k, v in passives.items()}
        layout = build_layouts({k: np.asarray(joint_rows[k]) for k in passives}, sizes)
        self.total_slots = L = layout.total_slots
        self.parties: dict[str, PassiveParty] = {}
        for name, X in passives.items():
            party = PassiveParty(name, np.asarray(X, dtype=np.float64))
            party.slot_of_row = passive_layout(
                layout.slot_maps[name], np.arange(sizes[name]), L
            ).slot_of_row
            party.bin(p.n_bins)
            # per-customer tokens and a pair seed, as after alignment (for the partition masks)
            party.seed = secrets.token_bytes(32)
            party.tokens = [secrets.token_bytes(32) for _ in range(sizes[name])]
            party.joint_tokens = [party.tokens[r] for r in np.asarray(joint_rows[name])]
            self.parties[name] = party
        self.joint_slots = layout.joint_slots
        self.label_owner = label_owner
        self.lo = PassiveParty(label_owner, np.asarray(X_lo, dtype=np.float64))
        self.lo.bin(p.n_bins)

        holdout = np.zeros(n, dtype=bool)
        holdout[rng.permutation(n)[: int(round(self.holdout_fraction * n))]] = True
        self.holdout = holdout
        if self.encrypt:
            public, private = phe.generate_paillier_keypair(n_length=self.key_bits)
            encryptor = _djn.DJNEncryptor(public, private=private)
        margins = np.tile(objective.base_margin(y[~holdout], p), (n, 1))
        self.model = TreeEnsemble(p.objective, objective.base_margin(y[~holdout], p).tolist())
        best_loss, best_trees, since_best = np.inf, 0, 0
        order = [label_owner, *self.parties]
        for t in range(p.n_trees):
            train = ~holdout
            if p.subsample < 1.0:
                train = train & (rng.random(n) < p.subsample)
            g, h = objective.gradients(margins, y)
            g[~train] = 0.0
            h[~train] = 0.0
            g_int, h_int, scale = quantize_gradients(g, h)
            allowed = None
            if p.colsample < 1.0:
                allowed = {}
                for name, party in [(label_owner, self.lo), *self.parties.items()]:
                    m = party.codes.shape[1]
                    keep = np.zeros(m, dtype=bool)
                    keep[rng.choice(m, max(1, int(round(p.colsample * m))), replace=False)] = True
                    allowed[name] = keep
            growth = RoundGrowth(
                p,
                g_int,
                h_int,
                scale,
                train,
                parties=order,
                label_owner=label_owner,
                own_codes=self.lo.codes,
                allowed=allowed,
                min_node_rows=self.min_node_rows,
            )
            while growth.needs_histograms():
                pairs = growth.built_pairs()
                padded = growth.padded_pairs
                level: dict[str, float] = {}
                started = time.perf_counter()
                growth.receive(label_owner, *growth.own_histograms())
                if self.encrypt:
                    hl = histogram_layout(self.key_bits, L, padded)
                    # the randomness first (the job computes it while the LO waits)
                    encryptor.fill_pool(hl.chunks * L, workers=self.workers)
                    level["label_owner_randomness"] = time.perf_counter() - started
                    started = time.perf_counter()
                    plain = encode_level(
                        g_int, h_int, growth.pair_of_rows(), self.joint_slots, hl, L
                    )
                    cts = [encryptor.encrypt_ints(chunk, workers=1) for chunk in plain]
                    self.bytes_sent += sum(len(c) for c in cts) * (self.key_bits // 4)
                level["label_owner_encode"] = time.perf_counter() - started
                self.rounds += 2  # LO -> passives: level ciphertexts; back: histograms
                passive_seconds = []
                level["label_owner_decrypt"] = 0.0
                for name, party in self.parties.items():
                    started = time.perf_counter()
                    if self.encrypt:
                        eh = passive_histograms(
                            public.n,
                            cts,
                            party.slot_of_row,
                            party.codes,
                            p.n_bins,
                            hl,
                            workers=1,
                        )
                        passive_seconds.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        self.bytes_sent += eh.count() * (self.key_bits // 4)
                        hg, hh, hc = open_histograms(
                            private,
                            eh,
                            hl,
                            expected_columns=party.codes.shape[1],
                            expected_bins=p.n_bins,
                            workers=self.workers,
                        )
                        level["label_owner_decrypt"] += time.perf_counter() - started
                    else:
                        rows = np.asarray(joint_rows[name])
                        hg, hh, hc = plain_histograms(
                            party.codes[rows],
                            g_int,
                            h_int,
                            growth.pair_of_rows(),
                            len(pairs),
                            p.n_bins,
                        )
                    growth.receive(name, hg, hh, hc)
                level["passive_histograms_max"] = max(passive_seconds, default=0.0)
                level["passive_histograms_sum"] = sum(passive_seconds)
                started = time.perf_counter()
                requests = growth.decide()
                for split in growth.own_splits:
                    self.lo.splits.add(
                        split.split_id, split.column, self.lo.edges[split.column][split.bin]
                    )
                level["label_owner_decide"] = time.perf_counter() - started
                self.rounds += 2  # LO -> every passive: its split requests; back: partitions
                started = time.perf_counter()
                for name, reqs in requests.items():
                    party = self.parties[name]
                    label = f"trees/{t}/{growth.level}"
                    own = partition_masks(party.seed, label, party.tokens, len(reqs))
                    lo_masks = partition_masks(party.seed, label, party.joint_tokens, len(reqs))
                    for j, r in enumerate(reqs):
                        party.splits.add(r.split_id, r.column, party.edges[r.column][r.bin])
                        bits = partition_bits(
                            party.codes, r.column, r.bin, party.slot_of_row, L, own[:, j]
                        )
                        self.bytes_sent += bits.size
                        left = slot_partition(bits, self.joint_slots, L, lo_masks[:, j])
                        growth.apply_partition(name, r.split_id, left)
                level["partitions"] = time.perf_counter() - started
                self.levels.append(level)
                if not growth.next_level():
                    break
            margins += growth.finish()
            self.model.trees.extend(growth.trees)
            loss = objective.loss(margins[holdout], y[holdout]) if holdout.any() else 0.0
            self.history.append(loss)
            logger.info("tree %d/%d: hold-out loss %.5f", t + 1, p.n_trees, loss)
            if loss < best_loss - 1e-12:
                best_loss, best_trees, since_best = loss, t + 1, 0
            else:
                since_best += 1
                if p.early_stopping and since_best >= p.early_stopping:
                    break
        if p.early_stopping:
            self.model.trees = self.model.trees[: best_trees * p.n_outputs]
        self.margins_ = margins
        self.y_ = y
        return self

    def decisions(
        self, X_lo: np.ndarray, passives: Mapping[str, np.ndarray]
    ) -> dict[str, dict[int, np.ndarray]]:
        """Every party's answers at its own splits for new rows (scoring, in plain here)."""
        out = {self.label_owner: self._answers(self.lo, X_lo)}
        for name, X in passives.items():
            out[name] = self._answers(self.parties[name], X)
        return out

    def _answers(self, party: PassiveParty, X: np.ndarray) -> dict[int, np.ndarray]:
        ids = self.model.splits_of(party.name)
        left = party.splits.decisions(np.asarray(X, dtype=np.float64), ids)
        return {s: left[:, j] for j, s in enumerate(ids)}

    def predict(self, X_lo: np.ndarray, passives: Mapping[str, np.ndarray]) -> np.ndarray:
        """Probabilities (binary, multiclass) or values (squared error) of new joint rows."""
        rows = np.asarray(X_lo).shape[0]
        margins = self.model.margins(self.decisions(X_lo, passives), rows)
        return objective_for(self.params).predict(margins)

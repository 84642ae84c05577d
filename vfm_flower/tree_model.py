"""The model of the ``secureboost`` job kinds: who holds which split.

:class:`TreeEnsemble` is the label owner's view of every tree (node owner, an opaque random
split id, the split's gain, leaf values); each party holds a :class:`SplitTable` with the
column and threshold of its own splits only. :func:`route_rows` descends rows with one
boolean answer per split, so scoring needs from each party only "left or right" at its own
splits (:mod:`vfm_flower.steps.trees_scoring`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vfm_flower.errors import DataError

__all__ = ["SplitTable", "Tree", "TreeEnsemble", "route_rows"]


@dataclass
class SplitTable:
    """One party's own splits: ``split id -> (column index, threshold)``.

    A row goes left at split ``s`` when its value of column ``columns[s]`` is at most
    ``thresholds[s]``. Only the owner holds its table; the label owner knows only the ids.
    """

    columns: dict[int, int] = field(default_factory=dict)
    thresholds: dict[int, float] = field(default_factory=dict)

    def add(self, split_id: int, column: int, threshold: float) -> None:
        if split_id in self.columns:
            raise ValueError(f"split id {split_id} is already in the table")
        self.columns[split_id] = int(column)
        self.thresholds[split_id] = float(threshold)

    def decisions(self, X: np.ndarray, split_ids: Sequence[int]) -> np.ndarray:
        """``(rows, len(split_ids))`` booleans: True where the row goes left."""
        arr = np.asarray(X, dtype=np.float64)
        out = np.empty((arr.shape[0], len(split_ids)), dtype=bool)
        for j, s in enumerate(split_ids):
            if s not in self.columns:
                raise KeyError(f"split id {s} is not one of this party's splits")
            out[:, j] = arr[:, self.columns[s]] <= self.thresholds[s]
        return out

    def to_state(self) -> dict[str, list]:
        ids = sorted(self.columns)
        return {
            "ids": ids,
            "columns": [self.columns[i] for i in ids],
            "thresholds": [self.thresholds[i] for i in ids],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, list]) -> SplitTable:
        table = cls()
        for i, c, t in zip(state["ids"], state["columns"], state["thresholds"], strict=True):
            table.add(int(i), int(c), float(t))
        return table


@dataclass
class Tree:
    """One tree in heap order (node ``i`` has children ``2i + 1`` and ``2i + 2``).

    ``owner[i]`` is the party holding the split of node ``i`` (``""`` for a leaf),
    ``split[i]`` its opaque split id (``-1`` for a leaf) and ``value[i]`` the leaf value.
    ``output`` is the class a softmax tree adds to (0 otherwise); ``gain[i]`` the split's gain
    (XGBoost's convention; the label owner's, for the importance figures).
    """

    depth: int
    output: int = 0
    owner: list[str] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    gain: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        size = (1 << (self.depth + 1)) - 1
        if not self.owner:
            self.owner = [""] * size
            self.split = [-1] * size
            self.value = [0.0] * size
        if not self.gain:
            self.gain = [0.0] * size

    def is_leaf(self, node: int) -> bool:
        return self.split[node] < 0

    def to_state(self) -> dict:
        return {
            "depth": self.depth,
            "output": self.output,
            "owner": list(self.owner),
            "split": list(self.split),
            "value": list(self.value),
            "gain": list(self.gain),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> Tree:
        return cls(
            int(state["depth"]),
            int(state["output"]),
            [str(o) for o in state["owner"]],
            [int(s) for s in state["split"]],
            [float(v) for v in state["value"]],
            [float(v) for v in state.get("gain", ())],
        )


@dataclass
class TreeEnsemble:
    """The label owner's model: base margin, trees, and the split ids each party owns."""

    objective: str
    base_margin: list[float]
    trees: list[Tree] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        return len(self.base_margin)

    def importance(self) -> dict[str, dict[int, tuple[int, float]]]:
        """Per party, per split id: ``(1, gain)`` (the label owner's view; a passive party
        gets only its own ids' gains, which it sums per column itself)."""
        out: dict[str, dict[int, tuple[int, float]]] = {}
        for tree in self.trees:
            for owner, split, gain in zip(tree.owner, tree.split, tree.gain, strict=True):
                if owner and split >= 0:
                    out.setdefault(owner, {})[split] = (1, float(gain))
        return out

    def splits_of(self, party: str) -> list[int]:
        """Every split id owned by ``party``, in tree order (what scoring asks it)."""
        return [s for t in self.trees for o, s in zip(t.owner, t.split) if o == party and s >= 0]

    def margins(self, decisions: Mapping[str, Mapping[int, np.ndarray]], rows: int) -> np.ndarray:
        """Margins ``(rows, outputs)`` from every party's answers (``party -> id -> left``).

        Raises
        ------
        DataError
            A party that owns splits gave no answers (scoring with a party missing), or an
            answer does not cover every row.
        """
        for party in sorted({o for t in self.trees for o in t.owner if o}):
            answers = decisions.get(party)
            needed = self.splits_of(party)
            if answers is None or any(s not in answers for s in needed):
                raise DataError(
                    f"scoring needs the answers of '{party}' at its {len(needed)} splits: "
                    "every party whose columns the model uses must take part"
                )
            if any(np.asarray(answers[s]).shape != (rows,) for s in needed):
                raise DataError(f"the answers of '{party}' do not cover the {rows} rows scored")
        out = np.tile(np.asarray(self.base_margin, dtype=np.float64), (rows, 1))
        for tree in self.trees:
            out[:, tree.output] += route_rows(tree, decisions, rows)
        return out

    def canonical(self) -> dict:
        """The model's state with split ids renumbered in order of appearance (ids are random
        per job; two models grow the same trees when their canonical states are equal)."""
        order: dict[int, int] = {}
        state = self.to_state()
        for tree in state["trees"]:
            tree["split"] = [
                order.setdefault(s, len(order)) if s >= 0 else -1 for s in tree["split"]
            ]
        return state

    def to_state(self) -> dict:
        return {
            "objective": self.objective,
            "base_margin": list(self.base_margin),
            "trees": [t.to_state() for t in self.trees],
        }

    @classmethod
    def from_state(cls, state: Mapping) -> TreeEnsemble:
        return cls(
            str(state["objective"]),
            [float(v) for v in state["base_margin"]],
            [Tree.from_state(t) for t in state["trees"]],
        )


def route_rows(
    tree: Tree, decisions: Mapping[str, Mapping[int, np.ndarray]], rows: int
) -> np.ndarray:
    """Leaf value of every row: descend with ``decisions[owner][split]`` (True: left)."""
    node = np.zeros(rows, dtype=np.int64)
    for _ in range(tree.depth):
        for n in np.unique(node):
            if tree.is_leaf(int(n)):
                continue
            here = node == n
            left = decisions[tree.owner[n]][tree.split[n]][here]
            node[here] = np.where(left, 2 * n + 1, 2 * n + 2)
    return np.asarray(tree.value, dtype=np.float64)[node]

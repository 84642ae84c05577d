"""Gradient-boosted trees: the model math of the SecureBoost job kinds (plain, no crypto).

Everything here is what one party computes on values it is allowed to see. The federated
protocol (who encrypts what for whom) is in :mod:`vfm_flower.secureboost`; this module holds
the parts it shares with the plain reference trainer used by the tests:

* :class:`BoostingParams`: the hyper-parameters, validated at construction (scikit-learn
  style: the parameters are plain attributes, validation raises a ``ValueError`` naming the
  parameter and its range).
* Objectives (:func:`objective_for`): binary logistic, softmax (one tree per class per round,
  as XGBoost's ``multi:softprob``), squared error. Each gives per-row gradients and hessians
  and turns margins into predictions; the hessians follow XGBoost exactly (``p (1 - p)``,
  ``2 p (1 - p)`` for softmax, ``1`` for squared error), so that the trees are XGBoost's trees.
* Quantile binning of a party's own columns (:func:`quantile_bin_edges`, :func:`bin_codes`):
  each party bins its columns on all its rows; a threshold is the upper edge of a bin.
* Fixed-point gradients (:func:`quantize_gradients`): the label owner rounds ``g`` and ``h``
  to integers on a ``2**-GRADIENT_BITS`` grid once per tree, and both the encrypted
  histograms and the label owner's own plain histograms sum those integers, so a split found
  under encryption is exactly the split found in plain on the same integers.
* Split search (:func:`find_splits`) with XGBoost's gain ``G_L^2/(H_L+lambda) +
  G_R^2/(H_R+lambda) - G^2/(H+lambda)`` (XGBoost's convention, without the factor 1/2, so
  ``gamma`` means what it means in XGBoost), ``min_child_weight`` on both children's hessian
  sums, and the leaf weight ``-G/(H+lambda)`` times the learning rate.
The model itself (who holds which split) is in :mod:`vfm_flower.tree_model`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vfm_flower.errors import DataError

__all__ = [
    "OBJECTIVES",
    "GRADIENT_BITS",
    "BoostingParams",
    "Objective",
    "objective_for",
    "quantile_bin_edges",
    "bin_codes",
    "quantize_gradients",
    "SplitChoice",
    "find_splits",
    "leaf_values",
]

#: The objectives: ``binary`` (logistic), ``multiclass`` (softmax), ``squared_error``.
OBJECTIVES = ("binary", "multiclass", "squared_error")

#: Fraction bits of the fixed-point gradients and hessians. ``|g| <= 1`` and ``0 <= h <= 1``
#: after the label owner's scaling, so a row is at most ``2**20`` units and a histogram cell
#: of a million rows fits 41 bits: XGBoost keeps float32 gradients (24 significant bits); 20
#: fraction bits keep every split of the tests identical to float64 gradients.
GRADIENT_BITS = 20


# --------------------------------------------------------------------------- parameters


def _check_range(name: str, value: float, low: float, high: float, *, integer: bool) -> None:
    if integer and (isinstance(value, bool) or int(value) != value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class BoostingParams:
    """Hyper-parameters of gradient-boosted trees (XGBoost's names and meanings).

    Parameters
    ----------
    objective : str
        ``"binary"``, ``"multiclass"`` or ``"squared_error"``.
    n_trees : int
        Boosting rounds (for ``multiclass``, each round grows one tree per class).
    max_depth : int
        Depth of every tree (1 to 8; a depth-``d`` tree has up to ``2**d`` leaves).
    learning_rate : float
        Shrinkage of every leaf value (XGBoost's ``eta``).
    n_bins : int
        Quantile bins per column (2 to 256; the agreement bounds it).
    reg_lambda, gamma, min_child_weight : float
        XGBoost's ``lambda``, ``gamma`` (``min_split_loss``) and ``min_child_weight``.
    subsample, colsample : float
        Share of training rows drawn per tree, and of each party's columns drawn per tree.
    early_stopping : int
        Stop after this many rounds without improvement of the hold-out loss (0: off); the
        model keeps the best round.
    n_classes : int
        Number of classes (2 for ``binary``; at least 3 for ``multiclass``; ignored for
        ``squared_error``).
    """

    objective: str = "binary"
    n_trees: int = 20
    max_depth: int = 5
    learning_rate: float = 0.3
    n_bins: int = 32
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    subsample: float = 1.0
    colsample: float = 1.0
    early_stopping: int = 0
    n_classes: int = 2

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        _check_range("n_trees", self.n_trees, 1, 1000, integer=True)
        _check_range("max_depth", self.max_depth, 1, 8, integer=True)
        _check_range("learning_rate", self.learning_rate, 1e-6, 1.0, integer=False)
        _check_range("n_bins", self.n_bins, 2, 256, integer=True)
        _check_range("reg_lambda", self.reg_lambda, 0.0, 1e6, integer=False)
        _check_range("gamma", self.gamma, 0.0, 1e6, integer=False)
        _check_range("min_child_weight", self.min_child_weight, 0.0, 1e6, integer=False)
        _check_range("subsample", self.subsample, 0.05, 1.0, integer=False)
        _check_range("colsample", self.colsample, 0.05, 1.0, integer=False)
        _check_range("early_stopping", self.early_stopping, 0, 1000, integer=True)
        if self.objective == "multiclass":
            _check_range("n_classes", self.n_classes, 3, 64, integer=True)
        elif self.objective == "binary" and self.n_classes != 2:
            raise ValueError(f"a binary objective has 2 classes, got n_classes={self.n_classes}")

    @property
    def n_outputs(self) -> int:
        """Trees per boosting round: the class count for ``multiclass``, else 1."""
        return self.n_classes if self.objective == "multiclass" else 1


# --------------------------------------------------------------------------- objectives


class Objective:
    """Loss of one objective: base margin, gradients and hessians, predictions, loss."""

    name = ""

    def check_labels(self, y: np.ndarray, params: BoostingParams) -> np.ndarray:
        """The labels as floats (binary, squared error) or class indices (multiclass)."""
        raise NotImplementedError

    def base_margin(self, y: np.ndarray, params: BoostingParams) -> np.ndarray:
        """Starting margin, one per output (XGBoost's ``base_score`` as a margin)."""
        raise NotImplementedError

    def gradients(self, margin: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``g, h`` of shape ``(rows, outputs)`` at ``margin`` (shape ``(rows, outputs)``)."""
        raise NotImplementedError

    def predict(self, margin: np.ndarray) -> np.ndarray:
        """Probabilities (``(rows,)`` for binary, ``(rows, classes)``) or values."""
        raise NotImplementedError

    def loss(self, margin: np.ndarray, y: np.ndarray) -> float:
        """Mean loss (log loss, or mean squared error)."""
        raise NotImplementedError


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class _Logistic(Objective):
    name = "binary"

    def check_labels(self, y, params):
        y = np.asarray(y, dtype=np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError("a binary objective needs 0/1 labels")
        if y.min() == y.max():
            raise DataError("the labels hold one class only: nothing to learn")
        return y

    def base_margin(self, y, params):
        mean = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
        return np.array([math.log(mean / (1.0 - mean))])

    def gradients(self, margin, y):
        p = _sigmoid(margin[:, 0])
        return (p - y)[:, None], np.maximum(p * (1.0 - p), 1e-16)[:, None]

    def predict(self, margin):
        return _sigmoid(margin[:, 0])

    def loss(self, margin, y):
        p = np.clip(_sigmoid(margin[:, 0]), 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


class _Softmax(Objective):
    name = "multiclass"

    def check_labels(self, y, params):
        y = np.asarray(y, dtype=np.float64)
        k = params.n_classes
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError("a multiclass objective needs integer class labels")
        seen = np.unique(y).astype(int)
        if seen.min() < 0 or seen.max() >= k:
            raise DataError(
                f"the labels hold classes {seen.min()}..{seen.max()}, the job says "
                f"n-classes = {k} (classes 0..{k - 1})"
            )
        if len(seen) != k:
            missing = sorted(set(range(k)) - set(seen.tolist()))
            raise DataError(
                f"n-classes = {k} but class(es) {missing} never occur in the labels: set "
                "n-classes to the number of classes present"
            )
        return y.astype(np.int64)

    def base_margin(self, y, params):
        return np.zeros(params.n_classes)

    @staticmethod
    def _softmax(margin):
        z = margin - margin.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def gradients(self, margin, y):
        p = self._softmax(margin)
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y] = 1.0
        return p - onehot, np.maximum(2.0 * p * (1.0 - p), 1e-16)

    def predict(self, margin):
        return self._softmax(margin)

    def loss(self, margin, y):
        p = np.clip(self._softmax(margin)[np.arange(len(y)), y], 1e-15, 1.0)
        return float(-np.mean(np.log(p)))


class _Squared(Objective):
    name = "squared_error"

    def check_labels(self, y, params):
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise DataError("the target holds missing or infinite values")
        return y

    def base_margin(self, y, params):
        return np.array([float(np.mean(y))])

    def gradients(self, margin, y):
        return (margin[:, 0] - y)[:, None], np.ones((len(y), 1))

    def predict(self, margin):
        return margin[:, 0].copy()

    def loss(self, margin, y):
        return float(np.mean((margin[:, 0] - y) ** 2))


def objective_for(params: BoostingParams) -> Objective:
    """The objective of ``params.objective``."""
    return {"binary": _Logistic, "multiclass": _Softmax, "squared_error": _Squared}[
        params.objective
    ]()


# --------------------------------------------------------------------------- binning


def quantile_bin_edges(column: np.ndarray, n_bins: int, *, name: str = "column") -> np.ndarray:
    """Upper edges of up to ``n_bins`` quantile bins of one column (``n_bins - 1`` at most).

    A value ``x`` is in bin ``b`` when ``edges[b-1] < x <= edges[b]``; the last bin holds
    everything above the last edge. Edges are distinct midpoints between observed values, so
    ties stay in one bin and a column with few values gets one bin per value.

    Raises
    ------
    DataError
        If the column is constant or holds missing values (prepare the data first).
    """
    x = np.asarray(column, dtype=np.float64)
    if x.size == 0 or not np.isfinite(x).all():
        raise DataError(f"{name}: missing or infinite values reach the tree binning")
    values = np.unique(x)
    if len(values) < 2:
        raise DataError(f"{name} is constant: a tree cannot split on it (drop the column)")
    if len(values) <= n_bins:
        pos = np.arange(len(values) - 1)
    else:
        qs = np.quantile(x, np.arange(1, n_bins) / n_bins, method="linear")
        # snap each quantile to the midpoint after the last observed value <= it
        pos = np.searchsorted(values, qs, side="right") - 1
        pos = np.unique(np.clip(pos, 0, len(values) - 2))
    low, high = values[pos], values[pos + 1]
    edges = low + (high - low) / 2.0  # no overflow near the float range's ends
    edges = np.where((edges > low) & (edges < high), edges, low)
    if not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise DataError(f"{name}: values too large to bin (rescale the column)")
    return edges


def bin_codes(X: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Bin index of every value, ``(rows, columns)`` ``uint8`` (``uint16`` above 256 bins)."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(edges):
        raise ValueError(f"{arr.shape} values for {len(edges)} binned columns")
    top = max((len(e) for e in edges), default=0)
    dtype = np.uint8 if top < 255 else np.uint16
    out = np.empty(arr.shape, dtype=dtype)
    for j, e in enumerate(edges):
        out[:, j] = np.searchsorted(e, arr[:, j], side="left")
    return out


# --------------------------------------------------------------------------- gradients


def quantize_gradients(
    g: np.ndarray, h: np.ndarray, *, bits: int = GRADIENT_BITS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ``g, h`` on a ``2**-bits`` grid, after scaling each output by a power of two.

    Returns ``g_int, h_int, scale`` with ``g ~ g_int * scale / 2**bits`` (per output) and
    ``h ~ h_int / 2**bits``: ``scale`` (the smallest power of two >= ``max |g|``, at least 1)
    keeps ``|g_int| <= 2**bits`` for squared error, where gradients are in the target's units;
    it stays with the label owner (the encrypted values carry only the scaled integers).
    ``h`` is at most 1 for every objective (1 for squared error).
    """
    g = np.asarray(g, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    top = np.max(np.abs(g), axis=0) if len(g) else np.ones(g.shape[1])
    scale = np.exp2(np.ceil(np.log2(np.maximum(top, 1.0))))
    unit = float(1 << bits)
    g_int = np.rint(g / scale * unit).astype(np.int64)
    h_int = np.rint(np.clip(h, 0.0, 1.0) * unit).astype(np.int64)
    return g_int, h_int, scale


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitChoice:
    """The best split of one node over one party's columns (or ``feature = -1``: none).

    ``bin`` is the last bin that goes left; ``gain`` in XGBoost's convention; ``left_g``,
    ``left_h`` the left child's sums (the right child's are the node's minus these).
    """

    feature: int
    bin: int
    gain: float
    left_g: float
    left_h: float


def find_splits(
    hist_g: np.ndarray,
    hist_h: np.ndarray,
    params: BoostingParams,
    *,
    allowed: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    min_rows: int = 1,
) -> list[SplitChoice]:
    """Best split per node over one block of columns, from its histograms.

    Parameters
    ----------
    hist_g, hist_h : np.ndarray
        ``(nodes, columns, bins)`` sums of ``g`` and ``h`` per bin (floats, in true units).
    params : BoostingParams
        ``reg_lambda``, ``gamma`` and ``min_child_weight``.
    allowed : np.ndarray, optional
        ``(columns,)`` booleans: the columns drawn for this tree (``colsample``).
    counts : np.ndarray, optional
        ``(nodes, columns, bins)`` training rows per bin: with them, both children of a split
        keep at least ``min_rows`` rows.
    min_rows : int
        See ``counts``.

    Returns
    -------
    list[SplitChoice]
        One per node; ``feature = -1`` when no split passes ``gamma``, ``min_child_weight``
        and ``min_rows``. Ties go to the lowest column; within it, to the middle of the run of
        bins with the same gain (empty bins between two values): the threshold then says
        nothing about which of those bins hold rows.
    """
    lam, mcw = params.reg_lambda, params.min_child_weight
    cg = np.cumsum(hist_g, axis=2)[:, :, :-1]
    ch = np.cumsum(hist_h, axis=2)[:, :, :-1]
    tg = hist_g.sum(axis=2, keepdims=True)
    th = hist_h.sum(axis=2, keepdims=True)
    rg, rh = tg - cg, th - ch
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = cg**2 / (ch + lam) + rg**2 / (rh + lam) - tg**2 / (th + lam)
    ok = (ch >= mcw) & (rh >= mcw) & (ch > 0) & (rh > 0)
    if counts is not None:
        cc = np.cumsum(counts, axis=2)[:, :, :-1]
        tc = np.asarray(counts).sum(axis=2, keepdims=True)
        ok &= (cc >= min_rows) & (tc - cc >= min_rows)
    if allowed is not None:
        ok &= np.asarray(allowed, dtype=bool)[None, :, None]
    gain = np.where(ok, gain, -np.inf)
    out = []
    for n in range(gain.shape[0]):
        flat = gain[n].reshape(-1)
        if flat.size == 0:
            out.append(SplitChoice(-1, -1, -np.inf, 0.0, 0.0))
            continue
        best = int(np.argmax(flat))
        value = float(flat[best])
        if not np.isfinite(value) or value <= params.gamma or value <= 0.0:
            out.append(SplitChoice(-1, -1, -np.inf, 0.0, 0.0))
            continue
        f, b = divmod(best, gain.shape[2])
        end = b
        while end + 1 < gain.shape[2] and gain[n, f, end + 1] == value:
            end += 1
        b = (b + end) // 2
        out.append(SplitChoice(f, b, value, float(cg[n, f, b]), float(ch[n, f, b])))
    return out


def leaf_values(g_sum: np.ndarray, h_sum: np.ndarray, params: BoostingParams) -> np.ndarray:
    """``-eta G / (H + lambda)`` (0 for an empty node)."""
    denom = np.asarray(h_sum, dtype=np.float64) + params.reg_lambda
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(denom > 0, -np.asarray(g_sum, dtype=np.float64) / denom, 0.0)
    return params.learning_rate * w

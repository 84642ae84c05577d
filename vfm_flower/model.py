"""Vertical logistic and linear regression: the lossless block optimizer (plaintext math).

Setting
-------
The columns of the training matrix are split into K blocks, one per party; the label owner's
own features are a block too, and the label owner also holds the unregularized intercept.
The objective is the regularized mean loss over the training rows::

    F(w) = mean_i loss(z_i, y_i) + l2/2 * sum_k ||w_k||^2,     z = sum_k X_k w_k + b

with the exact logistic loss (no Taylor approximation of the sigmoid) or half the squared error.
No party ever sees another party's columns, weights or gradient.

Method: block-preconditioned subspace minimization (label-owner line search)
----------------------------------------------------------------------------
Each party k factorizes once, on its own columns, the block preconditioner::

    M_k = c X_k^T X_k / n + l2 * I        (c = 1/4 logistic: Böhning's bound; c = 1 linear)

(no penalty on the intercept coordinate), and keeps three vectors: its weights ``x_k``, its
current search direction ``s_k`` and its previous step ``p_k``. One iteration is:

1. *forward*: party k sends the image of its direction on all aligned rows, ``q_k = X_k s_k``,
   plus six inner products of its own vectors (``x.x, x.s, x.p, s.s, s.p, p.p``, intercept
   excluded). In the real protocol both are computed under encryption and the label owner
   learns only the sums ``q = sum_k q_k`` and the six summed scalars. (Iteration 0 sends the
   image of the initial weights instead, ``X_k x_k``, usually zero.)
2. *label owner*: it keeps the score vector ``z`` and the image ``r = X p`` of the previous
   step (it can, since it chose that step). With ``q``, ``r`` and the six scalars it knows
   the objective *exactly* on the plane ``x + a s + b p``::

       F(a, b) = L(z + a q + b r) + l2/2 (xx + 2a xs + 2b xp + a^2 ss + 2ab sp + b^2 pp)

   and minimizes it by a 2-D damped Newton method (microseconds, its own rows only). It
   updates ``z``, computes the new residual ``d = sigmoid(z) - y`` (or ``z - y``) on the
   training rows and decides whether to stop.
3. *backward*: it broadcasts the two coefficients ``(a, b)`` (a :class:`StepControl`) and
   ``d / n_train`` (zero on hold-out rows; both encrypted in the real protocol). Party k
   moves ``x_k += a s_k + b p_k``, gets its gradient ``g_k = X_k^T d / n + l2 x_k`` and
   its next direction ``s_k = -M_k^{-1} g_k`` (under encryption for a passive party).

For a quadratic objective (linear regression) exact minimization over ``span{s, p}`` is the
preconditioned conjugate-gradient method: it is exact after at most ``n_params`` iterations
and in practice converges in about 12. For logistic regression it is a nonlinear conjugate
gradient with an *exact* plane search (memory-gradient / SESOP family): the objective
decreases monotonically and no step size, momentum schedule or restart rule has to be
tuned (``b = 0`` *is* a restart, chosen by the search when it pays). The preconditioned
gradient step of size ``1/K`` (provably monotone by Böhning's bound and
``X^T X <= K blockdiag(X_k^T X_k)``, with ``M_k`` set up on the training rows) is the point
``(a, b) = (1/K, 0)`` of the plane, so each iteration decreases the objective at least as
much as that majorize-minimize step. (When parties set up ``M_k`` on all aligned rows so as
not to learn the hold-out split, ``s`` is still a descent direction with a bounded
preconditioner, and exact search along it converges.) On the
demo data (three parties, ``l2 = 1e-3``) it stops on the default tolerance after about 30
iterations with the hold-out AUC within 5e-4 of centralized scikit-learn (within 0.003
after 10 iterations); with ``l2 = 1e-2`` after about 18. Iterations with Nesterov momentum
and adaptive restart on the same preconditioner gave an objective gap 5 to 10 times larger
after 40 iterations; per-party L-BFGS directions added to the search did not help.

What is shared
--------------
This module is the plaintext math of the parties' side; the label owner's side (stopping
rules, plane search, coordinator, and ``train_vertical_plaintext``, the plaintext reference
run) is in :mod:`vfm_flower.model_label_owner`. Where each vector lives in the real protocol
is in ``vfm_flower.private_gradients``: a passive party keeps ``x_k, s_k, p_k`` encrypted under the
label owner's key and computes its gradient, direction and image under encryption; the label
owner learns only the summed image ``sum_k X_k s_k`` on the joint rows and the six summed
inner products, applies the move ``(a, b)`` to masked vectors and sends the coefficients
encrypted. ``train_vertical_plaintext`` runs the same optimizer with every block in plain
(the reference the encrypted protocol reproduces up to fixed-point rounding).

Iterations are counted as backward (gradient) rounds; the final forward round only applies
the last step, no gradient follows it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vfm_flower.errors import ConfigurationError, DataError, ProtocolAbort

__all__ = [
    "ModelKind",
    "ModelSpec",
    "StepControl",
    "link",
    "loss",
    "residual",
    "BlockOptimizer",
    "N_FORWARD_SCALARS",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["logistic", "linear"]

#: Number of inner products each party appends to its forward message.
N_FORWARD_SCALARS = 6
_KIND_CODE = {"logistic": 0.0, "linear": 1.0}
_PHASE = "training"


# --------------------------------------------------------------------------- model math
@dataclass(frozen=True)
class ModelSpec:
    """What is trained.

    Parameters
    ----------
    kind : {"logistic", "linear"}
        Logistic regression (labels 0/1) or linear regression.
    l2 : float
        L2 penalty ``lambda`` on every weight except the intercept, in the mean-loss scale:
        scikit-learn's ``LogisticRegression(C=1 / (l2 * n_train))`` and
        ``Ridge(alpha=l2 * n_train)`` solve the same problem.
    """

    kind: ModelKind = "logistic"
    l2: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CODE:
            raise ConfigurationError(
                f"model kind must be 'logistic' or 'linear', got {self.kind!r}"
            )
        if not (isinstance(self.l2, int | float) and math.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigurationError(f"l2 penalty must be a finite number >= 0, got {self.l2!r}")

    @property
    def curvature_bound(self) -> float:
        """``c`` with ``Hessian <= c X^T X / n + l2 I``: 1/4 (Böhning) or 1."""
        return 0.25 if self.kind == "logistic" else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON/ConfigRecord-friendly form."""
        return {"kind": self.kind, "l2": float(self.l2)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(kind=data["kind"], l2=float(data["l2"]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def link(z: np.ndarray, kind: ModelKind) -> np.ndarray:
    """Inverse link: the prediction from the linear score.

    Parameters
    ----------
    z : numpy.ndarray
        Linear scores ``sum_k X_k w_k + b``.
    kind : {"logistic", "linear"}
        Model kind.

    Returns
    -------
    numpy.ndarray
        ``sigmoid(z)`` (numerically stable) for logistic, ``z`` for linear.
    """
    if kind == "logistic":
        return _sigmoid(z)
    if kind == "linear":
        return np.asarray(z, dtype=np.float64).copy()
    raise ConfigurationError(f"unknown model kind {kind!r}")


def loss(z: np.ndarray, y: np.ndarray, kind: ModelKind) -> float:
    """Mean loss of linear scores ``z`` against targets ``y``.

    Parameters
    ----------
    z : numpy.ndarray
        Linear scores.
    y : numpy.ndarray
        Labels 0/1 (logistic) or targets (linear).
    kind : {"logistic", "linear"}
        Model kind.

    Returns
    -------
    float
        Mean log loss ``mean(log(1 + e^z) - y z)`` (exact, stable for any ``z``) or half the
        mean squared error. ``nan`` for empty inputs.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if z.size == 0:
        return float("nan")
    if kind == "logistic":
        return float(np.mean(np.logaddexp(0.0, z) - y * z))
    if kind == "linear":
        return float(0.5 * np.mean((z - y) ** 2))
    raise ConfigurationError(f"unknown model kind {kind!r}")


def residual(z: np.ndarray, y: np.ndarray, kind: ModelKind) -> np.ndarray:
    """Derivative of the per-row loss with respect to the score.

    Returns
    -------
    numpy.ndarray
        ``sigmoid(z) - y`` (logistic, exact) or ``z - y`` (linear).
    """
    return link(z, kind) - np.asarray(y, dtype=np.float64)


def _curvature(z: np.ndarray, kind: ModelKind) -> np.ndarray:
    if kind == "logistic":
        p = _sigmoid(z)
        return p * (1.0 - p)
    return np.ones_like(np.asarray(z, dtype=np.float64))


# --------------------------------------------------------------------------- shared scalars
@dataclass(frozen=True)
class StepControl:
    """The scalars the label owner broadcasts with each backward message.

    Attributes
    ----------
    iteration : int
        Index of the decision (0 for the first one); a party refuses a control whose
        iteration is not the one it expects (messages out of order or replayed).
    step : float
        Coefficient ``a`` of the party's current direction in the move ``x += a s + b p``.
    momentum : float
        Coefficient ``b`` of the party's previous step (0: a restart).
    mark_best : bool
        The point reached after this move has the best hold-out loss so far: keep a copy.
    stop : bool
        Training ends: apply the move, no gradient follows.
    restore_best : bool
        With ``stop``: finish on the kept best point instead (early stopping).
    reason : str
        Why training stopped (``"converged"``, ``"max_iterations"``, ``"early_stopping"``),
        empty otherwise.
    """

    iteration: int
    step: float = 0.0
    momentum: float = 0.0
    mark_best: bool = False
    stop: bool = False
    restore_best: bool = False
    reason: str = ""

    @property
    def restart(self) -> bool:
        """Whether the momentum term was dropped (the search chose ``b = 0``)."""
        return self.momentum == 0.0

    def to_dict(self) -> dict[str, int | float | bool | str]:
        """Flat scalars for a Flower ``ConfigRecord`` or a JSON message."""
        return {
            "iteration": int(self.iteration),
            "step": float(self.step),
            "momentum": float(self.momentum),
            "mark_best": bool(self.mark_best),
            "stop": bool(self.stop),
            "restore_best": bool(self.restore_best),
            "reason": str(self.reason),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepControl:
        """Inverse of :meth:`to_dict`; refuses non-finite coefficients."""
        control = cls(
            iteration=int(data["iteration"]),
            step=float(data["step"]),
            momentum=float(data["momentum"]),
            mark_best=bool(data.get("mark_best", False)),
            stop=bool(data.get("stop", False)),
            restore_best=bool(data.get("restore_best", False)),
            reason=str(data.get("reason", "")),
        )
        if not (math.isfinite(control.step) and math.isfinite(control.momentum)):
            raise ProtocolAbort(_PHASE, None, "step control carries a non-finite coefficient")
        return control


# --------------------------------------------------------------------------- party side
def _cholesky_with_jitter(matrix: np.ndarray) -> np.ndarray:
    scale = float(np.trace(matrix)) / max(matrix.shape[0], 1)
    scale = scale if scale > 0 else 1.0
    jitter = 0.0
    for _ in range(12):
        try:
            return np.linalg.cholesky(matrix + jitter * scale * np.eye(matrix.shape[0]))
        except np.linalg.LinAlgError:
            jitter = 1e-12 if jitter == 0.0 else jitter * 100.0
    raise DataError("the party's columns give a singular preconditioner even with jitter")


class BlockOptimizer:
    """One party's slice of the vertical optimizer; sees only its own columns.

    Parameters
    ----------
    spec : ModelSpec
        The model (identical at every party).
    n_features : int
        Number of the party's prepared columns (may be 0 for a label owner without features).
    has_intercept : bool
        True for the label owner: an unregularized intercept is appended as the last
        coordinate of :meth:`forward_weights` and of the gradient.

    Notes
    -----
    Protocol per iteration: ``u = X_k @ v[:m] (+ v[m])`` with ``v = forward_weights()``
    (:meth:`partial_score` does it) and ``forward_scalars()`` go into the masked forward sum;
    then ``step(gradient, control)`` with ``gradient = X_k^T (d / n_train)`` (plus
    ``sum(d / n_train)`` as last entry for the intercept; :meth:`data_gradient` does it in
    plaintext). The L2 term is added here, because only this object knows the point.
    """

    def __init__(self, spec: ModelSpec, n_features: int, *, has_intercept: bool = False) -> None:
        if n_features < 0 or (n_features == 0 and not has_intercept):
            raise ConfigurationError("a party block needs at least one column")
        self.spec = spec
        self.n_features = int(n_features)
        self.has_intercept = bool(has_intercept)
        dim = self.n_features + int(self.has_intercept)
        self._x = np.zeros(dim)
        self._s = np.zeros(dim)
        self._p = np.zeros(dim)
        self._best: np.ndarray | None = None
        self._chol: np.ndarray | None = None
        self._iteration = 0
        self._finished = False
        self._penalized = np.ones(dim, dtype=bool)
        if self.has_intercept:
            self._penalized[-1] = False

    # -- set-up -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of the internal vectors (features + intercept)."""
        return self._x.size

    def setup(self, X_train: np.ndarray) -> None:
        """Factorize the block preconditioner from the party's own rows.

        Parameters
        ----------
        X_train : numpy.ndarray, shape (n, n_features)
            The party's prepared columns on the rows of the forward pass (all aligned rows
            may be used: the preconditioner involves no label, so the hold-out split need
            not be known by the party).
        """
        X = self._check_matrix(X_train)
        n = X.shape[0]
        if n == 0:
            raise DataError("cannot set up the optimizer on zero rows")
        if self.has_intercept:
            X = np.hstack([X, np.ones((n, 1))])
        gram = self.spec.curvature_bound * (X.T @ X) / n
        gram[np.diag_indices_from(gram)] += self.spec.l2 * self._penalized
        self._chol = _cholesky_with_jitter(gram)

    def initialize(self, weights: np.ndarray | None = None, intercept: float = 0.0) -> None:
        """Set the starting point (default zero; the label owner may warm-start the intercept).

        Parameters
        ----------
        weights : numpy.ndarray, optional
            Starting feature weights (e.g. a previous model's slice).
        intercept : float
            Starting intercept (label owner only).
        """
        if self._iteration != 0:
            raise ProtocolAbort(_PHASE, None, "cannot re-initialize an optimizer mid-training")
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64).ravel()
            if w.size != self.n_features:
                raise ConfigurationError(
                    f"initial weights have {w.size} entries, the block has {self.n_features}"
                )
            self._x[: self.n_features] = w
        if self.has_intercept:
            self._x[-1] = float(intercept)
        elif intercept:
            raise ConfigurationError("only the label owner's block has an intercept")

    # -- forward ------------------------------------------------------------------------
    def forward_weights(self) -> np.ndarray:
        """The vector whose image ``X_k v`` the party sends in this iteration's forward pass.

        Returns
        -------
        numpy.ndarray, shape (dim,)
            The current weights at iteration 0, the current search direction afterwards
            (intercept last for the label owner).
        """
        self._check_ready()
        return (self._x if self._iteration == 0 else self._s).copy()

    def forward_scalars(self) -> np.ndarray:
        """Inner products appended to the forward message (summed over parties by masking).

        Returns
        -------
        numpy.ndarray, shape (6,)
            ``[x.x, x.s, x.p, s.s, s.p, p.p]`` over the penalized coordinates (intercept
            excluded), for the label owner's exact plane search of the L2 term.
        """
        m = self._penalized
        x, s, p = self._x[m], self._s[m], self._p[m]
        return np.array([x @ x, x @ s, x @ p, s @ s, s @ p, p @ p], dtype=np.float64)

    def partial_score(self, X: np.ndarray) -> np.ndarray:
        """Plaintext forward message ``X_k v`` (+ intercept) for ``v = forward_weights()``.

        Parameters
        ----------
        X : numpy.ndarray, shape (n, n_features)
            The party's rows of the forward pass.
        """
        X = self._check_matrix(X)
        v = self.forward_weights()
        out = X @ v[: self.n_features]
        if self.has_intercept:
            out = out + v[-1]
        return out

    def data_gradient(self, X: np.ndarray, backward: np.ndarray) -> np.ndarray:
        """Plaintext data gradient ``X_k^T backward`` (+ ``sum(backward)`` for the intercept).

        Parameters
        ----------
        X : numpy.ndarray, shape (n, n_features)
            The party's rows of the forward pass.
        backward : numpy.ndarray, shape (n,)
            The label owner's backward vector ``d / n_train`` (zero on hold-out rows).
        """
        X = self._check_matrix(X)
        b = np.asarray(backward, dtype=np.float64).ravel()
        if b.size != X.shape[0]:
            raise ProtocolAbort(
                _PHASE, None, f"backward vector has {b.size} rows, the block has {X.shape[0]}"
            )
        g = X.T @ b
        if self.has_intercept:
            g = np.append(g, b.sum())
        return g

    # -- backward -----------------------------------------------------------------------
    def step(self, gradient: np.ndarray | None, control: StepControl) -> None:
        """Apply the label owner's move, then turn the gradient into the next direction.

        Parameters
        ----------
        gradient : numpy.ndarray or None, shape (dim,)
            The party's *data* gradient ``X_k^T d / n_train`` (intercept entry last for the
            label owner) at the point reached after the move; the L2 term is added here.
            ``None`` only with ``control.stop``.
        control : StepControl
            The broadcast scalars; its iteration must be the one this optimizer expects.
        """
        self._check_ready()
        if self._finished:
            raise ProtocolAbort(_PHASE, None, "step control received after training stopped")
        if control.iteration != self._iteration:
            raise ProtocolAbort(
                _PHASE,
                None,
                f"step control for iteration {control.iteration} received, "
                f"expected iteration {self._iteration} (out of order or replayed)",
            )
        a, b = float(control.step), float(control.momentum)
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ProtocolAbort(_PHASE, None, "step control carries a non-finite coefficient")
        g = None
        if not control.stop:
            if gradient is None:
                raise ProtocolAbort(_PHASE, None, "a gradient is required unless training stops")
            g = np.asarray(gradient, dtype=np.float64).ravel()
            if g.size != self.dim or not np.all(np.isfinite(g)):
                raise ProtocolAbort(
                    _PHASE, None, f"gradient must be {self.dim} finite numbers, got {g.size}"
                )
        move = a * self._s + b * self._p
        self._x = self._x + move
        self._p = move
        if control.mark_best:
            self._best = self._x.copy()
        if g is None:
            if control.restore_best and self._best is not None:
                self._x = self._best.copy()
            self._finished = True
            return
        g = g + self.spec.l2 * np.where(self._penalized, self._x, 0.0)
        assert self._chol is not None
        y = np.linalg.solve(self._chol, g)
        self._s = -np.linalg.solve(self._chol.T, y)
        self._iteration += 1

    # -- results ------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Index of the next expected :class:`StepControl`."""
        return self._iteration

    @property
    def finished(self) -> bool:
        """Whether a stop control was applied."""
        return self._finished

    @property
    def weights(self) -> np.ndarray:
        """Feature weights of the party's slice (intercept excluded)."""
        return self._x[: self.n_features].copy()

    @property
    def intercept(self) -> float:
        """The intercept (label owner), 0.0 otherwise."""
        return float(self._x[-1]) if self.has_intercept else 0.0

    # -- state for Flower's context.state ------------------------------------------------
    def to_state(self) -> dict[str, np.ndarray]:
        """All state as numpy arrays (for a Flower ``ArrayRecord``)."""
        state = {
            "spec": np.array([_KIND_CODE[self.spec.kind], self.spec.l2]),
            "shape": np.array(
                [self.n_features, int(self.has_intercept), self._iteration, int(self._finished)],
                dtype=np.int64,
            ),
            "x": self._x.copy(),
            "s": self._s.copy(),
            "p": self._p.copy(),
            "best": self._best.copy() if self._best is not None else np.zeros(0),
            "chol": self._chol.copy() if self._chol is not None else np.zeros((0, 0)),
        }
        return state

    @classmethod
    def from_state(cls, spec: ModelSpec, state: dict[str, np.ndarray]) -> BlockOptimizer:
        """Rebuild an optimizer saved by :meth:`to_state`.

        Raises
        ------
        ConfigurationError
            When the state was saved for another model specification or is incomplete.
        """
        missing = {"spec", "shape", "x", "s", "p", "best", "chol"} - set(state)
        if missing:
            raise ConfigurationError(f"optimizer state lacks {sorted(missing)}")
        saved = np.asarray(state["spec"], dtype=np.float64)
        if saved[0] != _KIND_CODE[spec.kind] or saved[1] != spec.l2:
            raise ConfigurationError("optimizer state was saved for another model spec")
        n_features, has_intercept, iteration, finished = (
            int(v) for v in np.asarray(state["shape"])
        )
        opt = cls(spec, n_features, has_intercept=bool(has_intercept))
        for name in ("x", "s", "p"):
            vec = np.asarray(state[name], dtype=np.float64).ravel()
            if vec.size != opt.dim:
                raise ConfigurationError(f"optimizer state vector {name!r} has a wrong size")
            setattr(opt, f"_{name}", vec.copy())
        best = np.asarray(state["best"], dtype=np.float64).ravel()
        opt._best = best.copy() if best.size else None
        chol = np.asarray(state["chol"], dtype=np.float64)
        opt._chol = chol.copy() if chol.size else None
        opt._iteration = iteration
        opt._finished = bool(finished)
        return opt

    # -- helpers --------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if self._chol is None:
            raise ProtocolAbort(_PHASE, None, "optimizer used before setup()")

    def _check_matrix(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise DataError(
                f"block has {self.n_features} prepared columns, got an array of shape {X.shape}"
            )
        return X

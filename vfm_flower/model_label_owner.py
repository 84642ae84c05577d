"""Vertical regression, the label owner's side: stopping rules, the exact plane search, the
coordinator, and the plaintext reference run.

The label owner keeps the scores ``z`` and the image ``r = X p`` of the previous step; with the
summed image of the directions and the six summed inner products it knows the objective
exactly on the plane ``x + a s + b p`` and picks ``(a, b)`` (:func:`_plane_search`), which
:class:`LabelOwnerCoordinator` turns into the next step. :class:`ConvergenceMonitor` holds the
rules that end training. :func:`train_vertical_plaintext` runs the whole optimizer with every
block in plain: the reference the encrypted protocol (``vfm_flower.private_gradients``)
reproduces up to fixed-point rounding. The method and the party side are in
:mod:`vfm_flower.model`.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vfm_flower.errors import ConfigurationError, DataError, ProtocolAbort
from vfm_flower.model import (
    _PHASE,
    N_FORWARD_SCALARS,
    BlockOptimizer,
    ModelKind,
    ModelSpec,
    StepControl,
    _curvature,
    loss,
    residual,
)

__all__ = [
    "ConvergenceMonitor",
    "LabelOwnerCoordinator",
    "TrainingResult",
    "train_vertical_plaintext",
    "holdout_split",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- label owner side
@dataclass
class ConvergenceMonitor:
    """Label-owner rules that end training; turns the chosen step into a :class:`StepControl`.

    The label owner sees the exact training objective each iteration (its own rows, plus the
    summed L2 scalars) but no party's gradient, so convergence is judged on the objective:
    stop when its relative decrease over the last ``window`` iterations is below ``tol``.
    The plane search makes the objective monotone, so there is no restart flag to decide:
    a restart is the search choosing ``momentum = 0``.

    Parameters
    ----------
    max_iterations : int
        Maximum number of backward (gradient) rounds.
    tol : float
        Relative objective decrease over ``window`` iterations below which training stops.
    window : int
        Number of iterations of the convergence test.
    patience : int or None
        Early stopping: stop when the hold-out loss has not improved by ``min_delta`` for
        this many iterations, and finish on the best hold-out point. ``None`` (default)
        disables it: with an L2 penalty the objective has one optimum, and using the
        hold-out rows for model selection would bias the hold-out metrics that are reported.
    min_delta : float
        Minimum hold-out loss improvement that counts for ``patience``.
    """

    max_iterations: int = 40
    tol: float = 1e-5
    window: int = 2
    patience: int | None = None
    min_delta: float = 0.0
    objective: list[float] = field(default_factory=list)
    holdout_loss: list[float] = field(default_factory=list)
    best_iteration: int = -1
    reason: str = ""

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ConfigurationError("max_iterations must be at least 1")
        if self.window < 1 or self.tol < 0:
            raise ConfigurationError("window must be >= 1 and tol >= 0")
        if self.patience is not None and self.patience < 1:
            raise ConfigurationError("patience must be >= 1 or None")

    def update(
        self,
        train_objective: float,
        holdout_loss: float | None = None,
        *,
        step: float = 0.0,
        momentum: float = 0.0,
    ) -> StepControl:
        """Record this iteration's figures and decide.

        Parameters
        ----------
        train_objective : float
            Regularized training objective at the point reached by the move.
        holdout_loss : float, optional
            Mean loss on the hold-out rows at that point.
        step, momentum : float
            The coefficients chosen by the plane search (passed through).

        Returns
        -------
        StepControl
            The control to broadcast, with ``stop`` and ``reason`` set when training ends.
        """
        t = len(self.objective)
        if not math.isfinite(train_objective):
            raise ProtocolAbort(_PHASE, None, "training objective is not finite (diverged)")
        self.objective.append(float(train_objective))
        mark_best = False
        if holdout_loss is not None and math.isfinite(holdout_loss):
            self.holdout_loss.append(float(holdout_loss))
            best = self.holdout_loss[self.best_iteration] if self.best_iteration >= 0 else math.inf
            if holdout_loss < best - self.min_delta:
                self.best_iteration = t
                mark_best = True
        stop, reason, restore = False, "", False
        if t >= self.window:
            before = self.objective[t - self.window]
            scale = max(abs(train_objective), 1e-12)
            if (before - train_objective) <= self.tol * scale:
                stop, reason = True, "converged"
        if (
            not stop
            and self.patience is not None
            and self.best_iteration >= 0
            and t - self.best_iteration >= self.patience
        ):
            stop, reason, restore = True, "early_stopping", True
        if not stop and t >= self.max_iterations:
            stop, reason = True, "max_iterations"
        if stop:
            self.reason = reason
        return StepControl(
            iteration=t,
            step=float(step),
            momentum=float(momentum),
            mark_best=mark_best,
            stop=stop,
            restore_best=restore,
            reason=reason,
        )


#: The coefficient bounds of the plane search: ``|a| <= 2**10`` for the direction, ``|b| <= 4``
#: for the momentum. A passive party applies ``a s + b p`` to its encrypted state with ``s``
#: and ``p`` truncated to ``2**-24`` (``vfm_flower.private_gradients``), so its move differs
#: from the one the label owner tracks by up to ``|a| + |b|`` units of ``2**-24`` per weight,
#: and the momentum carries the last difference on, multiplied by ``b``. In the plaintext
#: runs of the test data ``a`` stays below 11 and ``b`` below 2.1 (318 steps, logistic and
#: linear). Coefficients beyond arise when the directions reach the fixed-point floor (images
#: of rounding noise, ~1e-7) and the search fits the noise: ``a`` of 1e5..1e9 at once, or
#: ``|a|, |b|`` of 20..40 for a few iterations, each multiplying the carried difference,
#: which made the tracked and the saved scores differ by 0.1..3 (the ``model_consistency``
#: abort of about one linear job in three with an uninformative partner column). A direction
#: whose best coefficient exceeds its bound is dropped for the iteration (coefficient 0: for
#: the momentum, a restart) and the search runs again on the others.
MAX_STEP_COEFFICIENT = 2.0**10
MAX_MOMENTUM_COEFFICIENT = 4.0


def _plane_search(
    z: np.ndarray,
    directions: np.ndarray,
    y: np.ndarray,
    kind: ModelKind,
    l2: float,
    linear_term: np.ndarray,
    gram: np.ndarray,
    bounds: Sequence[float] = (MAX_STEP_COEFFICIENT, MAX_MOMENTUM_COEFFICIENT),
) -> np.ndarray:
    """Minimize ``L(z + D c) + l2 (h.c + c^T G c / 2)`` over ``c`` by damped Newton.

    ``D`` (n, m) are the direction images on the training rows, ``h`` and ``G`` the summed
    inner products of the party vectors, ``bounds[j]`` the largest ``|c_j|`` (see
    :data:`MAX_STEP_COEFFICIENT`). Inactive (zero) directions get coefficient 0, and so does a
    direction whose best coefficient exceeds its bound (the search runs again without it).
    """
    m = directions.shape[1]
    limit = np.asarray(bounds, dtype=np.float64)
    if limit.shape != (m,):
        raise ValueError(f"the plane search needs {m} coefficient bounds")
    coef = np.zeros(m)
    active = np.array(
        [np.any(directions[:, j] != 0.0) or gram[j, j] > 0.0 for j in range(m)], dtype=bool
    )
    while active.any():
        c = _newton_on_plane(
            z, directions[:, active], y, kind, l2, linear_term[active], gram[np.ix_(active, active)]
        )
        too_large = np.abs(c) > limit[active]
        if not too_large.any():
            coef[active] = c
            return coef
        active[np.flatnonzero(active)[too_large]] = False
    return coef


def _newton_on_plane(
    z: np.ndarray,
    D: np.ndarray,
    y: np.ndarray,
    kind: ModelKind,
    l2: float,
    h: np.ndarray,
    G: np.ndarray,
) -> np.ndarray:
    """The damped Newton iterations of :func:`_plane_search` on its active directions."""
    n = z.size
    c = np.zeros(D.shape[1])

    def objective(cv: np.ndarray) -> float:
        return loss(z + D @ cv, y, kind) + l2 * (h @ cv + 0.5 * cv @ G @ cv)

    f = objective(c)
    for _ in range(100):
        zz = z + D @ c
        d = residual(zz, y, kind)
        grad = D.T @ d / n + l2 * (h + G @ c)
        hess = (D * _curvature(zz, kind)[:, None]).T @ D / n + l2 * G
        hess = 0.5 * (hess + hess.T)
        ridge = 1e-12 * max(float(np.trace(hess)), 1e-300)
        try:
            delta = -np.linalg.solve(hess + ridge * np.eye(hess.shape[0]), grad)
        except np.linalg.LinAlgError:
            delta = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = -float(grad @ delta)
        if not math.isfinite(decrement) or decrement <= 1e-18 * max(abs(f), 1e-300):
            break
        t = 1.0
        while True:
            trial = objective(c + t * delta)
            if trial <= f - 0.25 * t * decrement:
                break
            t *= 0.5
            if t < 1e-12:
                break
        if t < 1e-12:
            break
        c = c + t * delta
        f = trial
        if decrement < 1e-15 * max(abs(f), 1e-12):
            break
    return c


class LabelOwnerCoordinator:
    """The label owner's side of the optimizer: scores, plane search, residual, stop rule.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    y : numpy.ndarray, shape (n,)
        Labels (0/1) or targets of all aligned rows, in the aligned order.
    holdout_mask : numpy.ndarray of bool, optional
        True for hold-out rows (evaluated, never trained on). ``None``: all rows train.
    monitor : ConvergenceMonitor, optional
        Stop rules (default ``ConvergenceMonitor()``).
    coefficient_bits : int, optional
        Round the step coefficients ``(a, b)`` to multiples of ``2**-coefficient_bits``
        before using them (the private-gradient protocol, where passive parties apply them in
        fixed point).

    Notes
    -----
    Call :meth:`advance` once per forward round with the unmasked sum over all parties
    (its own block included) of ``partial_score`` and of ``forward_scalars``. It returns the
    control to broadcast and the backward vector (``None`` when training stops).
    """

    def __init__(
        self,
        spec: ModelSpec,
        y: np.ndarray,
        *,
        holdout_mask: np.ndarray | None = None,
        monitor: ConvergenceMonitor | None = None,
        coefficient_bits: int | None = None,
    ) -> None:
        self.spec = spec
        self.coefficient_bits = coefficient_bits
        self.y = np.asarray(y, dtype=np.float64).ravel()
        n = self.y.size
        if holdout_mask is None:
            holdout_mask = np.zeros(n, dtype=bool)
        self.holdout_mask = np.asarray(holdout_mask, dtype=bool).ravel()
        if self.holdout_mask.size != n:
            raise DataError(f"hold-out mask has {self.holdout_mask.size} rows, labels have {n}")
        self.train_mask = ~self.holdout_mask
        self.n_train = int(self.train_mask.sum())
        if self.n_train == 0:
            raise DataError("no training rows left after the hold-out split")
        if not np.all(np.isfinite(self.y)):
            raise DataError("labels contain missing or non-finite values")
        if spec.kind == "logistic":
            ytr = self.y[self.train_mask]
            if not np.all((ytr == 0) | (ytr == 1)):
                raise DataError("logistic regression needs labels encoded as 0/1")
            if ytr.min() == ytr.max():
                raise DataError(
                    f"all {self.n_train} training rows have the same label: nothing to learn"
                )
        self.monitor = monitor if monitor is not None else ConvergenceMonitor()
        self.z = np.zeros(n)
        self._r = np.zeros(n)
        self._xx = 0.0
        self._iteration = 0
        self._done = False
        self.decrement: list[float] = []

    def initial_intercept(self) -> float:
        """Warm start for the label owner's intercept: the optimum of the intercept-only model."""
        ytr = self.y[self.train_mask]
        mean = float(ytr.mean())
        if self.spec.kind == "logistic":
            return math.log(mean / (1.0 - mean))
        return mean

    @property
    def iteration(self) -> int:
        """Index of the next decision."""
        return self._iteration

    def objective(self) -> float:
        """Regularized training objective at the current point."""
        tr = self.train_mask
        return loss(self.z[tr], self.y[tr], self.spec.kind) + 0.5 * self.spec.l2 * self._xx

    def holdout_loss(self) -> float | None:
        """Mean loss on the hold-out rows at the current point (``None`` without hold-out)."""
        ho = self.holdout_mask
        if not ho.any():
            return None
        return loss(self.z[ho], self.y[ho], self.spec.kind)

    def advance(
        self, forward_sum: np.ndarray, scalars: np.ndarray
    ) -> tuple[StepControl, np.ndarray | None]:
        """Turn one forward round into the next control and backward vector.

        Parameters
        ----------
        forward_sum : numpy.ndarray, shape (n,)
            ``sum_k partial_score_k`` over all aligned rows: the score of the initial
            weights at iteration 0, the image of the summed directions afterwards.
        scalars : numpy.ndarray, shape (6,)
            ``sum_k forward_scalars_k``.

        Returns
        -------
        control : StepControl
            To broadcast to every party.
        backward : numpy.ndarray or None
            ``d / n_train`` on training rows, 0 on hold-out rows; ``None`` when training stops.
        """
        if self._done:
            raise ProtocolAbort(_PHASE, None, "forward round received after training stopped")
        u = np.asarray(forward_sum, dtype=np.float64).ravel()
        sc = np.asarray(scalars, dtype=np.float64).ravel()
        if u.size != self.y.size or sc.size != N_FORWARD_SCALARS:
            raise ProtocolAbort(
                _PHASE,
                None,
                f"forward round has {u.size} rows and {sc.size} scalars, "
                f"expected {self.y.size} and {N_FORWARD_SCALARS}",
            )
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(sc))):
            raise ProtocolAbort(_PHASE, None, "forward round contains non-finite values")
        xx, xs, xp, ss, sp, pp = (float(v) for v in sc)
        a = b = 0.0
        if self._iteration == 0:
            self.z = u.copy()
            self._xx = xx
        else:
            tr = self.train_mask
            D = np.stack([u, self._r], axis=1)
            h = np.array([xs, xp])
            G = np.array([[ss, sp], [sp, pp]])
            d0 = residual(self.z[tr], self.y[tr], self.spec.kind)
            # g.s = -g^T M^-1 g: the preconditioned squared gradient norm, known here.
            self.decrement.append(-(float(u[tr] @ d0) / self.n_train + self.spec.l2 * xs))
            a, b = _plane_search(self.z[tr], D[tr], self.y[tr], self.spec.kind, self.spec.l2, h, G)
            if self.coefficient_bits is not None:
                # the passive parties apply the move in fixed point: use exactly their values
                unit = 2.0**self.coefficient_bits
                a, b = round(a * unit) / unit, round(b * unit) / unit
            move = a * u + b * self._r
            self.z = self.z + move
            self._r = move
            self._xx = xx + 2 * a * xs + 2 * b * xp + a * a * ss + 2 * a * b * sp + b * b * pp
        control = self.monitor.update(
            self.objective(), self.holdout_loss(), step=float(a), momentum=float(b)
        )
        self._iteration += 1
        if control.stop:
            self._done = True
            if control.restore_best:
                logger.info("early stopping: the parties restore their best hold-out point")
            return control, None
        backward = np.zeros_like(self.z)
        tr = self.train_mask
        backward[tr] = residual(self.z[tr], self.y[tr], self.spec.kind) / self.n_train
        return control, backward

    def to_state(self) -> dict[str, np.ndarray]:
        """Score-tracking state as numpy arrays (labels are reloaded from the party's data)."""
        return {
            "z": self.z.copy(),
            "r": self._r.copy(),
            "scalars": np.array([self._xx, float(self._iteration), float(self._done)]),
            "holdout_mask": self.holdout_mask.astype(np.int8),
            "objective": np.array(self.monitor.objective),
            "holdout_loss": np.array(self.monitor.holdout_loss),
            "best_iteration": np.array([self.monitor.best_iteration], dtype=np.int64),
        }

    @classmethod
    def from_state(
        cls,
        spec: ModelSpec,
        y: np.ndarray,
        state: dict[str, np.ndarray],
        monitor: ConvergenceMonitor | None = None,
        coefficient_bits: int | None = None,
    ) -> LabelOwnerCoordinator:
        """Rebuild a coordinator saved by :meth:`to_state` (``monitor`` holds the settings)."""
        coord = cls(
            spec,
            y,
            holdout_mask=np.asarray(state["holdout_mask"]).astype(bool),
            monitor=monitor,
            coefficient_bits=coefficient_bits,
        )
        coord.z = np.asarray(state["z"], dtype=np.float64).copy()
        coord._r = np.asarray(state["r"], dtype=np.float64).copy()
        xx, it, done = (float(v) for v in np.asarray(state["scalars"]))
        coord._xx, coord._iteration, coord._done = xx, int(it), bool(done)
        coord.monitor.objective = [float(v) for v in np.asarray(state["objective"])]
        coord.monitor.holdout_loss = [float(v) for v in np.asarray(state["holdout_loss"])]
        coord.monitor.best_iteration = int(np.asarray(state["best_iteration"])[0])
        return coord


# --------------------------------------------------------------------------- simulation
@dataclass
class TrainingResult:
    """Outcome of :func:`train_vertical_plaintext`.

    Attributes
    ----------
    weights : list of numpy.ndarray
        Each block's feature weights, in block order.
    intercept : float
        The label owner's intercept.
    iterations : int
        Backward (gradient) rounds run.
    reason : str
        Why training stopped.
    scores : numpy.ndarray
        Linear scores of all rows as tracked by the label owner.
    holdout_mask : numpy.ndarray of bool
        The hold-out rows.
    objective : list of float
        Training objective after each decision (index 0: the starting point).
    holdout_loss : list of float
        Hold-out loss after each decision (empty without hold-out).
    """

    weights: list[np.ndarray]
    intercept: float
    iterations: int
    reason: str
    scores: np.ndarray
    holdout_mask: np.ndarray
    objective: list[float]
    holdout_loss: list[float]

    def predict_score(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """Linear scores of new rows from the blocks' prepared columns (same block order)."""
        if len(blocks) != len(self.weights):
            raise DataError(f"expected {len(self.weights)} blocks, got {len(blocks)}")
        z = np.full(np.asarray(blocks[0]).shape[0], self.intercept)
        for X, w in zip(blocks, self.weights):
            z = z + np.asarray(X, dtype=np.float64) @ w
        return z


def train_vertical_plaintext(
    blocks: Sequence[np.ndarray],
    y: np.ndarray,
    spec: ModelSpec,
    *,
    max_iterations: int = 40,
    holdout_mask: np.ndarray | None = None,
    label_block: int = -1,
    monitor: ConvergenceMonitor | None = None,
) -> TrainingResult:
    """Run the vertical protocol in plain numpy, with the real message pattern.

    Each block gets its own :class:`BlockOptimizer`; the label owner's
    :class:`LabelOwnerCoordinator` sees only the summed forward messages; each party
    receives only its own gradient and the broadcast :class:`StepControl`. This is the
    reference the encrypted protocol must reproduce (up to fixed-point rounding).

    Parameters
    ----------
    blocks : sequence of numpy.ndarray
        Each party's prepared columns, all with the same aligned rows.
    y : numpy.ndarray
        Labels 0/1 (logistic) or targets (linear).
    spec : ModelSpec
        The model.
    max_iterations : int
        Maximum number of backward rounds (ignored when ``monitor`` is given).
    holdout_mask : numpy.ndarray of bool, optional
        Hold-out rows (never trained on).
    label_block : int
        Index of the label owner's block (it also holds the intercept).
    monitor : ConvergenceMonitor, optional
        Custom stop rules.

    Returns
    -------
    TrainingResult
    """
    mats = [np.asarray(X, dtype=np.float64) for X in blocks]
    if not mats:
        raise DataError("no blocks to train on")
    y = np.asarray(y, dtype=np.float64).ravel()
    for k, X in enumerate(mats):
        if X.ndim != 2 or X.shape[0] != y.size:
            raise DataError(f"block {k} has shape {X.shape}, expected ({y.size}, m)")
    lo = label_block % len(mats)
    coord = LabelOwnerCoordinator(
        spec,
        y,
        holdout_mask=holdout_mask,
        monitor=monitor or ConvergenceMonitor(max_iterations=max_iterations),
    )
    opts = [BlockOptimizer(spec, X.shape[1], has_intercept=(k == lo)) for k, X in enumerate(mats)]
    for opt, X in zip(opts, mats):
        opt.setup(X)
    opts[lo].initialize(intercept=coord.initial_intercept())
    while True:
        forward = sum(opt.partial_score(X) for opt, X in zip(opts, mats))
        scalars = sum(opt.forward_scalars() for opt in opts)
        control, backward = coord.advance(np.asarray(forward), np.asarray(scalars))
        for opt, X in zip(opts, mats):
            gradient = None if backward is None else opt.data_gradient(X, backward)
            opt.step(gradient, control)
        if control.stop:
            break
    return TrainingResult(
        weights=[opt.weights for opt in opts],
        intercept=opts[lo].intercept,
        iterations=coord.iteration - 1,
        reason=coord.monitor.reason,
        scores=coord.z.copy(),
        holdout_mask=coord.holdout_mask.copy(),
        objective=list(coord.monitor.objective),
        holdout_loss=list(coord.monitor.holdout_loss),
    )


def holdout_split(
    n: int,
    fraction: float = 0.3,
    stratify: np.ndarray | None = None,
    *,
    seed: int | None = None,
) -> np.ndarray:
    """Choose hold-out rows (label owner only).

    Parameters
    ----------
    n : int
        Number of aligned rows.
    fraction : float
        Share of rows held out, in (0, 1).
    stratify : numpy.ndarray, optional
        Labels: each class is held out in the same proportion (at least one row of each
        class with two or more rows stays on each side).
    seed : int, optional
        Seed for a reproducible split. Without it the generator is seeded from
        ``secrets.randbits(128)``: the split is not a secret (it only has to be
        unpredictable enough not to be gamed), so numpy's PCG64 seeded from the OS CSPRNG
        is sufficient.

    Returns
    -------
    numpy.ndarray of bool, shape (n,)
        True for hold-out rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"hold-out fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"need at least 2 rows for a hold-out split, got {n}")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    mask = np.zeros(n, dtype=bool)
    if stratify is None:
        k = min(max(int(round(fraction * n)), 1), n - 1)
        mask[rng.choice(n, size=k, replace=False)] = True
        return mask
    labels = np.asarray(stratify).ravel()
    if labels.size != n:
        raise DataError(f"stratify has {labels.size} rows, expected {n}")
    if np.unique(labels).size > max(2, n // 2):
        raise ConfigurationError("stratify expects class labels, not a continuous target")
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        k = int(round(fraction * idx.size))
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask

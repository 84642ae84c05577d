"""The vertical optimizer: accuracy against centralized scikit-learn, protocol invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score as sk_r2
from sklearn.metrics import roc_auc_score

from vfm_flower.errors import ConfigurationError, DataError, ProtocolAbort
from vfm_flower.metrics import roc_auc
from vfm_flower.model import (
    N_FORWARD_SCALARS,
    BlockOptimizer,
    ModelSpec,
    StepControl,
    link,
    loss,
    residual,
)
from vfm_flower.model_label_owner import (
    MAX_STEP_COEFFICIENT,
    ConvergenceMonitor,
    LabelOwnerCoordinator,
    _plane_search,
    holdout_split,
    train_vertical_plaintext,
)

L2 = 1e-3
SEED = 0


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def caravan_blocks():
    """Caravan prepared per party (broker M*, bank P*, insurer A* + label), 70/30 split."""
    from vfm_flower.demo_data import load_caravan
    from vfm_flower.preparation import apply_preparation, encode_labels, fit_preparation

    frame = load_caravan()
    y = encode_labels(frame["Purchase"], "Yes", party="insurer").astype(np.float64)
    blocks = []
    for party, prefix in (("broker", "M"), ("bank", "P"), ("insurer", "A")):
        # "Purchase" (the label) also starts with "P": it stays with the insurer.
        cols = [c for c in frame.columns if c.startswith(prefix) and c != "Purchase"]
        plan = fit_preparation(frame, cols, party=party)
        blocks.append(apply_preparation(plan, frame).matrix)
    holdout = holdout_split(y.size, 0.3, stratify=y, seed=SEED)
    return blocks, y, holdout


def _sklearn_logistic(X: np.ndarray, y: np.ndarray, holdout: np.ndarray) -> np.ndarray:
    train = ~holdout
    model = LogisticRegression(C=1.0 / (L2 * train.sum()), tol=1e-10, max_iter=10_000)
    model.fit(X[train], y[train])
    return model.decision_function(X)


def _standardized(X: np.ndarray) -> np.ndarray:
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


# --------------------------------------------------------------------------- accuracy
def test_caravan_three_parties_matches_centralized(caravan_blocks):
    blocks, y, holdout = caravan_blocks
    result = train_vertical_plaintext(blocks, y, ModelSpec("logistic", L2), holdout_mask=holdout)
    ref = _sklearn_logistic(np.hstack(blocks), y, holdout)
    auc_vertical = roc_auc(y[holdout], result.scores[holdout])
    auc_central = roc_auc_score(y[holdout], ref[holdout])
    assert result.iterations <= 40
    assert abs(auc_vertical - auc_central) < 0.01
    # The label owner's tracked scores are the parties' weights applied to their columns.
    np.testing.assert_allclose(result.predict_score(blocks), result.scores, atol=1e-9)
    # Exact plane search: the objective never increases.
    assert all(b <= a * (1 + 1e-12) for a, b in zip(result.objective, result.objective[1:]))


def test_caravan_insurer_alone_is_worse(caravan_blocks):
    blocks, y, holdout = caravan_blocks
    spec = ModelSpec("logistic", L2)
    joint = train_vertical_plaintext(blocks, y, spec, holdout_mask=holdout)
    alone = train_vertical_plaintext([blocks[2]], y, spec, holdout_mask=holdout)
    auc_joint = roc_auc(y[holdout], joint.scores[holdout])
    auc_alone = roc_auc(y[holdout], alone.scores[holdout])
    assert alone.iterations <= 40
    assert auc_alone < auc_joint - 0.02


@pytest.mark.parametrize("split", [(10, 20), (15,)], ids=["3-blocks", "2-blocks"])
def test_breast_cancer_blocks_match_centralized(split):
    data = load_breast_cancer()
    X = _standardized(data.data)
    y = data.target.astype(np.float64)
    holdout = holdout_split(y.size, 0.3, stratify=y, seed=SEED)
    blocks = np.split(X, list(split), axis=1)
    result = train_vertical_plaintext(blocks, y, ModelSpec("logistic", L2), holdout_mask=holdout)
    ref = _sklearn_logistic(X, y, holdout)
    assert result.iterations <= 40
    assert abs(roc_auc(y[holdout], result.scores[holdout]) - roc_auc(y[holdout], ref[holdout])) < (
        0.01
    )


def test_label_owner_without_features():
    data = load_breast_cancer()
    X = _standardized(data.data)
    y = data.target.astype(np.float64)
    blocks = [X[:, :15], X[:, 15:], np.zeros((y.size, 0))]
    result = train_vertical_plaintext(blocks, y, ModelSpec("logistic", 1e-2))
    assert result.weights[2].shape == (0,)
    ref = LogisticRegression(C=1.0 / (1e-2 * y.size), tol=1e-10, max_iter=10_000).fit(X, y)
    assert abs(result.intercept - ref.intercept_[0]) < 1e-2


def test_diabetes_linear_matches_ridge():
    data = load_diabetes()
    X = _standardized(data.data)
    y = data.target.astype(np.float64)
    holdout = holdout_split(y.size, 0.3, seed=SEED)
    train = ~holdout
    blocks = [X[:, :4], X[:, 4:7], X[:, 7:]]
    result = train_vertical_plaintext(blocks, y, ModelSpec("linear", L2), holdout_mask=holdout)
    ridge = Ridge(alpha=L2 * train.sum()).fit(X[train], y[train])
    r2_vertical = sk_r2(y[holdout], result.scores[holdout])
    r2_central = sk_r2(y[holdout], ridge.predict(X[holdout]))
    assert result.iterations <= 40
    assert abs(r2_vertical - r2_central) < 0.01
    # Linear regression: the plane search is preconditioned CG, so it is exact.
    np.testing.assert_allclose(np.concatenate(result.weights), ridge.coef_, rtol=1e-6, atol=1e-6)
    assert result.reason == "converged"


def test_fixed_point_forward_does_not_hurt(caravan_blocks, monkeypatch):
    """The masked forward rounds values to 2**-24: the plane search tolerates it."""
    blocks, y, holdout = caravan_blocks
    spec = ModelSpec("logistic", L2)
    exact = train_vertical_plaintext(blocks, y, spec, holdout_mask=holdout)
    original = LabelOwnerCoordinator.advance

    def rounded(self, forward_sum, scalars):
        q = 2.0**24
        return original(self, np.round(forward_sum * q) / q, np.round(scalars * q) / q)

    monkeypatch.setattr(LabelOwnerCoordinator, "advance", rounded)
    noisy = train_vertical_plaintext(blocks, y, spec, holdout_mask=holdout)
    auc_exact = roc_auc(y[holdout], exact.scores[holdout])
    auc_noisy = roc_auc(y[holdout], noisy.predict_score(blocks)[holdout])
    assert abs(auc_exact - auc_noisy) < 1e-3


# --------------------------------------------------------------------------- protocol pieces
def _manual_run_with_state_round_trips(blocks, y, spec, holdout):
    """The same protocol, each party rebuilt from its saved state at every message."""
    lo = len(blocks) - 1
    coord = LabelOwnerCoordinator(spec, y, holdout_mask=holdout)
    states = []
    for k, X in enumerate(blocks):
        opt = BlockOptimizer(spec, X.shape[1], has_intercept=(k == lo))
        opt.setup(X)
        if k == lo:
            opt.initialize(intercept=coord.initial_intercept())
        states.append(opt.to_state())
    while True:
        opts = [BlockOptimizer.from_state(spec, s) for s in states]
        forward = sum(o.partial_score(X) for o, X in zip(opts, blocks))
        scalars = sum(o.forward_scalars() for o in opts)
        coord = LabelOwnerCoordinator.from_state(spec, y, coord.to_state(), coord.monitor)
        control, backward = coord.advance(forward, scalars)
        wire = StepControl.from_dict(control.to_dict())
        for k, (o, X) in enumerate(zip(opts, blocks)):
            grad = None if backward is None else o.data_gradient(X, backward)
            o.step(grad, wire)
            states[k] = o.to_state()
        if control.stop:
            return [BlockOptimizer.from_state(spec, s) for s in states]


def test_state_round_trips_reproduce_the_reference():
    data = load_breast_cancer()
    X = _standardized(data.data)
    y = data.target.astype(np.float64)
    holdout = holdout_split(y.size, 0.3, stratify=y, seed=SEED)
    blocks = [X[:, :12], X[:, 12:]]
    spec = ModelSpec("logistic", 1e-2)
    ref = train_vertical_plaintext(blocks, y, spec, holdout_mask=holdout)
    opts = _manual_run_with_state_round_trips(blocks, y, spec, holdout)
    for w_ref, opt in zip(ref.weights, opts):
        np.testing.assert_allclose(opt.weights, w_ref, rtol=0, atol=1e-12)
    assert opts[-1].intercept == pytest.approx(ref.intercept, abs=1e-12)


def test_optimizer_refuses_out_of_order_and_bad_input():
    spec = ModelSpec("logistic", L2)
    opt = BlockOptimizer(spec, 3)
    with pytest.raises(ProtocolAbort):
        opt.forward_weights()  # before setup
    X = np.random.default_rng(1).normal(size=(20, 3))
    opt.setup(X)
    assert opt.forward_scalars().shape == (N_FORWARD_SCALARS,)
    with pytest.raises(ProtocolAbort, match="expected iteration 0"):
        opt.step(np.zeros(3), StepControl(iteration=1))
    with pytest.raises(ProtocolAbort, match="finite"):
        opt.step(np.array([np.nan, 0.0, 0.0]), StepControl(iteration=0))
    with pytest.raises(ProtocolAbort, match="gradient is required"):
        opt.step(None, StepControl(iteration=0))
    opt.step(np.ones(3), StepControl(iteration=0))
    assert opt.iteration == 1
    with pytest.raises(ProtocolAbort, match="non-finite"):
        StepControl.from_dict({**StepControl(1).to_dict(), "step": float("inf")})
    opt.step(None, StepControl(iteration=1, step=0.5, stop=True, reason="converged"))
    assert opt.finished
    with pytest.raises(ProtocolAbort, match="after training stopped"):
        opt.step(np.ones(3), StepControl(iteration=1))
    with pytest.raises(ConfigurationError, match="another model spec"):
        BlockOptimizer.from_state(ModelSpec("linear", L2), opt.to_state())
    with pytest.raises(DataError):
        opt.partial_score(np.zeros((5, 4)))


def test_coordinator_checks_forward_shapes_and_labels():
    spec = ModelSpec("logistic", L2)
    coord = LabelOwnerCoordinator(spec, np.array([0, 1, 0, 1.0]))
    with pytest.raises(ProtocolAbort, match="expected 4"):
        coord.advance(np.zeros(3), np.zeros(N_FORWARD_SCALARS))
    with pytest.raises(DataError, match="same label"):
        LabelOwnerCoordinator(spec, np.ones(5))
    with pytest.raises(DataError, match="0/1"):
        LabelOwnerCoordinator(spec, np.array([0.0, 2.0, 1.0]))


def test_monitor_rules():
    m = ConvergenceMonitor(max_iterations=3, tol=1e-9, window=1)
    controls = [m.update(f) for f in (1.0, 0.5, 0.25, 0.125)]
    assert [c.stop for c in controls] == [False, False, False, True]
    assert controls[-1].reason == "max_iterations"

    m = ConvergenceMonitor(tol=1e-3, window=2)
    controls = [m.update(f) for f in (1.0, 0.9, 0.8999, 0.89985)]
    assert controls[-1].stop and controls[-1].reason == "converged"

    m = ConvergenceMonitor(tol=0.0, patience=2)
    seq = [(1.0, 0.6), (0.9, 0.5), (0.8, 0.55), (0.7, 0.56)]
    controls = [m.update(f, h) for f, h in seq]
    assert [c.mark_best for c in controls] == [True, True, False, False]
    assert controls[-1].stop and controls[-1].restore_best
    assert controls[-1].reason == "early_stopping" and m.best_iteration == 1

    with pytest.raises(ProtocolAbort, match="not finite"):
        ConvergenceMonitor().update(math.nan)


def test_early_stopping_restores_best_point():
    data = load_breast_cancer()
    X = _standardized(data.data)
    y = data.target.astype(np.float64)
    holdout = holdout_split(y.size, 0.3, stratify=y, seed=SEED)
    spec = ModelSpec("logistic", 1e-5)
    monitor = ConvergenceMonitor(max_iterations=40, tol=0.0, patience=3)
    result = train_vertical_plaintext(
        [X[:, :15], X[:, 15:]], y, spec, holdout_mask=holdout, monitor=monitor
    )
    if result.reason == "early_stopping":
        best = int(np.argmin(result.holdout_loss))
        z = result.predict_score([X[:, :15], X[:, 15:]])
        assert loss(z[holdout], y[holdout], "logistic") == pytest.approx(
            result.holdout_loss[best], rel=1e-9
        )
    else:  # the hold-out loss kept improving: nothing to restore
        assert result.reason in {"converged", "max_iterations"}


# --------------------------------------------------------------------------- small pieces
def test_loss_link_residual_are_stable():
    z = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0])
    y = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    p = link(z, "logistic")
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0
    value = loss(z, y, "logistic")
    expected = np.mean([0.0, np.log1p(np.exp(-5.0)), np.log(2.0), np.log1p(np.exp(-5.0)), 0.0])
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(residual(z, y, "logistic"), p - y)
    assert loss(np.array([1.0, 3.0]), np.array([0.0, 1.0]), "linear") == pytest.approx(1.25)
    np.testing.assert_array_equal(link(z, "linear"), z)
    with pytest.raises(ConfigurationError):
        ModelSpec("poisson")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ModelSpec("logistic", -1.0)
    assert ModelSpec.from_dict(ModelSpec("linear", 0.5).to_dict()) == ModelSpec("linear", 0.5)


def test_holdout_split():
    y = np.r_[np.zeros(940), np.ones(60)]
    a = holdout_split(y.size, 0.3, stratify=y, seed=7)
    b = holdout_split(y.size, 0.3, stratify=y, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 300 and y[a].sum() == 18
    c = holdout_split(y.size, 0.3, stratify=y)  # CSPRNG-seeded
    d = holdout_split(y.size, 0.3, stratify=y)
    assert c.sum() == 300 and not np.array_equal(c, d)
    assert holdout_split(10, 0.3).sum() == 3
    with pytest.raises(ConfigurationError):
        holdout_split(10, 1.5)


def test_the_plane_search_drops_a_direction_at_the_fixed_point_floor():
    """A direction whose image is rounding noise (1e-7) gets coefficient 0, not the 1e6 that
    fits the noise; the informative direction keeps its exact coefficient."""
    rng = np.random.default_rng(0)
    n = 400
    z = rng.normal(size=n)
    informative = rng.normal(size=n)
    y = z + 0.5 * informative + rng.normal(size=n)
    noise = 1e-7 * rng.normal(size=n)
    D = np.stack([informative, noise], axis=1)
    zero = np.zeros(2)
    unbounded = np.linalg.lstsq(D, y - z, rcond=None)[0]
    assert abs(unbounded[1]) > 100 * MAX_STEP_COEFFICIENT  # what the search used to take
    coef = _plane_search(z, D, y, "linear", 0.0, zero, np.zeros((2, 2)))
    assert coef[1] == 0.0
    expected = float(informative @ (y - z) / (informative @ informative))
    assert coef[0] == pytest.approx(expected, rel=1e-9)
    # both at the floor: no move at all
    tiny = np.stack([noise, 1e-7 * rng.normal(size=n)], axis=1)
    assert np.all(_plane_search(z, tiny, y, "linear", 0.0, zero, np.zeros((2, 2))) == 0.0)

"""Metrics against scikit-learn where it has the function."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from vfm_flower.metrics import (
    calibration_bins,
    confusion_at,
    gain_lift_by_decile,
    log_loss,
    precision_recall_at,
    r2_score,
    roc_auc,
    top_decile_lift,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    n = 1000
    y = (rng.random(n) < 0.1).astype(int)
    p = np.clip(0.05 + 0.4 * y * rng.random(n) + 0.3 * rng.random(n), 0.0, 1.0)
    return y, p


def test_roc_auc_matches_sklearn_with_and_without_ties(data):
    y, p = data
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    coarse = np.round(p * 5)  # heavy ties
    assert roc_auc(y, coarse) == pytest.approx(skm.roc_auc_score(y, coarse), abs=1e-12)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="rows"):
        roc_auc([0, 1], [0.2])


def test_log_loss_and_r2_match_sklearn(data):
    y, p = data
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert np.isfinite(log_loss([0, 1], [1.0, 0.0]))  # clipped, finite
    rng = np.random.default_rng(2)
    t = rng.normal(size=200)
    pred = t + rng.normal(scale=0.5, size=200)
    assert r2_score(t, pred) == pytest.approx(skm.r2_score(t, pred), rel=1e-12)
    assert r2_score([3.0, 3.0], [3.0, 3.0]) == 1.0
    assert r2_score([3.0, 3.0], [2.0, 3.0]) == 0.0


def test_confusion_precision_recall_match_sklearn(data):
    y, p = data
    for threshold in (0.1, 0.3, 0.5, 2.0):
        predicted = (p >= threshold).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
        assert confusion_at(y, p, threshold) == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
        precision, recall = precision_recall_at(y, p, threshold)
        assert precision == pytest.approx(skm.precision_score(y, predicted, zero_division=0))
        assert recall == pytest.approx(skm.recall_score(y, predicted, zero_division=0))


def test_gain_and_lift_by_decile(data):
    y, p = data
    table = gain_lift_by_decile(y, p)
    assert [row["decile"] for row in table] == list(range(1, 11))
    assert sum(row["rows"] for row in table) == y.size
    top = np.argsort(-p, kind="mergesort")[:100]
    assert table[0]["positives"] == pytest.approx(y[top].sum())
    assert table[0]["lift"] == pytest.approx(y[top].mean() / y.mean())
    assert top_decile_lift(y, p) == pytest.approx(table[0]["lift"])
    assert table[-1]["cumulative_gain"] == pytest.approx(1.0)
    assert table[-1]["cumulative_lift"] == pytest.approx(1.0)
    gains = [row["cumulative_gain"] for row in table]
    assert gains == sorted(gains)
    assert table[2]["cumulative_gain"] == pytest.approx(
        sum(row["positives"] for row in table[:3]) / y.sum()
    )


def test_gain_and_lift_do_not_depend_on_row_order_with_ties():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0] * 3)
    score = np.array([3, 3, 3, 2, 2, 2, 1, 1, 1, 1] * 3, dtype=float)
    a = gain_lift_by_decile(y, score)
    perm = np.random.default_rng(0).permutation(y.size)
    b = gain_lift_by_decile(y[perm], score[perm])
    for row_a, row_b in zip(a, b):
        assert row_a == pytest.approx(row_b)
    # The top 3 rows are 3 of the 9 rows scored 3 (3 positives among them): 1 expected.
    assert a[0]["positives"] == pytest.approx(1.0)
    # A constant score gives lift 1 everywhere.
    flat = gain_lift_by_decile(y, np.zeros(y.size))
    assert all(row["lift"] == pytest.approx(1.0) for row in flat)
    with pytest.raises(ValueError, match="positive"):
        gain_lift_by_decile(np.zeros(20), np.arange(20.0))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_bins_match_sklearn(data, strategy):
    y, p = data
    table = calibration_bins(y, p, bins=10, strategy=strategy)
    assert len(table) == 10 and sum(row["count"] for row in table) == y.size
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy=strategy)
    filled = [row for row in table if row["count"]]
    np.testing.assert_allclose([row["observed_rate"] for row in filled], observed)
    np.testing.assert_allclose([row["mean_predicted"] for row in filled], predicted)
    empty = [row for row in table if not row["count"]]
    assert all(row["mean_predicted"] is None for row in empty)

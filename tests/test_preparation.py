"""Column preparation and label encoding."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from vfm_flower.errors import DataError
from vfm_flower.preparation import (
    MISSING_LEVEL,
    OTHER_LEVEL,
    CategoricalColumn,
    NumericColumn,
    PreparationPlan,
    apply_preparation,
    encode_labels,
    fit_preparation,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    n = 60
    rng = np.random.default_rng(3)
    income = rng.normal(50_000, 10_000, n).round()
    income[[3, 17]] = np.nan
    text_age = [str(v) for v in rng.integers(18, 90, n)]
    text_age[5] = "unknown"  # 1 junk value out of 60 (1.7 %)
    text_age[9] = " "  # missing
    segment = rng.choice(["gold", "silver", "bronze"], n).astype(object)
    segment[[0, 1]] = None
    return pd.DataFrame(
        {
            "income": income,
            "age": text_age,
            "segment": segment,
            "country": ["NL"] * n,
            "region_code": rng.choice([11, 12, 13], n),
            "flag": rng.choice([True, False], n),
        }
    )


def test_numeric_median_imputation_and_standardization(frame):
    plan = fit_preparation(frame, ["income"], party="bank")
    (col,) = plan.columns
    assert isinstance(col, NumericColumn)
    present = frame["income"].dropna()
    assert col.median == pytest.approx(present.median())
    filled = frame["income"].fillna(present.median()).to_numpy()
    assert col.mean == pytest.approx(filled.mean())
    assert col.std == pytest.approx(filled.std())
    out = apply_preparation(plan, frame)
    assert out.feature_names == ["income"]
    assert out.matrix.dtype == np.float64 and out.matrix.shape == (60, 1)
    np.testing.assert_allclose(out.matrix[:, 0], (filled - filled.mean()) / filled.std())
    assert out.matrix[3, 0] == pytest.approx((col.median - col.mean) / col.std)


def test_text_numbers_with_little_junk_are_numeric(frame, caplog):
    with caplog.at_level(logging.WARNING):
        plan = fit_preparation(frame, ["age"], party="bank", junk_threshold=0.05)
    assert isinstance(plan.columns[0], NumericColumn)
    assert "'age'" in caplog.text and "1 non-numeric" in caplog.text
    assert "unknown" not in caplog.text  # never a value in the logs
    out = apply_preparation(plan, frame).matrix[:, 0]
    median_std = (plan.columns[0].median - plan.columns[0].mean) / plan.columns[0].std
    assert out[5] == pytest.approx(median_std) and out[9] == pytest.approx(median_std)


def test_dirty_numeric_column_is_an_error_naming_party_and_column():
    values = [str(v) for v in range(100)]
    for i in range(0, 100, 10):
        values[i] = f"n/a-{i}"  # 10 % junk, 100 distinct values: not plausibly categorical
    frame = pd.DataFrame({"spend": values})
    with pytest.raises(DataError, match=r"party 'bank'.*'spend'.*10\.0%"):
        fit_preparation(frame, ["spend"], party="bank", junk_threshold=0.05)
    plan = fit_preparation(frame, ["spend"], party="bank", junk_threshold=0.15)
    assert isinstance(plan.columns[0], NumericColumn)


def test_numeric_looking_codes_with_few_values_are_categorical():
    frame = pd.DataFrame({"code": ["12", "13", "12A", "13", "12", "12A"] * 5})
    plan = fit_preparation(frame, ["code"], party="broker")
    (col,) = plan.columns
    assert isinstance(col, CategoricalColumn)
    assert col.levels == ("12", "12A", "13")


def test_categorical_one_hot_with_missing_and_other(frame):
    plan = fit_preparation(frame, ["segment"], party="broker")
    (col,) = plan.columns
    assert isinstance(col, CategoricalColumn)
    assert col.levels == ("bronze", "gold", "silver")
    assert plan.feature_names == [
        "segment=bronze",
        "segment=gold",
        "segment=silver",
        f"segment={MISSING_LEVEL}",
        f"segment={OTHER_LEVEL}",
    ]
    out = apply_preparation(plan, frame).matrix
    np.testing.assert_array_equal(out.sum(axis=1), np.ones(60))
    assert out[0, 3] == 1.0 and out[1, 3] == 1.0  # the missing rows
    scoring = pd.DataFrame({"segment": ["platinum", "gold", None, "  silver "]})
    scored = apply_preparation(plan, scoring).matrix
    np.testing.assert_array_equal(
        scored,
        [[0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0]],
    )


def test_rare_levels_fold_into_other_and_forced_categorical(frame):
    codes = frame.assign(region_code=[11] * 30 + [12] * 28 + [99, 98])
    plan = fit_preparation(
        codes, ["region_code"], party="broker", categorical=["region_code"], min_level_count=5
    )
    (col,) = plan.columns
    assert isinstance(col, CategoricalColumn) and col.levels == ("11", "12")
    out = apply_preparation(plan, codes).matrix
    assert out[:, -1].sum() == 2  # 99 and 98 are <other>


def test_constant_column_dropped_with_warning(frame, caplog):
    with caplog.at_level(logging.WARNING):
        plan = fit_preparation(frame, ["income", "country"], party="bank")
    assert plan.dropped == ("country",)
    assert plan.feature_names == ["income"]
    assert "'country'" in caplog.text and "constant" in caplog.text
    with pytest.raises(DataError, match="no usable feature"):
        fit_preparation(frame, ["country"], party="bank")


def test_all_missing_and_absent_columns_are_errors(frame):
    empty = frame.assign(blank=[None] * 60, blank_text=[" NA "] * 60)
    for name in ("blank", "blank_text"):
        with pytest.raises(DataError, match=rf"party 'bank'.*'{name}'.*no value"):
            fit_preparation(empty, ["income", name], party="bank")
    with pytest.raises(DataError, match=r"party 'bank'.*'salary'.*not in the data"):
        fit_preparation(frame, ["income", "salary"], party="bank")
    plan = fit_preparation(frame, ["income", "segment"], party="bank")
    with pytest.raises(DataError, match=r"'segment'.*not in the data"):
        apply_preparation(plan, frame.drop(columns=["segment"]))


def test_identifier_like_column_is_refused():
    frame = pd.DataFrame({"email": [f"user{i}@example.com" for i in range(200)]})
    with pytest.raises(DataError, match="identifier"):
        fit_preparation(frame, ["email"], party="broker")


def test_plan_json_round_trip_and_scoring_uses_saved_statistics(frame, tmp_path):
    cols = ["income", "age", "segment", "region_code", "flag"]
    plan = fit_preparation(frame, cols, party="bank", categorical=["region_code"])
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    loaded = PreparationPlan.from_json(path.read_text())
    assert loaded == plan
    np.testing.assert_array_equal(
        apply_preparation(loaded, frame).matrix, apply_preparation(plan, frame).matrix
    )
    # Scoring rows come from another distribution: the training statistics are reused.
    scoring = pd.DataFrame(
        {
            "income": [1e6, np.nan],
            "age": ["40", None],
            "segment": ["new-tier", "gold"],
            "region_code": [14, 11],
            "flag": [True, False],
        }
    )
    out = apply_preparation(loaded, scoring)
    inc = loaded.columns[0]
    assert isinstance(inc, NumericColumn)
    assert out.matrix[0, 0] == pytest.approx((1e6 - inc.mean) / inc.std)
    assert out.matrix[1, 0] == pytest.approx((inc.median - inc.mean) / inc.std)
    names = out.feature_names
    assert out.matrix[0, names.index(f"segment={OTHER_LEVEL}")] == 1.0
    assert out.matrix[0, names.index(f"region_code={OTHER_LEVEL}")] == 1.0
    assert out.matrix[1, names.index("region_code=11")] == 1.0


def test_scoring_with_too_much_junk_is_an_error(frame):
    plan = fit_preparation(frame, ["income"], party="bank")
    with pytest.raises(DataError, match="'income'.*non-numeric"):
        apply_preparation(plan, pd.DataFrame({"income": ["1", "x", "y"]}))


def test_malformed_plan_is_a_data_error():
    with pytest.raises(DataError, match="malformed"):
        PreparationPlan.from_json('{"version": 1, "party": "bank"}')
    with pytest.raises(DataError, match="malformed"):
        PreparationPlan.from_json("not json")


# --------------------------------------------------------------------------- labels
def test_labels_zero_one_variants():
    np.testing.assert_array_equal(encode_labels([0, 1, 1, 0], None, party="ins"), [0, 1, 1, 0])
    np.testing.assert_array_equal(encode_labels(["0", "1", " 1"], None, party="ins"), [0, 1, 1])
    np.testing.assert_array_equal(encode_labels([1.0, 0.0], None, party="ins"), [1, 0])
    np.testing.assert_array_equal(encode_labels([True, False], None, party="ins"), [1, 0])
    out = encode_labels(pd.Series(["TRUE", "false"]), None, party="ins")
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [1, 0])


def test_labels_with_positive_class():
    values = pd.Series(["No", "Yes", "No", "No", "Yes"])
    np.testing.assert_array_equal(encode_labels(values, "Yes", party="ins"), [0, 1, 0, 0, 1])
    # Positive class against everything else.
    many = ["churn", "stay", "downgrade", "churn"]
    np.testing.assert_array_equal(encode_labels(many, "churn", party="ins"), [1, 0, 0, 1])


def test_label_errors_give_counts_not_values():
    with pytest.raises(DataError, match=r"3 distinct values \(row counts \[2, 1, 1\]\)") as err:
        encode_labels(["churn", "stay", "downgrade", "churn"], None, party="ins")
    assert "churn" not in str(err.value)
    with pytest.raises(DataError, match="only one class"):
        encode_labels(["No", "No"], "Yes", party="ins")
    with pytest.raises(DataError, match="only one class"):
        encode_labels([1, 1, 1], None, party="ins")
    with pytest.raises(DataError, match="1 of 3 rows have no label"):
        encode_labels(["Yes", None, "No"], "Yes", party="ins")
    with pytest.raises(DataError, match="positive class") as err:
        encode_labels(["Yes", "No"], None, party="ins")
    assert "Yes" not in str(err.value)


def test_feature_cohorts_no_slot_singles_out_fewer_than_the_minimum_cohort(caplog) -> None:
    """Each one-hot slot and binary value covers at least the minimum cohort (issue: a
    passive party's gradient of a small slot is a label sum over a handful of customers)."""
    import numpy as np

    from vfm_flower.preparation import apply_preparation, fit_preparation

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            # levels of 200, 150, 40 rows and 5 rare rows, 5 missing
            "plan": ["a"] * 200 + ["b"] * 150 + ["c"] * 40 + ["x", "y", "z", "x", "y"] + [None] * 5,
            "flag": [1.0] * 12 + [0.0] * (n - 12),  # 12 customers isolated by the value 1
            "sparse": [1.5, 2.5, 3.5] + [np.nan] * (n - 3),  # 3 present values
            "income": rng.normal(size=n),
        }
    )
    plan = fit_preparation(frame, list(frame.columns), party="p", min_cohort=20)
    assert set(plan.dropped) == {"flag", "sparse"}
    assert "flag" in caplog.text and "sparse" in caplog.text
    plan_col = next(c for c in plan.columns if c.name == "plan")
    assert plan_col.levels == ("a", "b", "c") and plan_col.pooled
    assert plan_col.fallback == "a"  # 10 pooled rows are still under 20: they go to the mode
    X = apply_preparation(plan, frame).matrix
    slots = X[:, : len(plan_col.feature_names)]
    counts = slots.sum(axis=0)
    assert all(c == 0 or c >= 20 for c in counts), counts


def test_feature_cohorts_keep_a_large_missing_level_apart() -> None:
    from vfm_flower.preparation import apply_preparation, fit_preparation

    frame = pd.DataFrame({"plan": ["a"] * 100 + ["b"] * 60 + [None] * 40})
    plan = fit_preparation(frame, ["plan"], party="p", min_cohort=20)
    col = plan.columns[0]
    assert not col.pooled and col.fallback is None
    counts = apply_preparation(plan, frame).matrix.sum(axis=0)
    assert list(counts) == [100, 60, 40, 0]  # a, b, <missing>, <other>
    assert PreparationPlan.from_json(plan.to_json()) == plan

"""Shared report, party reports and audience segments (fast; no browser)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from vfm_flower.errors import ConfigurationError, PolicyViolation
from vfm_flower.report import (
    EvaluationInputs,
    assign_segments,
    build_party_report,
    build_shared_report,
    headline,
    rank_groups,
    segment_summaries,
    write_party_report,
    write_report,
)

OWN_WEIGHTS = {"A_secret_income_band": 0.123456789, "A_hidden_policy_count": -0.987654321}
LOGISTIC_KEYS = {
    "auc",
    "auc_label_owner_only",
    "log_loss",
    "precision",
    "recall",
    "threshold",
    "confusion",
    "calibration",
    "gain_lift",
    "top_decile_lift",
    "aligned_rows",
    "rows_per_party",
    "training_rows",
    "holdout_rows",
    "training_curve",
    "contribution",
    "summary",
    "suppressed",
    "model",
    "party",
    "roc_curve",
    "min_cohort",
}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def logistic_inputs(n=1400, seed=0, min_cohort=20, signal=1.0, **overrides) -> EvaluationInputs:
    """Three parties' worth of signal; the federated score uses all of it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    z = -2.5 + signal * (1.2 * x[:, 0] + 0.9 * x[:, 1] + 0.7 * x[:, 2])
    y = (rng.random(n) < _sigmoid(z)).astype(float)
    fields = dict(
        model="logistic",
        party="insurer",
        y_holdout=y,
        score_holdout=z,
        score_own_only=-2.5 + 1.2 * x[:, 0],
        score_without={
            "bank": -2.5 + 1.2 * x[:, 0] + 0.7 * x[:, 2],
            "broker": -2.5 + 1.2 * x[:, 0] + 0.9 * x[:, 1],
        },
        objective_curve=[0.69, 0.41, 0.33, 0.31, 0.305],
        holdout_loss_curve=[0.69, 0.43, 0.35, 0.34, 0.338],
        aligned_rows=int(n / 0.3),
        rows_per_party={"insurer": 5600, "bank": 5200, "broker": 5400},
        training_rows=int(n / 0.3) - n,
        min_cohort=min_cohort,
        own_feature_weights=OWN_WEIGHTS,
    )
    fields.update(overrides)
    return EvaluationInputs(**fields)


def linear_inputs(n=1000, seed=1, min_cohort=20) -> EvaluationInputs:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    z = 50.0 + 10.0 * x[:, 0] + 8.0 * x[:, 1] + 5.0 * x[:, 2]
    y = z + rng.normal(scale=6.0, size=n)
    return EvaluationInputs(
        model="linear",
        party="retailer",
        y_holdout=y,
        score_holdout=z,
        score_own_only=50.0 + 10.0 * x[:, 0],
        score_without={"bank": 50.0 + 10.0 * x[:, 0] + 5.0 * x[:, 2]},
        objective_curve=[900.0, 120.0, 40.0, 36.0],
        holdout_loss_curve=[910.0, 125.0, 42.0, 37.0],
        aligned_rows=3000,
        rows_per_party={"retailer": 3500, "bank": 3300},
        training_rows=2000,
        min_cohort=min_cohort,
        own_feature_weights={"R_basket_value": 3.5},
    )


# ------------------------------------------------------------------------------ shared report


def test_logistic_report_keys_and_values_match_sklearn():
    inp = logistic_inputs()
    y, z = inp.y_holdout, inp.score_holdout
    r = build_shared_report(inp)
    assert LOGISTIC_KEYS <= r.keys()
    assert r["model"] == "logistic" and r["party"] == "insurer"
    assert r["auc"] == pytest.approx(skm.roc_auc_score(y, z), abs=1e-12)
    assert r["auc_label_owner_only"] == pytest.approx(
        skm.roc_auc_score(y, inp.score_own_only), abs=1e-12
    )
    assert r["auc"] > r["auc_label_owner_only"]
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, _sigmoid(z)), rel=1e-9)

    # Default threshold: the probability at the top-decile cut; about 10% predicted positive.
    assert r["threshold_rule"] == "top decile"
    predicted = _sigmoid(z) >= r["threshold"]
    assert predicted.sum() == 140
    assert r["threshold"] == pytest.approx(_sigmoid(np.sort(z)[::-1][139]))
    assert r["precision"] == pytest.approx(skm.precision_score(y, predicted))
    assert r["recall"] == pytest.approx(skm.recall_score(y, predicted))
    tn, fp, fn, tp = skm.confusion_matrix(y, predicted).ravel()
    assert r["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}

    gl = r["gain_lift"]
    assert [d["decile"] for d in gl] == list(range(1, 11))
    assert all(d["rows"] == 140 for d in gl)
    assert gl[-1]["cumulative_gain"] == pytest.approx(1.0)
    assert r["top_decile_lift"] == pytest.approx(gl[0]["lift"])
    top = np.argsort(-z)[:140]
    assert r["top_decile_lift"] == pytest.approx(y[top].mean() / y.mean())

    # Calibration: one bin per decile, lowest predictions first.
    cal = r["calibration"]
    assert [b["bin"] for b in cal] == list(range(10)) and all(b["count"] == 140 for b in cal)
    assert cal[-1]["observed_rate"] == pytest.approx(gl[0]["response_rate"])
    assert cal[-1]["mean_predicted"] == pytest.approx(_sigmoid(z[top]).mean())
    assert cal[0]["observed_rate"] == pytest.approx(y[np.argsort(z)[:140]].mean())

    roc = r["roc_curve"]
    assert roc[0] == {"cumulative_rows": 0, "fpr": 0.0, "tpr": 0.0}
    assert roc[-1]["fpr"] == pytest.approx(1.0) and roc[-1]["tpr"] == pytest.approx(1.0)
    fpr = np.array([p["fpr"] for p in roc])
    tpr = np.array([p["tpr"] for p in roc])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(roc) == 71  # 1400 rows: 10 deciles x 7 steps of 20 rows
    assert np.trapezoid(tpr, fpr) == pytest.approx(r["auc"], abs=0.01)

    for label in ("bank", "broker"):
        auc_wo = skm.roc_auc_score(y, inp.score_without[label])
        assert r["contribution"][label]["auc_without"] == pytest.approx(auc_wo)
        assert r["contribution"][label]["auc_drop"] == pytest.approx(r["auc"] - auc_wo)
        assert r["contribution"][label]["auc_drop"] > 0

    assert r["training_curve"] == {
        "objective": list(inp.objective_curve),
        "holdout_loss": list(inp.holdout_loss_curve),
    }
    assert r["holdout_rows"] == 1400 and r["training_rows"] == inp.training_rows
    assert r["aligned_rows"] == inp.aligned_rows
    assert r["rows_per_party"] == dict(inp.rows_per_party)
    assert r["holdout_response_rate"] == pytest.approx(y.mean())
    assert r["suppressed"] == []
    lift_text = f"{r['top_decile_lift']:.1f}x as often as average"
    assert lift_text in r["summary"]
    assert f"AUC {r['auc']:.3f} vs {r['auc_label_owner_only']:.3f}" in r["summary"]
    assert "the insurer's own data alone" in r["summary"]
    json.dumps(r, allow_nan=False)  # JSON-native


def test_given_threshold_is_a_probability():
    inp = logistic_inputs(threshold=0.3)
    r = build_shared_report(inp)
    predicted = _sigmoid(inp.score_holdout) >= 0.3
    tn, fp, fn, tp = skm.confusion_matrix(inp.y_holdout, predicted).ravel()
    assert r["threshold"] == 0.3 and r["threshold_rule"] == "given"
    assert r["threshold_score"] == pytest.approx(np.log(0.3 / 0.7))
    assert r["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    with pytest.raises(ValueError, match="probability"):
        build_shared_report(logistic_inputs(threshold=2.0))


def test_outcome_word_in_summary():
    r = build_shared_report(logistic_inputs(outcome="buy"))
    assert "buy " in r["summary"] and "ranks buyers better" in r["summary"]


def test_top_decile_lift_on_separable_data():
    rng = np.random.default_rng(5)
    n = 2000
    z = rng.normal(size=n)
    y = (z + 0.3 * rng.normal(size=n) > 1.2).astype(float)
    r = build_shared_report(
        logistic_inputs(
            n=n, y_holdout=y, score_holdout=z, score_own_only=rng.normal(size=n), score_without={}
        )
    )
    assert r["top_decile_lift"] > 1.5
    assert r["gain_lift"][0]["cumulative_gain"] > 0.4
    assert r["contribution"] == {}


def test_shared_report_carries_no_feature_names_or_weights(tmp_path: Path):
    inp = logistic_inputs()
    r = build_shared_report(inp)
    json_path, html_path = write_report(r, inp, tmp_path)
    for text in (json.dumps(r), json_path.read_text(), html_path.read_text()):
        for name, weight in OWN_WEIGHTS.items():
            assert name not in text
            assert repr(weight) not in text and f"{weight:.4f}" not in text


def test_contribution_label_equal_to_a_feature_name_is_refused(tmp_path: Path):
    inp = logistic_inputs(score_without={"A_secret_income_band": np.zeros(1400)})
    with pytest.raises(ValueError, match="feature"):
        build_shared_report(inp)
    # write_report re-checks whatever dict it is given.
    good = logistic_inputs()
    r = build_shared_report(good)
    r["contribution"]["A_hidden_policy_count"] = {"auc_without": 0.5, "auc_drop": 0.1}
    with pytest.raises(ValueError, match="feature"):
        write_report(r, good, tmp_path)
    assert not list(tmp_path.iterdir())


def test_features_named_like_report_keys_are_no_false_alarm(tmp_path: Path):
    inp = logistic_inputs(own_feature_weights={"count": 1.0, "rows": -0.5, "decile": 0.2})
    write_report(build_shared_report(inp), inp, tmp_path)


def test_write_report_is_atomic_and_round_trips(tmp_path: Path):
    inp = logistic_inputs()
    r = build_shared_report(inp)
    out = tmp_path / "run" / "report"
    json_path, html_path = write_report(r, inp, out)
    assert json_path == out / "report.json" and html_path == out / "report.html"
    assert json.loads(json_path.read_text()) == r
    page = html_path.read_text()
    for fig in ("fig-gain", "fig-lift", "fig-calibration", "fig-training", "fig-roc"):
        assert f'<figure id="{fig}">' in page
    assert page.count('src="data:image/png;base64,') == 5
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Confusion matrix" in page and "What the partners add" in page
    write_report(r, inp, out)  # overwrite in place
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    with pytest.raises(ValueError, match="party"):
        write_report(r, logistic_inputs(party="bank"), out)


def test_html_escapes_names(tmp_path: Path):
    inp = logistic_inputs(
        party="<b>Acme & Co</b>",
        rows_per_party={"<b>Acme & Co</b>": 10, "bank<script>": 5},
        score_without={"bank<script>": logistic_inputs().score_own_only},
    )
    r = build_shared_report(inp)
    assert "Acme & Co</b>'s own data" in r["summary"]  # proper name: no "the"
    _, html_path = write_report(r, inp, tmp_path)
    page = html_path.read_text()
    assert "<b>Acme" not in page and "bank<script>" not in page
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt;" in page


def test_headline_gives_three_plain_sentences():
    lines = headline(build_shared_report(logistic_inputs()))
    assert len(lines) == 3
    assert lines[0].startswith("AUC ") and "insurer's own data alone" in lines[0]
    assert "x the average response rate" in lines[1]
    assert "4,666 customers aligned across 3 parties" in lines[2]
    assert not any("<" in s for s in lines)


# ------------------------------------------------------------------------------ minimum cohort


def test_whole_holdout_below_min_cohort_is_refused():
    inp = logistic_inputs(n=15, min_cohort=20)
    with pytest.raises(PolicyViolation) as err:
        build_shared_report(inp)
    assert err.value.rule == "min_cohort"


def test_a_small_holdout_falls_back_to_coarser_groups(tmp_path: Path):
    inp = logistic_inputs(n=150, min_cohort=20, seed=2)  # deciles of 15 rows: quintiles of 30
    r = build_shared_report(inp)
    assert r["rank_groups"] == 5 and r["top_decile_lift"] is None
    gl = r["gain_lift"]
    assert [d["decile"] for d in gl] == [1, 2, 3, 4, 5] and all(d["rows"] == 30 for d in gl)
    assert r["top_group_lift"] == pytest.approx(gl[0]["lift"])
    own = r["gain_lift_label_owner_only"]
    assert [d["rows"] for d in own] == [30] * 5
    reasons = [s["reason"] for s in r["suppressed"] if s["aggregate"] == "gain_lift"]
    assert reasons == [
        "a decile would cover fewer than 20 rows: the tables use 5 groups of 20% instead"
    ]
    assert "top 20% by score" in r["summary"] and "Top 20% by score" in headline(r)[1]
    # Everything released covers >= min_cohort rows, on one grid
    assert all(b["count"] >= 20 for b in r["calibration"]) and len(r["calibration"]) == 5
    assert {0, 30, 60, 90, 120, 150} <= set(_grid(r))
    _, html_path = write_report(r, inp, tmp_path)
    page = html_path.read_text()
    assert '<figure id="fig-gain">' in page and "Quintile" in page


def test_groups_are_withheld_when_even_halves_are_small(tmp_path: Path):
    r = build_shared_report(logistic_inputs(n=30, min_cohort=20, seed=2))
    assert r["rank_groups"] == 0 and r["gain_lift"] == [] and r["top_group_lift"] is None
    assert any(s["item"] == "all groups" for s in r["suppressed"])
    assert "as often as average" not in r["summary"]
    assert "withheld" in headline(r)[1]
    assert all(b["count"] >= 20 for b in r["calibration"])


def test_the_coarsest_grouping_covers_the_minimum_cohort():
    # 195 rows: decile sizes alternate 20/19 with min cohort 20: quintiles of 39
    r = build_shared_report(logistic_inputs(n=195, min_cohort=20, seed=3))
    assert r["rank_groups"] == 5
    assert all(d["rows"] >= 20 for d in r["gain_lift"])
    assert rank_groups(195, 20) == 5 and rank_groups(200, 20) == 10
    assert rank_groups(79, 20) == 2 and rank_groups(39, 20) == 0


def test_small_confusion_cell_withholds_matrix_precision_and_recall():
    r = build_shared_report(logistic_inputs(threshold=0.95))  # almost nobody predicted positive
    assert r["confusion"] is None and r["precision"] is None and r["recall"] is None
    items = {s["item"]: s["reason"] for s in r["suppressed"] if s["aggregate"] == "confusion"}
    assert set(items) == {"tn", "fp", "fn", "tp"}
    assert "fewer than 20" in items["tp"] and "fewer than 20" not in items["tn"]
    assert {"precision", "recall"} <= {s["aggregate"] for s in r["suppressed"]}


def _grid(report) -> list[int]:
    return [p["cumulative_rows"] for p in report["roc_curve"]]


def test_rank_tables_share_one_grid_of_boundaries():
    # Deciles, the threshold and the ROC steps cut the ranking at the same places, each
    # step at least min_cohort rows, so no difference of two tables isolates a small group.
    inp = logistic_inputs()
    y, z = inp.y_holdout, inp.score_holdout
    ranked = np.sort(_sigmoid(z))[::-1]
    threshold = float((ranked[209] + ranked[210]) / 2)  # 210 rows predicted positive
    r = build_shared_report(logistic_inputs(threshold=threshold))
    grid = _grid(r)
    assert np.all(np.diff(grid) >= 20)
    assert {d["cumulative_rows"] for d in r["gain_lift"]} <= set(grid)
    assert r["confusion"]["tp"] + r["confusion"]["fp"] == 210 and 210 in grid
    predicted = _sigmoid(z) >= threshold
    assert r["precision"] == pytest.approx(skm.precision_score(y, predicted))

    # A threshold 5 rows below a decile boundary would isolate 5 rows: withheld.
    threshold = float((ranked[144] + ranked[145]) / 2)
    r = build_shared_report(logistic_inputs(threshold=threshold))
    assert r["confusion"] is None and r["precision"] is None
    reasons = [s["reason"] for s in r["suppressed"] if s["aggregate"] == "confusion"]
    assert reasons and all("decile boundary" in x for x in reasons)
    assert np.all(np.diff(_grid(r)) >= 20)


def test_tables_with_ties_respect_min_cohort():
    rng = np.random.default_rng(4)
    n = 400
    # Three distinct scores: tie groups straddle decile boundaries (split proportionally).
    z = np.r_[np.full(300, -3.0), np.full(84, -1.0), np.full(16, 2.0)]
    y = (rng.random(n) < _sigmoid(z)).astype(float)
    y[:3] = 1.0
    inp = logistic_inputs(
        n=n, y_holdout=y, score_holdout=z, score_own_only=z, score_without={}, min_cohort=20
    )
    r = build_shared_report(inp)
    assert all(b["count"] >= 20 for b in r["calibration"])
    assert sum(b["count"] for b in r["calibration"]) == n
    assert np.all(np.diff(_grid(r)) >= 20)
    # The top decile (40 rows) holds the 16 top-score rows and 24/84 of the next tie group.
    expected = y[z == 2.0].sum() + 24 / 84 * y[z == -1.0].sum()
    assert r["gain_lift"][0]["positives"] == pytest.approx(expected)
    assert r["calibration"][-1]["observed_rate"] == pytest.approx(expected / 40)


# ------------------------------------------------------------------------------ linear


def test_linear_report(tmp_path: Path):
    inp = linear_inputs()
    y, z = inp.y_holdout, inp.score_holdout
    r = build_shared_report(inp)
    assert {
        "r2",
        "r2_label_owner_only",
        "rmse",
        "deciles",
        "contribution",
        "summary",
        "suppressed",
        "training_curve",
        "holdout_rows",
    } <= r.keys()
    assert not {"auc", "gain_lift", "confusion", "threshold"} & r.keys()
    assert r["r2"] == pytest.approx(skm.r2_score(y, z))
    assert r["r2_label_owner_only"] == pytest.approx(skm.r2_score(y, inp.score_own_only))
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, z)))
    dec = r["deciles"]
    assert [d["decile"] for d in dec] == list(range(1, 11)) and all(d["rows"] == 100 for d in dec)
    top = np.argsort(-z)[:100]
    assert dec[0]["mean_actual"] == pytest.approx(y[top].mean())
    assert dec[0]["mean_predicted"] == pytest.approx(z[top].mean())
    assert dec[0]["mean_actual"] > dec[-1]["mean_actual"]
    r2_wo = skm.r2_score(y, inp.score_without["bank"])
    assert r["contribution"]["bank"]["r2_drop"] == pytest.approx(r["r2"] - r2_wo)
    assert "R\u00b2" in r["summary"] and "the retailer's own data alone" in r["summary"]
    lines = headline(r)
    assert len(lines) == 3 and lines[0].startswith("R\u00b2")
    _, html_path = write_report(r, inp, tmp_path)
    page = html_path.read_text()
    assert '<figure id="fig-deciles">' in page and '<figure id="fig-training">' in page
    assert "R_basket_value" not in page


def test_input_validation():
    with pytest.raises(ValueError, match="model"):
        build_shared_report(logistic_inputs(model="tree"))
    with pytest.raises(ValueError, match="rows"):
        build_shared_report(logistic_inputs(score_own_only=np.zeros(3)))
    with pytest.raises(ValueError, match="finite"):
        build_shared_report(logistic_inputs(score_holdout=np.full(1400, np.nan)))
    with pytest.raises(ValueError, match="0/1"):
        build_shared_report(logistic_inputs(y_holdout=np.full(1400, 2.0)))


# ------------------------------------------------------------------------------ party report


def test_party_report_holds_only_its_own_features(tmp_path: Path):
    bank = {"P_car_policy": 0.8, "P_fire_policy": -0.3, "P_life": 0.05, "P_boat": -1.1}
    rep = build_party_report("bank", "logistic", bank, min_cohort=20, aligned_rows=4000)
    assert [f["feature"] for f in rep["features"]] == [
        "P_boat",
        "P_car_policy",
        "P_fire_policy",
        "P_life",
    ]
    assert [f["rank"] for f in rep["features"]] == [1, 2, 3, 4]
    assert rep["features"][0]["weight"] == -1.1 and rep["features"][0]["abs_weight"] == 1.1
    assert sum(f["relative_importance"] for f in rep["features"]) == pytest.approx(1.0)
    assert rep["top_features"][:2] == ["P_boat", "P_car_policy"]
    json_path, html_path = write_party_report(rep, tmp_path)
    assert json_path.name == "party_report.json" and html_path.name == "party_report.html"
    assert json.loads(json_path.read_text()) == rep
    page = html_path.read_text()
    assert '<figure id="fig-weights">' in page and "data:image/png;base64," in page
    for text in (json_path.read_text(), page):
        assert "P_car_policy" in text
        for foreign in ("insurer", "broker", *OWN_WEIGHTS):
            assert foreign not in text


def test_party_report_refusals():
    with pytest.raises(PolicyViolation) as err:
        build_party_report("bank", "logistic", {"a": 1.0}, min_cohort=20, aligned_rows=10)
    assert err.value.rule == "min_cohort"
    with pytest.raises(ValueError, match="no feature"):
        build_party_report("bank", "logistic", {}, min_cohort=20, aligned_rows=100)
    with pytest.raises(ValueError, match="non-finite"):
        build_party_report("bank", "linear", {"a": float("nan")}, min_cohort=20, aligned_rows=100)


# ------------------------------------------------------------------------------ segments


def test_assign_deciles():
    rng = np.random.default_rng(7)
    scores = rng.permutation(np.arange(100.0))
    seg, specs = assign_segments(scores)
    assert [s["segment"] for s in specs] == [f"decile {k}" for k in range(1, 11)]
    assert all(s["rows"] == 10 for s in specs)
    assert set(scores[seg == "decile 1"]) == set(range(90, 100))
    assert set(scores[seg == "decile 10"]) == set(range(10))
    # Row order does not matter for distinct scores.
    perm = rng.permutation(100)
    seg2, _ = assign_segments(scores[perm])
    assert np.array_equal(seg2, seg[perm])


def test_ties_are_broken_by_row_position():
    seg, specs = assign_segments(np.zeros(20))
    assert list(seg[:2]) == ["decile 1", "decile 1"] and seg[2] == "decile 2"
    assert all(s["rows"] == 2 for s in specs)
    again, _ = assign_segments(np.zeros(20))
    assert np.array_equal(seg, again)


def test_named_segments():
    scores = np.arange(100.0)[::-1]  # row 0 is the best
    for spec in ("top10,10-30,rest", "Top 10%, 10-30%, rest", "top10,10-30,30-100"):
        seg, specs = assign_segments(scores, spec)
        assert [s["rows"] for s in specs] == [10, 20, 70]
        assert list(seg[:10]) == ["top 10%"] * 10 and seg[10] == "10-30%"
    assert [s["segment"] for s in assign_segments(scores, "top10,10-30,rest")[1]] == [
        "top 10%",
        "10-30%",
        "rest",
    ]
    for bad in (
        "top10,20-30,rest",
        "rest,top10",
        "top10,10-120",
        "abc",
        "top10,10-30",
        "top0,rest",
    ):
        with pytest.raises(ConfigurationError):
            assign_segments(scores, bad)
    with pytest.raises(ValueError, match="finite"):
        assign_segments(np.array([1.0, np.inf]))


def test_segment_summaries_with_and_without_labels():
    rng = np.random.default_rng(8)
    n = 1000
    scores = rng.normal(size=n)
    labels = (scores + rng.normal(size=n) > 1.5).astype(float)
    seg, specs = assign_segments(scores, "top10,10-30,rest")
    out = segment_summaries(seg, labels, 20)
    assert [s["segment"] for s in out] == ["top 10%", "10-30%", "rest"]
    top = out[0]
    assert top["rows"] == 100 and top["share"] == pytest.approx(0.1) and not top["suppressed"]
    rate = labels[seg == "top 10%"].mean()
    assert top["response_rate"] == pytest.approx(rate)
    assert top["lift"] == pytest.approx(rate / labels.mean())
    assert top["lift"] > 1.5
    plain = segment_summaries(seg, None, 20, segments=specs)
    assert plain[1] == {"segment": "10-30%", "suppressed": False, "rows": 200, "share": 0.2}
    # Deciles come back in decile order, not string order.
    dseg, _ = assign_segments(scores)
    assert [s["segment"] for s in segment_summaries(dseg, None, 20)] == [
        f"decile {k}" for k in range(1, 11)
    ]
    # Non-binary outcomes: mean and lift.
    spend = np.abs(scores) * 10
    assert "mean" in segment_summaries(seg, spend, 20)[0]


def test_small_segments_are_suppressed_with_complement():
    scores = np.arange(500.0)[::-1]
    labels = (np.arange(500) < 60).astype(float)
    seg, specs = assign_segments(scores, "top1,1-30,rest")  # 5, 145, 350 rows
    out = segment_summaries(seg, labels, 20, segments=specs)
    assert out[0] == {
        "segment": "top 1%",
        "suppressed": True,
        "reason": "fewer than 20 rows (minimum cohort)",
    }
    # Alone, the top 1% would be recoverable from the totals: the next smallest goes too.
    assert out[1]["suppressed"] and "rows" not in out[1] and "totals" in out[1]["reason"]
    assert not out[2]["suppressed"] and out[2]["rows"] == 350
    # Empty segments are listed (withheld) when the segment list is given.
    seg10, specs10 = assign_segments(np.arange(10.0), "top1,1-100")
    small = segment_summaries(seg10, None, 5, segments=specs10)
    assert small[0]["segment"] == "top 1%" and small[0]["suppressed"]
    assert small[1]["rows"] == 10
    with pytest.raises(ValueError, match="not in the segment list"):
        segment_summaries(seg10, None, 5, segments=["top 1%"])


def test_report_module_has_no_print_and_no_pyplot():
    source = (Path(__file__).parents[1] / "vfm_flower" / "report.py").read_text()
    assert not re.search(r"^\s*print\(", source, re.M)
    assert "matplotlib.pyplot" not in source and "import pyplot" not in source


def test_the_own_data_table_holds_whole_rows_when_its_scores_tie():
    # a label owner with few distinct own scores: 3 rows above a large tie group
    rng = np.random.default_rng(4)
    n = 400
    own = np.r_[np.full(3, 2.0), np.zeros(n - 3)]
    y = (rng.random(n) < 0.3).astype(float)
    y[:3] = [1, 1, 0]
    inp = logistic_inputs(n=n, min_cohort=40, seed=4)
    inp = dataclasses.replace(inp, y_holdout=y, score_own_only=own)
    table = build_shared_report(inp)["gain_lift_label_owner_only"]
    assert all(float(d["positives"]).is_integer() for d in table)
    assert sum(d["positives"] for d in table) == y.sum()

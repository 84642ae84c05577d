"""SecureBoost core: the encrypted protocol grows the plain trees, which match XGBoost.

The encrypted runs use real 2048-bit Paillier keys (small data, few trees); the accuracy
comparisons run the same protocol with plain histograms (``encrypt=False``), which the first
tests prove grows identical trees.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_wine, make_friedman1
from sklearn.metrics import r2_score, roc_auc_score

from vfm_flower.errors import DataError
from vfm_flower.secureboost import (
    EncryptedHistograms,
    encode_level,
    histogram_layout,
    open_histograms,
    passive_histograms,
)
from vfm_flower.secureboost_local import LocalSecureBoost
from vfm_flower.trees import BoostingParams, quantile_bin_edges, quantize_gradients

xgb = pytest.importorskip("xgboost")


def _vertical(X: np.ndarray, extra: int, rng: np.random.Generator):
    """Split columns over the LO and two passive parties; the passive parties also hold
    ``extra`` customers the LO does not have, and their rows are shuffled."""
    n, m = X.shape
    a, b = m // 3, 2 * m // 3
    passives, joint = {}, {}
    for name, cols in (("bank", slice(a, b)), ("telco", slice(b, m))):
        block = np.vstack([X[:, cols], rng.normal(size=(extra, X[:, cols].shape[1]))])
        perm = rng.permutation(n + extra)
        passives[name] = block[perm]
        joint[name] = np.argsort(perm)[:n]
    return X[:, :a], passives, joint


def _binary_data(n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m))
    w = rng.normal(size=m)
    p = 1 / (1 + np.exp(-(0.7 * X @ w + np.sin(2 * X[:, 0]) + X[:, m // 2] * X[:, -1])))
    return X, (rng.random(n) < p).astype(float)


def _columns_of(X, cols):
    a, b = X.shape[1] // 3, 2 * X.shape[1] // 3
    return X[:, :a], {"bank": X[:, a:b], "telco": X[:, b:]}


@pytest.mark.parametrize(
    "objective, classes", [("binary", 2), ("multiclass", 3), ("squared_error", 2)]
)
def test_the_encrypted_protocol_grows_exactly_the_plain_trees(objective, classes):
    rng = np.random.default_rng(3)
    X, y = _binary_data(500, 9, 3)
    if objective == "multiclass":
        y = np.digitize(X[:, 0] + X[:, 4] + rng.normal(size=len(y)), [-0.7, 0.7]).astype(float)
    elif objective == "squared_error":
        y = 10 * X[:, 0] + 5 * X[:, 5] * X[:, 8] + rng.normal(size=len(y))
    X_lo, passives, joint = _vertical(X, 120, rng)
    params = BoostingParams(objective=objective, n_classes=classes, n_trees=2, max_depth=3)
    runs = [
        LocalSecureBoost(params, encrypt=enc, seed=5).fit("insurer", X_lo, y, passives, joint)
        for enc in (False, True)
    ]
    plain, secure = runs
    assert plain.model.canonical() == secure.model.canonical()
    assert np.array_equal(plain.margins_, secure.margins_)
    # passive splits are used: the partners' columns matter in these data
    assert secure.model.splits_of("bank") or secure.model.splits_of("telco")
    # a fixed schedule: four server rounds per level, whatever the data
    assert secure.rounds == 4 * params.max_depth * params.n_trees


def test_binary_hold_out_auc_is_within_0_01_of_xgboost():
    for seed in range(2):
        X, y = _binary_data(20000, 9, seed)
        X_lo, parts = _columns_of(X, 9)
        joint = {k: np.arange(len(y)) for k in parts}
        params = BoostingParams(n_trees=20, max_depth=5, n_bins=32)
        run = LocalSecureBoost(params, encrypt=False, seed=seed).fit("lo", X_lo, y, parts, joint)
        ho = run.holdout
        ours = roc_auc_score(y[ho], run.predict(X_lo[ho], {k: v[ho] for k, v in parts.items()}))
        ref = xgb.XGBClassifier(
            n_estimators=20,
            max_depth=5,
            max_bin=32,
            learning_rate=0.3,
            tree_method="hist",
            base_score=float(y[~ho].mean()),
            n_jobs=1,
        ).fit(X[~ho], y[~ho])
        theirs = roc_auc_score(y[ho], ref.predict_proba(X[ho])[:, 1])
        assert abs(ours - theirs) < 0.01, (seed, ours, theirs)


@pytest.mark.parametrize("loader", [load_digits, load_wine])
def test_multiclass_macro_auc_is_within_0_01_of_xgboost_softmax(loader):
    data = loader()
    X = data.data.astype(float)
    X = X[:, [j for j in range(X.shape[1]) if len(np.unique(X[:, j])) > 1]]
    y = data.target
    k = len(np.unique(y))
    X_lo, parts = _columns_of(X, X.shape[1])
    joint = {p: np.arange(len(y)) for p in parts}
    params = BoostingParams(objective="multiclass", n_classes=k, n_trees=20, max_depth=4)
    run = LocalSecureBoost(params, encrypt=False, seed=1, holdout_fraction=0.3).fit(
        "lo", X_lo, y, parts, joint
    )
    ho = run.holdout
    proba = run.predict(X_lo[ho], {p: v[ho] for p, v in parts.items()})
    assert proba.shape == (ho.sum(), k)
    assert np.allclose(proba.sum(axis=1), 1.0)
    ours = roc_auc_score(y[ho], proba, multi_class="ovr", average="macro")
    ref = xgb.XGBClassifier(
        n_estimators=20,
        max_depth=4,
        max_bin=32,
        learning_rate=0.3,
        tree_method="hist",
        objective="multi:softprob",
        n_jobs=1,
    ).fit(X[~ho], y[~ho])
    theirs = roc_auc_score(y[ho], ref.predict_proba(X[ho]), multi_class="ovr", average="macro")
    assert abs(ours - theirs) < 0.01, (ours, theirs)


def test_squared_error_r2_is_within_0_01_of_xgboost():
    X, y = make_friedman1(n_samples=10000, n_features=9, noise=1.0, random_state=0)
    X_lo, parts = _columns_of(X, 9)
    joint = {p: np.arange(len(y)) for p in parts}
    params = BoostingParams(objective="squared_error", n_trees=20, max_depth=5)
    run = LocalSecureBoost(params, encrypt=False, seed=0).fit("lo", X_lo, y, parts, joint)
    ho = run.holdout
    ours = r2_score(y[ho], run.predict(X_lo[ho], {p: v[ho] for p, v in parts.items()}))
    ref = xgb.XGBRegressor(
        n_estimators=20,
        max_depth=5,
        max_bin=32,
        learning_rate=0.3,
        tree_method="hist",
        base_score=float(y[~ho].mean()),
        n_jobs=1,
    ).fit(X[~ho], y[~ho])
    theirs = r2_score(y[ho], ref.predict(X[ho]))
    assert abs(ours - theirs) < 0.01, (ours, theirs)


def test_early_stopping_keeps_the_best_round_and_row_column_sampling_train():
    X, y = _binary_data(4000, 9, 7)
    X_lo, parts = _columns_of(X, 9)
    joint = {p: np.arange(len(y)) for p in parts}
    params = BoostingParams(
        n_trees=60, max_depth=4, learning_rate=0.5, early_stopping=3, subsample=0.8, colsample=0.7
    )
    run = LocalSecureBoost(params, encrypt=False, seed=2).fit("lo", X_lo, y, parts, joint)
    assert len(run.history) < 60  # stopped
    best = int(np.argmin(run.history)) + 1
    assert len(run.model.trees) == best
    ho = run.holdout
    assert roc_auc_score(y[ho], run.predict(X_lo[ho], {p: v[ho] for p, v in parts.items()})) > 0.75


# ------------------------------------------------------------------------------ bad input


def test_bad_parameters_and_data_end_in_clear_errors():
    with pytest.raises(ValueError, match="n_bins must be in"):
        BoostingParams(n_bins=300)
    with pytest.raises(ValueError, match="max_depth"):
        BoostingParams(max_depth=0)
    with pytest.raises(ValueError, match="objective must be one of"):
        BoostingParams(objective="poisson")
    with pytest.raises(DataError, match="constant"):
        quantile_bin_edges(np.ones(50), 32, name="bank column 'age'")
    X, y = _binary_data(300, 6, 1)
    X_lo, parts = _columns_of(X, 6)
    joint = {p: np.arange(len(y)) for p in parts}
    params = BoostingParams(objective="multiclass", n_classes=4, n_trees=1, max_depth=2)
    with pytest.raises(DataError, match="n-classes = 4"):
        LocalSecureBoost(params, encrypt=False).fit("lo", X_lo, y, parts, joint)
    with pytest.raises(DataError, match="0/1 labels"):
        LocalSecureBoost(BoostingParams(n_trees=1), encrypt=False).fit(
            "lo", X_lo, y * 2, parts, joint
        )
    constant = dict(parts, bank=np.column_stack([parts["bank"], np.zeros(len(y))]))
    with pytest.raises(DataError, match="bank column 2 is constant"):
        LocalSecureBoost(BoostingParams(n_trees=1), encrypt=False).fit(
            "lo", X_lo, y, constant, joint
        )


def test_scoring_with_a_party_missing_is_a_clear_error():
    X, y = _binary_data(2000, 9, 4)
    X_lo, parts = _columns_of(X, 9)
    joint = {p: np.arange(len(y)) for p in parts}
    run = LocalSecureBoost(BoostingParams(n_trees=3, max_depth=3), encrypt=False).fit(
        "lo", X_lo, y, parts, joint
    )
    owner = "bank" if run.model.splits_of("bank") else "telco"
    rest = {p: v for p, v in parts.items() if p != owner}
    with pytest.raises(DataError, match=f"answers of '{owner}'"):
        run.predict(X_lo, rest)


# ------------------------------------------------------------------------------ the crypto


@pytest.fixture(scope="module")
def keys():
    from phe import paillier

    return paillier.generate_paillier_keypair(n_length=2048)


def test_histograms_decode_signed_fields_exactly_and_refuse_a_wrong_shape(keys):
    from vfm_flower.hazmat.paillier_djn import DJNEncryptor

    public, private = keys
    rng = np.random.default_rng(0)
    rows, slots, pairs = 300, 400, 5
    g = rng.integers(-(1 << 20), (1 << 20) + 1, size=(rows, 1))
    h = rng.integers(0, (1 << 20) + 1, size=(rows, 1))
    pair = rng.integers(-1, pairs, size=(rows, 1))
    joint_slots = rng.permutation(slots)[:rows]
    layout = histogram_layout(2048, slots, pairs)
    plain = encode_level(g, h, pair, joint_slots, layout, slots)
    enc = DJNEncryptor(public, private=private)
    cts = [enc.encrypt_ints(chunk, workers=1) for chunk in plain]
    # the passive party holds every slot here; its codes are random
    codes = rng.integers(0, 8, size=(slots, 3)).astype(np.uint8)
    slot_of_row = np.arange(slots)
    eh = passive_histograms(public.n, cts, slot_of_row, codes, 8, layout, workers=1)
    hg, hh, hc = open_histograms(private, eh, layout, expected_columns=3, expected_bins=8)
    for j in range(pairs):
        rows_j = np.flatnonzero(pair[:, 0] == j)
        for f in range(3):
            want = np.bincount(codes[joint_slots[rows_j], f], g[rows_j, 0], 8)
            assert np.array_equal(hg[j, f], np.rint(want).astype(np.int64))
            want_h = np.bincount(codes[joint_slots[rows_j], f], h[rows_j, 0], 8)
            assert np.array_equal(hh[j, f], np.rint(want_h).astype(np.int64))
            assert np.array_equal(hc[j, f], np.bincount(codes[joint_slots[rows_j], f], None, 8))
    short = EncryptedHistograms(eh.columns, eh.bins, (eh.ciphertexts[0][:-1],))
    with pytest.raises(ValueError, match="the layout needs"):
        open_histograms(private, short, layout, expected_columns=3, expected_bins=8)
    with pytest.raises(ValueError, match="declared 4"):
        open_histograms(private, eh, layout, expected_columns=4, expected_bins=8)
    with pytest.raises(ValueError, match="the job has 16"):
        open_histograms(private, eh, layout, expected_columns=3, expected_bins=16)
    # what the passive party sent does not repeat the randomness of what it received
    sent = set(eh.ciphertexts[0])
    assert not sent & {int(c) for c in cts[0]}


def test_level_ciphertexts_are_fresh_and_the_layout_does_not_depend_on_the_data(keys):
    from vfm_flower.hazmat.paillier_djn import DJNEncryptor

    public, private = keys
    g_int, h_int, _ = quantize_gradients(np.zeros((50, 1)), np.zeros((50, 1)))
    layout = histogram_layout(2048, 80, 4)
    plain = encode_level(g_int, h_int, np.full((50, 1), -1), np.arange(50), layout, 80)
    enc = DJNEncryptor(public, private=private)
    first = enc.encrypt_ints(plain[0], workers=1)
    second = enc.encrypt_ints(plain[0], workers=1)
    assert len(set(first)) == len(first)  # 80 encryptions of zero, all distinct
    assert not set(first) & set(second)  # a new level never repeats a ciphertext
    # the padded layout: the passive party's view depends on the level only
    X, y = _binary_data(400, 6, 0)
    X_lo, parts = _columns_of(X, 6)
    joint = {p: np.arange(len(y)) for p in parts}
    shapes = []
    for labels in (y, 1 - y, (X[:, 0] > 1.5).astype(float)):
        run = LocalSecureBoost(BoostingParams(n_trees=2, max_depth=3), encrypt=False).fit(
            "lo", X_lo, labels, parts, joint
        )
        shapes.append(run.rounds)
    assert len(set(shapes)) == 1


def test_quantized_gradients_keep_their_bounds():
    g = np.array([[-3.5], [0.25], [2.0]])
    h = np.array([[1.0], [0.5], [0.0]])
    g_int, h_int, scale = quantize_gradients(g, h)
    assert scale.tolist() == [4.0]
    assert np.abs(g_int).max() <= 1 << 20 and h_int.max() <= 1 << 20
    assert np.allclose(g_int * scale / 2**20, g, atol=2**-18)

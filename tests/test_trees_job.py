"""The ``secureboost`` job through the real Flower app, in-process (Flower's Grid, serialization).

The trees the job grows under encryption, with hidden membership, are exactly the trees the
same growth code grows in plain from every party's bin codes on the joint rows; nothing the
server relays holds a label, a feature value or a plaintext gradient.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import joint_rows_of, make_collaboration, synthetic_frames
from tests.test_protocol_training import _decoded, _states, message_to_bytes
from vfm_flower.errors import ProtocolAbort
from vfm_flower.tree_growth import grow_plain
from vfm_flower.tree_model import TreeEnsemble
from vfm_flower.trees import BoostingParams, objective_for

JOB = {"trees": 3, "depth": 3, "bins": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    frames, shared = synthetic_frames(n_shared=500, n_only=40, seed=13)
    rng = np.random.default_rng(0)
    for frame in frames.values():  # a second column per party, one of them categorical
        frame["extra"] = rng.choice(["a", "b", "c"], size=len(frame))
    collab = make_collaboration(root / "c", frames, label_owner="lo", min_intersection=50)
    grids = []
    result = collab.run(grid_out=grids, model="secureboost", job="train", **JOB)
    return collab, result, grids[0]


def _plain_reference(states, params: BoostingParams, min_rows: int = 100):
    """The same growth in plain, from the parties' stored bin codes on the joint rows."""
    lo = states["lo"]
    codes = {"lo": lo.array("sb.codes")}
    for party in ("p1", "p2"):
        codes[party] = states[party].array("sb.codes")[joint_rows_of(states, party, "lo")]
    y = lo.array("sb.y")
    holdout = lo.array("sb.holdout").astype(bool)
    model, margins, _ = grow_plain(
        params, codes, y, holdout, label_owner="lo", min_node_rows=min_rows
    )
    return model, margins, y, holdout


def test_the_job_grows_the_plain_reference_trees(trained):
    collab, result, grid = trained
    states = _states(grid)
    params = BoostingParams(n_trees=3, max_depth=3, n_bins=16)
    model, margins, y, holdout = _plain_reference(states, params)
    saved = TreeEnsemble.from_state(json.loads(str(states["lo"].get("sb.model"))))
    assert saved.canonical() == model.canonical()
    assert model.splits_of("p1") or model.splits_of("p2")  # the partners' columns matter
    auc = roc_auc_score(y[holdout], objective_for(params).predict(margins[holdout]))
    public = result["public"]
    assert abs(public["auc"] - round(auc, 4)) < 1e-4
    assert public["trees"] == 3 and public["rounds_per_tree"] == 12
    assert (
        result["phases"]["train"]["rounds"] == 1 + 3 * 12 + 2
    )  # prepare, levels, finish, evaluate


def test_each_party_keeps_only_its_own_splits(trained):
    collab, _, grid = trained
    states = _states(grid)
    model = TreeEnsemble.from_state(json.loads(str(states["lo"].get("sb.model"))))
    for party in ("lo", "p1", "p2"):
        table = json.loads(str(states[party].get("sb.splits")))
        assert sorted(table["ids"]) == sorted(model.splits_of(party))
        artifact = collab.root / "work" / "parties" / party / "artifacts" / "tree-model.vfa"
        assert artifact.is_file()
        text = artifact.read_bytes()
        importance = json.loads(
            (artifact.parent.parent / "tree-importance.json").read_text(encoding="utf-8")
        )
        features = {f["feature"] for f in importance["features"]}
        assert features and all(f.startswith((f"{party}_x", "extra")) for f in features)
        for other in {"lo", "p1", "p2"} - {party}:
            assert f"{other}_x".encode() not in text
            assert f"{other}_x" not in json.dumps(importance)
    # the label owner (result owner) sees every party's share of the splits and the gain
    report = json.loads((collab.root / "work" / "parties" / "lo" / "report.json").read_text())
    shares = report["trees"]["importance"]
    assert set(shares) == {"lo", "p1", "p2"}
    assert abs(sum(v["gain_share"] for v in shares.values()) - 1.0) < 1e-9
    assert sum(v["splits"] for v in shares.values()) == sum(
        len(model.splits_of(p)) for p in ("lo", "p1", "p2")
    )
    assert report["model_label"] == "gradient-boosted trees"
    # the gain is reported consistently; its sign is not asserted: on this ~100-row hold-out
    # (fresh CSPRNG hold-out per run, 3 trees) its sampling noise is ~0.04, and 1 run in ~15
    # measured a gain of -0.003 while 14 gave 0.04..0.13 (the partners' columns matter: see
    # test_the_job_grows_the_plain_reference_trees, and the benchmark's AUC against XGBoost)
    gain = report["gain_over_own_data"]
    assert gain["gain"] == pytest.approx(gain["federated"] - gain["label_owner_only"])
    assert gain["federated"] > 0.6 and gain["partners"] == ["p1", "p2"]


def test_nothing_relayed_holds_a_label_a_feature_or_a_plaintext_gradient(trained):
    collab, _, grid = trained
    states = _states(grid)
    lo = states["lo"]
    labels = pd.read_csv(collab.data["lo"])["y"].to_numpy()
    x = pd.read_csv(collab.data["p1"])["p1_x"].to_numpy()
    y = lo.array("sb.y")
    g = y[:32] - 0.5  # tree 0's gradients are base - y: their float and fixed-point forms
    needles = [
        labels.astype(np.float64)[:16].tobytes(),
        labels.astype(np.int64)[:16].tobytes(),
        x[:8].tobytes(),
        g.tobytes(),
        np.rint(g * 2**20).astype(np.int64)[:16].tobytes(),
        y[:16].astype(np.uint8).tobytes(),
    ]
    envelopes = 0
    for _, _, message in _decoded(grid):
        if not message.has_content():
            continue
        for name in ("inbox", "outbox"):
            for arr in message.content.get(name, {}).values():
                assert bytes(arr.data)[:4] == b"VFE1", "a relayed payload is not an envelope"
                envelopes += 1
        raw = message_to_bytes(message)
        for needle in needles:
            assert needle not in raw
    assert envelopes > 50


def test_a_class_count_that_does_not_match_the_labels_is_refused(tmp_path):
    frames, _ = synthetic_frames(n_shared=200, n_only=10, seed=3)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    with pytest.raises(ProtocolAbort, match="classes"):
        collab.run(model="secureboost", job="train", objective="multiclass", classes=3, trees=1)


def test_local_cli_trains_binary_and_multiclass_trees(tmp_path, capsys):
    from vfm_flower.cli import main

    frames, _ = synthetic_frames(n_shared=400, n_only=20, seed=8)
    lo = frames["lo"]
    rng = np.random.default_rng(2)
    # next-best-offer: three offers, driven by the label owner's and a partner's columns
    score = lo["lo_x"].to_numpy() + rng.normal(size=len(lo))
    lo["offer"] = np.select([score < -0.5, score < 0.5], ["card", "loan"], "savings")
    for label, extra in (("y", []), ("offer", ["--objective", "multiclass", "--classes", "3"])):
        root = tmp_path / label
        collab = make_collaboration(
            root / "c", frames, label_owner="lo", label_column=label, min_intersection=50
        )
        args = ["local", "train", "--agreement", str(collab.agreement_path)]
        for party, path in collab.data.items():
            args += ["--data", f"{party}={path}"]
        args += [f"--key={p}={k}" for p, k in collab.keys.items()]
        args += [f"--key=operator={collab.operator_key}", "--workdir", str(root / "w")]
        args += ["--model", "secureboost", "--trees", "2", "--depth", "2", *extra]
        assert main(args) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        metric = "macro_auc" if extra else "auc"
        assert f"hold-out {metric} 0." in out and "trained 2 trees" in out
        for party in ("lo", "p1", "p2"):
            assert (root / "w" / "parties" / party / "artifacts" / "tree-model.vfa").is_file()
        score = [a if a != "train" else "score" for a in args if a not in extra]
        score = score[: score.index("--trees")] + ["--out", str(root / "scores.csv")]
        assert main(score) == 0, capsys.readouterr().err
        scores = pd.read_csv(root / "scores.csv")
        if extra:
            report = json.loads((root / "w" / "parties" / "lo" / "tree_report.json").read_text())
            assert report["model"] == "multiclass" and 0.5 < report["macro_auc"] <= 1.0
            assert set(report["top_k_accuracy"]) == {"1", "2", "3"}
            assert report["top_k_accuracy"]["3"] == 1.0
            counts = report["confusion"]["counts"]
            assert counts is None or len(counts) == 3
            if counts is None:  # a small cell withholds the whole matrix, said why
                assert any(x["aggregate"] == "confusion matrix" for x in report["suppressed"])
            assert {c["class"] for c in report["per_class"]} == {"card", "loan", "savings"}
            assert (root / "w" / "parties" / "lo" / "tree_report.html").is_file()
            assert list(scores.columns) == [
                "id",
                "predicted",
                "score_card",
                "score_loan",
                "score_savings",
            ]
            assert np.allclose(scores.filter(like="score_").sum(axis=1), 1.0)
        else:
            assert list(scores.columns) == ["id", "score"]


def test_scoring_gives_the_training_predictions_and_needs_every_part(trained, tmp_path):
    import shutil

    collab, _, grid = trained
    states = _states(grid)
    lo = states["lo"]
    margins = lo.array("sb.margins")[:, 0]
    table = pd.read_csv(collab.data["lo"], dtype={"email": str})
    ids = table["email"].to_numpy()[joint_rows_of(states, "lo", "lo")]
    expected = dict(zip(ids, 1 / (1 + np.exp(-margins)), strict=True))
    work = collab.root / "work"
    scoring = tmp_path / "score-work"
    shutil.copytree(work, scoring)
    result = collab.run(workdir=scoring, model="secureboost", job="score")
    assert result["public"]["scored_rows"] == len(expected)
    scores = pd.read_csv(scoring / "parties" / "lo" / "scores.csv", dtype={"id": str})
    got = dict(zip(scores["id"], scores["score"], strict=True))
    assert set(got) == set(expected)
    assert max(abs(got[i] - expected[i]) for i in got) < 1e-9
    for party in ("p1", "p2"):  # only the result owner keeps scores
        assert not (scoring / "parties" / party / "scores.csv").exists()
    (scoring / "parties" / "p2" / "artifacts" / "tree-model.vfa").unlink()
    with pytest.raises(ProtocolAbort, match="p2.*no artifact 'tree-model'"):
        collab.run(workdir=scoring, model="secureboost", job="score")


def _relay(edit):
    from tests.test_protocol_training import _tampering_relay

    return _tampering_relay(edit)


def test_tampered_or_replayed_histograms_are_refused(tmp_path, monkeypatch):
    from vfm_flower.strategies.transport import Transport

    frames, _ = synthetic_frames(n_shared=200, n_only=10, seed=6)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)

    def flip(self, inboxes):
        for key, blob in list(inboxes.get("lo", {}).items()):
            if key == ("p1", "trees.histogram_sums"):
                inboxes["lo"][key] = blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:]
        return inboxes

    monkeypatch.setattr(Transport, "post", _relay(flip))
    with pytest.raises(ProtocolAbort, match="p1.*(tampered|signature)"):
        collab.run(model="secureboost", job="train", trees=1, depth=2)
    for party in ("lo", "p1", "p2"):
        assert not (collab.root / "work" / "parties" / party / "artifacts").exists()

    kept = {}

    def replay(self, inboxes):
        for key, blob in list(inboxes.get("lo", {}).items()):
            if key == ("p1", "trees.histogram_sums"):
                if "old" in kept:
                    inboxes["lo"][key] = kept["old"]
                else:
                    kept["old"] = blob
        return inboxes

    monkeypatch.setattr(Transport, "post", _relay(replay))
    # an earlier level's reply, in place of this level's: bound to its round, refused
    with pytest.raises(ProtocolAbort, match="p1.*(round|replayed|signature)"):
        collab.run(workdir=tmp_path / "w2", model="secureboost", job="train", trees=1, depth=2)


def test_caravan_demo_trees_are_as_accurate_as_xgboost(tmp_path):
    """The demo's three parties (encrypted job, Flower's Grid) against XGBoost on the same
    prepared columns, rows, split and parameters."""
    from tests.conftest import Collaboration
    from vfm_flower.demo_data import prepare_demo_collaboration
    from vfm_flower.preparation import PreparationPlan, apply_preparation, encode_labels

    xgb = pytest.importorskip("xgboost")
    demo = prepare_demo_collaboration(tmp_path / "setup")
    collab = Collaboration(
        tmp_path,
        demo.agreement_path,
        demo.party_data,
        demo.party_keys,
        operator_key=demo.operator_key,
    )
    grids = []
    job = {"trees": 10, "depth": 3, "holdout-seed": 2000}
    result = collab.run(grid_out=grids, model="secureboost", job="evaluate", **job)
    states = _states(grids[0])
    blocks = []
    for party in ("insurer", "broker", "bank"):
        frame = pd.read_csv(collab.data[party], dtype={"email": str})
        aligned = frame.iloc[joint_rows_of(states, party, "insurer")].reset_index(drop=True)
        plan = PreparationPlan.from_json(str(states[party].get("prep_plan")))
        blocks.append(apply_preparation(plan, aligned).matrix)
        if party == "insurer":
            y = encode_labels(aligned["Purchase"], "Yes", party="insurer").astype(int)
    X = np.hstack(blocks)
    holdout = states["insurer"].array("sb.holdout").astype(bool)
    assert np.array_equal(states["insurer"].array("sb.y").astype(int), y)
    ref = xgb.XGBClassifier(
        n_estimators=10,
        max_depth=3,
        max_bin=32,
        learning_rate=0.3,
        reg_lambda=1.0,
        min_child_weight=1.0,
        tree_method="hist",
        base_score=float(y[~holdout].mean()),
        n_jobs=1,
    ).fit(X[~holdout], y[~holdout])
    theirs = roc_auc_score(y[holdout], ref.predict_proba(X[holdout])[:, 1])
    ours = result["public"]["auc"]
    print(f"caravan trees: federated {ours:.4f} xgboost {theirs:.4f}")
    assert abs(ours - theirs) <= 0.01


def test_sampling_early_stopping_and_a_result_owner_that_is_not_the_label_owner(tmp_path):
    frames, _ = synthetic_frames(n_shared=400, n_only=20, seed=9)
    collab = make_collaboration(
        tmp_path / "c", frames, label_owner="lo", result_owner="p1", min_intersection=50
    )
    grids = []
    job = {"trees": 6, "depth": 2, "colsample": 0.5, "subsample": 0.8, "early-stopping": 1}
    job["learning-rate"] = 1.0
    result = collab.run(grid_out=grids, model="secureboost", job="train", **job)
    states = _states(grids[0])
    model = TreeEnsemble.from_state(json.loads(str(states["lo"].get("sb.model"))))
    history = json.loads(str(states["lo"].get("sb.history")))
    kept = int(np.argmin(history)) + 1
    assert result["public"]["trees"] == kept <= len(history) <= 6
    work = collab.root / "work" / "parties"
    report = json.loads((work / "p1" / "report.json").read_text())  # the result owner's
    assert report["party"] == "p1" and abs(report["auc"] - result["public"]["auc"]) < 1e-3
    assert report["trees"]["trees"] == kept and "importance" not in report["trees"]
    assert not (work / "lo" / "report.json").exists()
    # each passive party keeps only the splits of the kept trees
    used = {s for t in model.trees[:kept] for o, s in zip(t.owner, t.split) if o == "p2"}
    assert set(json.loads(str(states["p2"].get("sb.splits")))["ids"]) == used


def test_too_many_bins_and_a_constant_column_are_refused_by_name(tmp_path):
    from vfm_flower.errors import PolicyViolation

    frames, _ = synthetic_frames(n_shared=200, n_only=10, seed=4)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    with pytest.raises((PolicyViolation, ProtocolAbort), match="bins"):
        collab.run(model="secureboost", job="train", trees=1, bins=128)
    # a constant column is dropped with a warning naming it (the preparation's rule); a party
    # left with none is refused by name
    frames["p2"]["p2_x"] = 7.0
    collab = make_collaboration(tmp_path / "d", frames, label_owner="lo", min_intersection=50)
    with pytest.raises(ProtocolAbort, match="p2.*(constant|no usable feature)"):
        collab.run(model="secureboost", job="train", trees=1)


def test_a_passive_partys_whole_view_holds_no_label_derived_plaintext(tmp_path, monkeypatch):
    """Everything p1 opens: ciphertexts under the LO's key, its own split requests (column,
    bin, random id), which of its splits the model keeps and, released by the agreement,
    their rounded gain shares."""
    from vfm_flower.context import PartyContext

    opened, requested = [], []
    original = PartyContext.receive_arrays

    def spy(self, sender, topic, *, round=None):
        arrays, meta = original(self, sender, topic, round=round)
        if self.party == "p1":
            opened.append((topic.name, sorted(arrays), dict(meta)))
        if self.party in ("p1", "p2") and topic.name == "trees.requests":
            requested.extend(r[0] for r in meta["requests"])
        return arrays, meta

    monkeypatch.setattr(PartyContext, "receive_arrays", spy)
    frames, _ = synthetic_frames(n_shared=500, n_only=30, seed=14)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    collab.run(model="secureboost", job="train", trees=2, depth=3)
    topics = {t for t, _, _ in opened}
    assert topics == {"trees.level_start", "trees.level", "trees.requests", "trees.split_gains"}
    levels = [
        (m["tree"], m["level"], m["pairs"]) for t, _, m in opened if t.startswith("trees.lev")
    ]
    # a fixed schedule and padded layouts: the same for any labels
    assert levels == [(t, lv, 1 << max(lv - 1, 0)) for t in range(2) for lv in range(3)]
    for topic, arrays, meta in opened:
        if topic.startswith("trees.level"):
            assert arrays == ["ciphertexts", "public_key"] and set(meta) == {
                "tree",
                "level",
                "pairs",
                "slots",
            }
        elif topic == "trees.requests":
            assert arrays == [] and set(meta) == {"tree", "level", "requests"}
            for _, column, b in meta["requests"]:
                assert column == 0 and 0 <= b < 32  # its own column, a bin of it
        else:
            assert set(meta) == {"splits", "shares"}
            assert all(0 <= v <= 1 and round(v, 3) == v for v in meta["shares"].values())
    assert requested and len(set(requested)) == len(requested)
    assert max(requested) > 2**40  # random ids, not tree positions

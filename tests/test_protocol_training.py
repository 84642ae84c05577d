"""Encrypted vertical training and scoring through the real Flower app, in-process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.common.serde import message_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score

from tests.conftest import joint_rows_of, make_collaboration, synthetic_frames
from vfm_flower.clients.vertical_party import load_state
from vfm_flower.envelope import ReplayGuard, open_envelope, peek_header
from vfm_flower.errors import EnvelopeError, ProtocolAbort
from vfm_flower.model_store import load_model_slice
from vfm_flower.preparation import PreparationPlan, apply_preparation, encode_labels
from vfm_flower.strategies.transport import Transport

FAST = {"max-iterations": 8}


def _states(grid):
    return {ctx.node_config["party"]: load_state(ctx) for ctx in grid.contexts.values()}


def _central_design(collab, states, parties, label_owner):
    """Each party's prepared columns on the aligned rows (its saved plan), stacked."""
    blocks = []
    for party in parties:
        frame = pd.read_csv(collab.data[party], dtype={"email": str})
        rows = joint_rows_of(states, party, label_owner)
        aligned = frame.iloc[rows].reset_index(drop=True)
        plan = PreparationPlan.from_json(str(states[party].get("prep_plan")))
        blocks.append(apply_preparation(plan, aligned).matrix)
        if party == label_owner:
            labels = aligned["y"]
    return np.hstack(blocks), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    frames, shared = synthetic_frames(n_shared=400, n_only=30, seed=11)
    collab = make_collaboration(root / "c", frames, label_owner="lo", min_intersection=50)
    grids = []
    result = collab.run(grid_out=grids, job="train", **{"max-iterations": 30})
    return collab, result, grids[0]


def test_training_matches_central_sklearn(trained):
    collab, result, grid = trained
    states = _states(grid)
    X, labels = _central_design(collab, states, ["p1", "p2", "lo"], "lo")
    y = encode_labels(labels, None, party="lo").astype(int)
    holdout = states["lo"].array("coord.holdout_mask").astype(bool)
    n_train = int((~holdout).sum())
    central = LogisticRegression(C=1.0 / (1e-3 * n_train), max_iter=5000).fit(
        X[~holdout], y[~holdout]
    )
    auc_central = roc_auc_score(y[holdout], central.decision_function(X[holdout]))
    public = result["public"]
    assert public["iterations"] <= 40
    assert abs(public["auc"] - auc_central) <= 0.01
    assert public["auc"] > public["auc_label_owner_only"]
    assert public["rounds_per_iteration"] == 2


def test_every_party_keeps_only_its_slice(trained):
    collab, _, _ = trained
    work = collab.root / "work" / "parties"
    names = {}
    for party in ("lo", "p1", "p2"):
        model_slice = load_model_slice(work / party, party)
        names[party] = set(model_slice.feature_names)
        text = (work / party / "model" / "slice.json").read_text()
        for other in {"lo", "p1", "p2"} - {party}:
            assert f"{other}_x" not in text
    assert names["p1"] == {"p1_x"} and names["lo"] == {"lo_x"}
    assert load_model_slice(work / "lo", "lo").intercept is not None


def _decoded(grid):
    for direction, kind, blob in grid.transcript:
        proto = ProtoMessage()
        proto.ParseFromString(blob)
        yield direction, kind, message_from_proto(proto)


def test_server_view_is_masked_or_encrypted(trained):
    collab, _, grid = trained
    masked_arrays, envelopes = 0, 0
    labels = pd.read_csv(collab.data["lo"])["y"].to_numpy()
    label_bytes = [labels.astype(np.float64)[:16].tobytes(), labels.astype(np.int8)[:64].tobytes()]
    plain_x = pd.read_csv(collab.data["p1"])["p1_x"].to_numpy()[:8].tobytes()
    for _, _, message in _decoded(grid):
        if not message.has_content():
            continue
        for name in ("inbox", "outbox"):
            for arr in message.content.get(name, {}).values():
                blob = bytes(arr.data)
                assert blob[:4] == b"VFE1", "a relayed payload is not an envelope"
                envelopes += 1
        for name in ("masked", "sums"):
            for arr in message.content.get(name, {}).values():
                values = arr.numpy()
                assert values.dtype == np.uint64
                # masked fixed-point values look uniform: no small plaintext-like numbers
                small = np.abs(values.view(np.int64)) < 2**40
                assert small.mean() < 0.01
                masked_arrays += 1
        raw = message_to_bytes(message)
        for needle in [*label_bytes, plain_x]:
            assert needle not in raw
    # training relays sealed envelopes only (no server-side sum)
    assert masked_arrays == 0 and envelopes > 20


def message_to_bytes(message):
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).SerializeToString()


def test_a_party_cannot_open_another_partys_payloads(trained):
    collab, _, grid = trained
    from vfm_flower.keys import PartyIdentity

    p1 = PartyIdentity.load(collab.keys["p1"])
    tried = 0
    for _, _, message in _decoded(grid):
        if not message.has_content():
            continue
        for arr in message.content.get("outbox", {}).values():
            blob = bytes(arr.data)
            header = peek_header(blob)
            if header.recipient == "p1":
                continue
            sender = collab.identities[header.sender].public
            with pytest.raises(EnvelopeError):
                open_envelope(
                    blob,
                    p1,
                    sender,
                    run_id=header.run_id,
                    phase=header.phase,
                    round=header.round,
                    topic=header.topic,
                    replay_guard=ReplayGuard(),
                )
            tried += 1
    assert tried > 5
    # only the label owner holds a Paillier private key
    states = _states(grid)
    assert "paillier.private" in states["lo"]
    assert "paillier.private" not in states["p1"] and "paillier.private" not in states["p2"]


def test_scoring_only_result_owner_gets_scores(trained, tmp_path):
    collab, _, _ = trained
    result = collab.run(job="score")
    assert result["public"]["scored_rows"] == result["joint_rows"]
    work = collab.root / "work" / "parties"
    scores = pd.read_csv(work / "lo" / "scores.csv")
    assert list(scores.columns) == ["id", "score"]
    assert scores["score"].between(0, 1).all()
    assert not (work / "p1" / "scores.csv").exists()
    assert not (work / "p2" / "scores.csv").exists()
    assert "score" not in json.dumps(result["public"]).replace("scored_rows", "")


def test_missing_slice_is_a_clear_error(trained, tmp_path):
    import shutil

    collab, _, _ = trained
    fresh = tmp_path / "fresh"
    shutil.copytree(collab.root / "work", fresh)
    shutil.rmtree(fresh / "parties" / "p2" / "model")
    (fresh / "parties" / "lo" / "scores.csv").unlink(missing_ok=True)
    with pytest.raises(ProtocolAbort, match="p2.*no trained model slice"):
        collab.run(workdir=fresh, job="score")
    assert not (fresh / "parties" / "lo" / "scores.csv").exists()


def _tampering_relay(mutate):
    """The server's relay, with ``mutate(transport, mailbox)`` applied after each round."""
    original = Transport.post

    def relay(self, replies):
        original(self, replies)
        mutate(self, self._mailbox)

    return relay


def test_tampered_relay_refused_and_no_half_written_slice(tmp_path, monkeypatch):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=3)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)

    def flip(self, inboxes):
        if self.phase == "train" and "p1" in inboxes:
            for key, blob in list(inboxes["p1"].items()):
                if key[1] == "train.encrypted_residuals":
                    inboxes["p1"][key] = blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:]
        return inboxes

    monkeypatch.setattr(Transport, "post", _tampering_relay(flip))
    with pytest.raises(ProtocolAbort, match="p1.*(tampered|signature)"):
        collab.run(job="train", **FAST)
    for party in ("lo", "p1", "p2"):
        assert not (collab.root / "work" / "parties" / party / "model").exists()


def test_replayed_residual_refused(tmp_path, monkeypatch):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=4)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    kept = {}

    def replay(self, inboxes):
        for key, blob in inboxes.get("p1", {}).items():
            if key[1] == "train.encrypted_residuals":
                if "old" in kept:
                    inboxes["p1"][key] = kept["old"]
                else:
                    kept["old"] = blob
        return inboxes

    monkeypatch.setattr(Transport, "post", _tampering_relay(replay))
    with pytest.raises(ProtocolAbort, match="p1.*(round|replayed)"):
        collab.run(job="train", **FAST)


def test_linear_regression_matches_ridge(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    ids = [f"c{i}@shop.example" for i in range(n)]
    x = {p: rng.normal(size=(n, 2)) for p in ("lo", "p1")}
    target = 3 + x["lo"] @ [1.0, -2.0] + x["p1"] @ [0.5, 1.5] + rng.normal(scale=0.5, size=n)
    frames = {
        "lo": pd.DataFrame({"email": ids, "a1": x["lo"][:, 0], "a2": x["lo"][:, 1], "y": target}),
        "p1": pd.DataFrame({"email": ids, "b1": x["p1"][:, 0], "b2": x["p1"][:, 1]}),
    }
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    grids = []
    result = collab.run(grid_out=grids, job="train", model="linear", **{"max-iterations": 40})
    states = _states(grids[0])
    X, labels = _central_design(collab, states, ["p1", "lo"], "lo")
    y = labels.to_numpy(dtype=float)
    holdout = states["lo"].array("coord.holdout_mask").astype(bool)
    n_train = int((~holdout).sum())
    ridge = Ridge(alpha=1e-3 * n_train).fit(X[~holdout], y[~holdout])
    r2_central = r2_score(y[holdout], ridge.predict(X[holdout]))
    assert abs(result["public"]["r2"] - r2_central) <= 0.01
    assert result["public"]["r2"] > result["public"]["r2_label_owner_only"]


def test_non_binary_label_is_a_clear_error(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=8)
    frames["lo"]["y"] = np.arange(len(frames["lo"])) % 3
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    with pytest.raises(ProtocolAbort, match=r"lo.*(label|binary|0/1)"):
        collab.run(job="train", **FAST)
    assert not (collab.root / "work" / "parties" / "lo" / "model").exists()


def test_unusable_column_names_party_and_column(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=8)
    frames["p2"]["p2_empty"] = np.nan
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    with pytest.raises(ProtocolAbort, match=r"p2.*p2_empty"):
        collab.run(job="train", **FAST)


def test_result_owner_other_than_label_owner(tmp_path):
    """The report and the scores go to the agreed result owner, under its own ids."""
    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=12)
    collab = make_collaboration(
        tmp_path / "c", frames, label_owner="lo", result_owner="p1", min_intersection=50
    )
    result = collab.run(job="train", **FAST)
    work = collab.root / "work" / "parties"
    report = json.loads((work / "p1" / "report.json").read_text())
    assert report["party"] == "lo" and abs(report["auc"] - result["public"]["auc"]) < 1e-3
    assert (work / "p1" / "report.html").exists()
    assert not (work / "lo" / "report.json").exists()
    collab.run(job="score")
    scores = pd.read_csv(work / "p1" / "scores.csv")
    assert len(scores) == 150
    assert set(scores["id"]) <= set(pd.read_csv(collab.data["p1"])["email"])  # p1's own format
    assert not (work / "lo" / "scores.csv").exists()
    assert not (work / "p2" / "scores.csv").exists()


def test_passive_weights_stay_encrypted_unless_the_agreement_releases_them(tmp_path):
    import dataclasses

    from vfm_flower import paillier
    from vfm_flower.agreement import JobTerms
    from vfm_flower.jobs_builtin import LOGISTIC

    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=21)
    # default terms: the weights are an opt-in release, so they stay encrypted
    assert "model-weights" not in JobTerms.default_for(LOGISTIC).release["party"]
    collab = make_collaboration(tmp_path / "a", frames, label_owner="lo", min_intersection=50)
    collab.run(job="train", **FAST)
    work = collab.root / "work" / "parties"
    kept = load_model_slice(work / "p1", "p1")
    assert kept.weights.size == 0 and kept.encrypted_weights
    report = json.loads((work / "p1" / "party_report.json").read_text())
    assert report["weights_encrypted"] and all(f["weight"] is None for f in report["features"])

    terms = JobTerms.default_for(LOGISTIC)
    release = dict(terms.release)
    release["party"] = (*release["party"], "model-weights")
    collab = make_collaboration(
        tmp_path / "b",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=[dataclasses.replace(terms, release=release)],
    )
    grids = []
    collab.run(job="train", grid_out=grids, **FAST)
    states = _states(grids[0])
    private = paillier.private_key_from_bytes(states["lo"].get_bytes("paillier.private"))
    work = collab.root / "work" / "parties"
    for party in ("p1", "p2"):
        kept = load_model_slice(work / party, party)
        cts = paillier.ciphertexts_from_bytes(kept.encrypted_weights, private.public_key)
        exact = [private.raw_decrypt(int(c)) for c in cts]
        n = private.public_key.n
        exact = np.array([v - n if v > n // 2 else v for v in exact]) / 2.0**48
        np.testing.assert_allclose(kept.weights, exact, atol=1e-12)
        report = json.loads((work / party / "party_report.json").read_text())
        assert not report.get("weights_encrypted") and report["features"][0]["weight"] is not None


def test_randomness_is_precomputed_in_the_round_a_party_waits(trained, tmp_path, monkeypatch):
    from vfm_flower.hazmat import paillier_djn as djn
    from vfm_flower.steps.training import OBFUSCATORS

    _, result, grid = trained
    public = result["public"]
    # the precompute steps share the rounds: still 2 per iteration (+ prepare, finish, evaluate)
    assert public["train_rounds"] == 2 * public["iterations"] + 3
    kinds = [kind for direction, kind, _ in grid.transcript if direction == "to-party"]
    assert kinds.count("train.precompute") == 3 * public["iterations"]  # LO + 2 passives
    # every pool was used by the next message and none is left behind
    assert all(OBFUSCATORS not in state for state in _states(grid).values())

    # randomness is made on demand only for each party's first message: the LO's first
    # residuals (train.prepare) and each passive party's round 0 (image, vectors, corrections)
    on_demand, inside = [], []
    make, fill = djn.DJNEncryptor._make, djn.DJNEncryptor.fill_pool

    def spy_make(self, count):
        if not inside:
            on_demand.append(count)
        return make(self, count)

    def spy_fill(self, count, **kwargs):
        inside.append(1)
        try:
            return fill(self, count, workers=1)
        finally:
            inside.pop()

    monkeypatch.setattr(djn.DJNEncryptor, "_make", spy_make)
    monkeypatch.setattr(djn.DJNEncryptor, "fill_pool", spy_fill)
    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=21)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    collab.run(job="train", **FAST)
    assert len(on_demand) == 1 + 2 * 3, on_demand

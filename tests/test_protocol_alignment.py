"""Alignment through the real Flower app in-process (ServerApp + one ClientApp per party)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from tests.conftest import joint_rows_of
from vfm_flower.clients.vertical_party import load_state
from vfm_flower.errors import ProtocolAbort
from vfm_flower.normalize import normalize_ids


def _party_states(grid):
    out = {}
    for ctx in grid.contexts.values():
        out[ctx.node_config["party"]] = load_state(ctx)
    return out


def test_alignment_matches_plain_intersection_in_same_order(small_collab):
    grids = []
    result = small_collab.run(grid_out=grids, job="train", **{"max-iterations": 1})
    assert result["joint_rows"] == len(small_collab.shared)
    assert result["phases"]["align"]["rounds"] <= 3
    grid = grids[0]
    # passive parties never learn the joint rows: the LO's positions and each party's own
    # PSI permutation, combined here, say which they are
    states = _party_states(grid)
    for party in ("p1", "p2"):
        assert "joint_rows" not in states[party]
        assert not any(key.startswith("hm.positions") for key in states[party].array_keys())
        slots = states[party].array("hm.slot_of_row")
        assert slots.size == len(pd.read_csv(small_collab.data[party]))
        assert np.unique(slots).size == slots.size
    ordered = {}
    for party in states:
        frame = pd.read_csv(small_collab.data[party], dtype={"email": str})
        ids = normalize_ids([frame["email"].tolist()], "email", party=party)
        rows = joint_rows_of(states, party, "lo")
        ordered[party] = [ids[i] for i in rows]
    first = ordered["lo"]
    assert sorted(first) == sorted(small_collab.shared)
    for party, seq in ordered.items():
        assert seq == first, f"{party} holds the joint rows in another order"


def test_server_view_holds_no_ids(small_collab):
    from vfm_flower import psi
    from vfm_flower.agreement import SignedAgreement

    grids = []
    small_collab.run(grid_out=grids, job="train", **{"max-iterations": 1})
    grid = grids[0]
    blob = b"".join(m for _, _, m in grid.transcript)
    run_key = str(_party_states(grid)["lo"].get("run_key"))
    agreement = SignedAgreement.load(small_collab.agreement_path).agreement
    points = psi.hash_ids_to_points(
        small_collab.shared[:50], psi.psi_domain(agreement.agreement_id, run_key)
    )
    for email, point in zip(small_collab.shared[:50], points):
        assert email.encode() not in blob
        assert email.upper().encode() not in blob
        assert hashlib.sha256(email.encode()).digest() not in blob
        assert point.tobytes() not in blob  # the hashed id (curve point) never travels


def test_tampered_psi_envelope_refused(small_collab, monkeypatch):
    from vfm_flower.strategies.transport import Transport

    original = Transport.post

    def relay(self, replies):
        original(self, replies)
        inbox = self._mailbox.get("lo", {})
        for key, blob in list(inbox.items()):
            if key[1] == "psi.passive_blinded":
                inbox[key] = blob[:200] + bytes([blob[200] ^ 0x40]) + blob[201:]

    monkeypatch.setattr(Transport, "post", relay)
    with pytest.raises(ProtocolAbort, match="lo.*(tampered|signature)"):
        small_collab.run(job="train")


def test_replayed_psi_envelope_refused(small_collab, monkeypatch):
    """The server re-delivers round 1's blinded set as round 2's reply: refused by binding."""
    from vfm_flower.strategies.transport import Transport

    original = Transport.post
    kept = {}

    def relay(self, replies):
        original(self, replies)
        inbox = self._mailbox.get("lo", {})
        for key, blob in list(inbox.items()):
            if key[1] == "psi.passive_blinded":
                kept[key[0]] = blob
            if key[1] == "psi.lo_double":
                inbox[key] = kept[key[0]]

    monkeypatch.setattr(Transport, "post", relay)
    with pytest.raises(ProtocolAbort, match="lo.*(round|topic|misdirected)"):
        small_collab.run(job="train")


def test_min_intersection_gate_reveals_only_too_small(tmp_path):
    from tests.conftest import make_collaboration, synthetic_frames

    frames, _ = synthetic_frames(n_shared=30)
    collab = make_collaboration(tmp_path, frames, label_owner="lo", min_intersection=100)
    with pytest.raises(ProtocolAbort, match="min_intersection") as info:
        collab.run(job="train")
    assert "30" not in str(info.value)
    assert not (tmp_path / "work" / "server" / "result.json").exists()


def test_duplicate_ids_named_error(tmp_path):
    from tests.conftest import make_collaboration, synthetic_frames

    frames, _ = synthetic_frames()
    p1 = frames["p1"]
    frames["p1"] = pd.concat([p1, p1.iloc[:3].assign(email=lambda f: f["email"].str.upper())])
    collab = make_collaboration(tmp_path, frames, label_owner="lo", min_intersection=10)
    with pytest.raises(ProtocolAbort, match="p1") as info:
        collab.run(job="train")
    assert "duplicate" in str(info.value).lower()
    assert "@" not in str(info.value)


def test_party_that_never_connects_is_named(small_collab):
    with pytest.raises(ProtocolAbort, match="p2.*did not connect"):
        small_collab.run(offline=("p2",), job="train")


def test_two_parties_only(tmp_path):
    from tests.conftest import make_collaboration, synthetic_frames

    frames, shared = synthetic_frames(parties=("lo", "p1"))
    collab = make_collaboration(tmp_path, frames, label_owner="lo", min_intersection=10)
    grids = []
    result = collab.run(grid_out=grids, job="train", **{"max-iterations": 1})
    assert result["joint_rows"] == len(shared)
    assert np.all(np.diff([result["phases"]["align"]["rounds"]]) == 0)


def test_large_alignment_uses_the_process_pool(tmp_path):
    """Above the pool threshold, hashing and blinding run in a process pool per message."""
    from tests.conftest import make_collaboration, synthetic_frames

    frames, shared = synthetic_frames(n_shared=17_000, n_only=500, seed=9, parties=("lo", "p1"))
    collab = make_collaboration(tmp_path, frames, label_owner="lo", min_intersection=100)
    grids = []
    result = collab.run(grid_out=grids, job="train", **{"max-iterations": 1})
    assert result["joint_rows"] == len(shared)
    states = _party_states(grids[0])
    lo_ids = normalize_ids([pd.read_csv(collab.data["lo"])["email"].tolist()], "email")
    p1_ids = normalize_ids([pd.read_csv(collab.data["p1"])["email"].tolist()], "email")
    lo_rows, p1_rows = joint_rows_of(states, "lo", "lo"), joint_rows_of(states, "p1", "lo")
    assert [lo_ids[i] for i in lo_rows[:500]] == [p1_ids[i] for i in p1_rows[:500]]

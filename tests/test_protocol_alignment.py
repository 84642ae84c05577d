"""Alignment through the real Flower app in-process (ServerApp + one ClientApp per party)."""

from __future__ import annotations

import dataclasses
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


def _uneven_collab(tmp_path, **terms):
    """p2 holds far more customers than the others: its set takes more chunks."""
    from tests.conftest import make_collaboration, synthetic_frames

    frames, shared = synthetic_frames(n_shared=600, n_only=40, seed=5)
    extra = pd.DataFrame(
        {"email": [f"extra{i:05d}@example.com" for i in range(700)], "p2_x": np.zeros(700)}
    )
    frames["p2"] = pd.concat([frames["p2"], extra], ignore_index=True)
    terms.setdefault("min_intersection", 50)
    collab = make_collaboration(tmp_path, frames, label_owner="lo", **terms)
    collab.shared = shared  # type: ignore[attr-defined]
    return collab


def test_chunked_alignment_same_rows_and_the_rounds_of_its_schedule(tmp_path):
    """256 ids a message: LO 640 ids (3 chunks), p2 1,340 (6 chunks): 7 rounds, the same
    joint customers in one common order on every party, nothing of an id in the transcript."""
    from vfm_flower import psi
    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.psi_chunks import ChunkSchedule

    collab = _uneven_collab(tmp_path)
    grids = []
    result = collab.run(
        grid_out=grids, job="train", **{"max-iterations": 1, "align-chunk-ids": 256}
    )
    schedule = ChunkSchedule({"lo": 640, "p1": 640, "p2": 1340}, "lo", 256)
    assert schedule.match_round == 7
    assert result["phases"]["align"]["rounds"] == 7
    assert result["joint_rows"] == len(collab.shared)
    states = _party_states(grids[0])
    ordered = {}
    for party in states:
        frame = pd.read_csv(collab.data[party], dtype={"email": str})
        ids = normalize_ids([frame["email"].tolist()], "email", party=party)
        ordered[party] = [ids[i] for i in joint_rows_of(states, party, "lo")]
    assert sorted(ordered["lo"]) == sorted(collab.shared)
    assert ordered["p1"] == ordered["lo"] and ordered["p2"] == ordered["lo"]
    blob = b"".join(m for _, _, m in grids[0].transcript)
    agreement = SignedAgreement.load(collab.agreement_path).agreement
    run_key = str(states["lo"].get("run_key"))
    sample = collab.shared[::60]
    points = psi.hash_ids_to_points(sample, psi.psi_domain(agreement.agreement_id, run_key))
    for email, point in zip(sample, points):
        assert email.encode() not in blob and point.tobytes() not in blob


def _relay_editing(monkeypatch, edit):
    from vfm_flower.strategies.transport import Transport

    original = Transport.post
    calls = {"n": 0}

    def relay(self, replies):
        original(self, replies)
        calls["n"] += 1
        edit(self._mailbox, calls["n"])

    monkeypatch.setattr(Transport, "post", relay)


def test_dropped_alignment_chunk_refused(tmp_path, monkeypatch):
    """The server holds back p2's second chunk: the LO refuses the round, naming it."""
    collab = _uneven_collab(tmp_path)

    def drop(mailbox, call):
        if call == 3:  # the replies of alignment round 2 (after hello and round 1)
            mailbox.get("lo", {}).pop(("p2", "psi.passive_blinded"), None)

    _relay_editing(monkeypatch, drop)
    with pytest.raises(ProtocolAbort, match="lo.*psi.passive_blinded.*p2"):
        collab.run(job="train", **{"align-chunk-ids": 256})


def test_alignment_chunk_moved_to_another_round_refused(tmp_path, monkeypatch):
    """Chunk 0 of p1's set, replayed in place of chunk 1: bound to its round, refused."""
    collab = _uneven_collab(tmp_path)
    kept = {}

    def replay(mailbox, call):
        key = ("p1", "psi.passive_blinded")
        inbox = mailbox.get("lo", {})
        if call == 2 and key in inbox:
            kept["chunk0"] = inbox[key]
        if call == 3 and key in inbox:
            inbox[key] = kept["chunk0"]

    _relay_editing(monkeypatch, replay)
    with pytest.raises(ProtocolAbort, match="lo.*(round|replay)"):
        collab.run(job="train", **{"align-chunk-ids": 256})
    # the close after the abort removed every party's spool and state files
    assert not list((tmp_path / "work" / "parties").glob("*/state/run-*/psi"))


def test_chunk_size_out_of_range_is_a_configuration_error(tmp_path):
    from vfm_flower.errors import ConfigurationError

    collab = _uneven_collab(tmp_path)
    with pytest.raises(ConfigurationError, match="align-chunk-ids.*outside"):
        collab.run(job="train", **{"align-chunk-ids": 100})


def test_hellos_changed_after_the_first_round_refused(tmp_path, monkeypatch):
    """The run key does not cover the hellos: a server that lowers p2's set size in them
    after round 1 (so the LO would skip its last chunks) is refused by every party."""
    from vfm_flower.strategies.session import VerticalSession

    collab = _uneven_collab(tmp_path)
    original = VerticalSession.request

    def request(self, kind, step, **kw):
        req = original(self, kind, step, **kw)
        if kind == "query.align" and step >= 2:
            public, signature = req.session.hellos["p2"]
            hellos = {**req.session.hellos, "p2": ({**public, "rows": 512}, signature)}
            req = dataclasses.replace(req, session=dataclasses.replace(req.session, hellos=hellos))
        return req

    monkeypatch.setattr(VerticalSession, "request", request)
    with pytest.raises(ProtocolAbort, match="hellos changed"):
        collab.run(job="train", **{"align-chunk-ids": 256})


def test_every_party_checks_every_set_against_the_agreement_bound(tmp_path, monkeypatch):
    """p2 brings 1,340 ids where the agreement allows 1,000 and the server lets it through
    (both skip their checks): the other parties refuse before anything is sent."""
    import vfm_flower.steps.alignment as alignment
    import vfm_flower.strategies.session as session_module
    from vfm_flower.normalize import check_unique

    collab = _uneven_collab(tmp_path, max_set_size={"lo": 5000, "p1": 5000, "p2": 1000})
    monkeypatch.setattr(session_module, "check_set_size", lambda *a, **k: None)

    def load_without_bound(runtime):
        ids = alignment.id_spec_of(runtime).normalize(runtime.read_table(), party=runtime.party)
        check_unique(ids, runtime.party)
        return ids

    monkeypatch.setattr(alignment, "load_normalized_ids", load_without_bound)
    with pytest.raises(ProtocolAbort, match=r"max_set_size.*p2"):
        collab.run(job="train", **{"align-chunk-ids": 256})


def test_a_passive_party_left_out_of_its_idle_rounds_keeps_no_spool(tmp_path, monkeypatch):
    """p1's work ends in round 4 (LO: 3 chunks, p1: 3); p2's set travels until round 6.
    The server leaves p1 out of rounds 5 and 6: the job runs, and p1's spool went at its own
    last round."""
    from vfm_flower.strategies.session import VerticalSession

    collab = _uneven_collab(tmp_path)
    original = VerticalSession.send
    spools = {}

    def send(self, kind, to=None, *, step=1, **kw):
        if kind == "query.align" and step in (5, 6):
            to = [p for p in (to or self.parties) if p != "p1"]
            spools[step] = sorted(
                p.parent.parent.parent.name
                for p in (tmp_path / "work" / "parties").glob("*/state/run-*/psi")
            )
        return original(self, kind, to, step=step, **kw)

    monkeypatch.setattr(VerticalSession, "send", send)
    result = collab.run(job="train", **{"max-iterations": 1, "align-chunk-ids": 256})
    assert result["joint_rows"] == len(collab.shared)
    assert spools == {5: ["lo", "p2"], 6: ["lo", "p2"]}


def test_a_hello_of_a_party_outside_the_agreement_is_refused(small_collab, monkeypatch):
    """An unsigned hello for 'mallory' added to the session (it would appear in reports with
    its made-up row count): refused at the first session message."""
    from vfm_flower.strategies.session import VerticalSession

    original = VerticalSession.request

    def request(self, kind, step, **kw):
        req = original(self, kind, step, **kw)
        hellos = {**req.session.hellos, "mallory": ({"rows": 424242}, b"")}
        return dataclasses.replace(req, session=dataclasses.replace(req.session, hellos=hellos))

    monkeypatch.setattr(VerticalSession, "request", request)
    with pytest.raises(ProtocolAbort, match="outside the agreement"):
        small_collab.run(job="train", **{"max-iterations": 1})

"""The overlap job: PSI cardinality, per-segment counts, the gates, and what each side sees."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_collaboration, synthetic_frames
from vfm_flower import overlap
from vfm_flower.clients.vertical_party import load_state
from vfm_flower.errors import ConfigurationError, DataError, PolicyViolation, ProtocolAbort
from vfm_flower.normalize import normalize_ids
from vfm_flower.psi import psi_domain

REGIONS = ("north", "south", "east", "west")


def _sets(seed=0, n=4000):
    rng = np.random.default_rng(seed)
    universe = [f"user{i}@example.com" for i in range(n)]
    picks = {
        "lo": sorted(rng.choice(n, 2600, replace=False).tolist()),
        "p1": sorted(rng.choice(n, 2200, replace=False).tolist()),
        "p2": sorted(rng.choice(n, 1800, replace=False).tolist()),
    }
    return universe, picks, {p: [universe[i] for i in rows] for p, rows in picks.items()}


@pytest.mark.parametrize("holder", [None, "lo", "p2", "p1"])
def test_counts_equal_plain_set_operations(holder):
    universe, picks, ids = _sets()
    rng = np.random.default_rng(1)
    seg_of = {i: REGIONS[int(rng.integers(4))] if rng.random() > 0.1 else "" for i in range(4000)}
    segment = None if holder is None else (holder, [seg_of[i] for i in picks[holder]])
    counts, values = overlap.overlap_in_process(
        ids, "lo", domain=psi_domain("agreement", "run"), segment=segment
    )
    sets = {p: set(rows) for p, rows in picks.items()}
    everyone = sets["lo"] & sets["p1"] & sets["p2"]
    assert counts.with_label_owner == {
        "p1": len(sets["lo"] & sets["p1"]),
        "p2": len(sets["lo"] & sets["p2"]),
    }
    assert counts.all_parties == len(everyone)
    if holder is None:
        assert counts.segments is None and values is None
        return
    expected = {}
    for i in everyone:
        value = seg_of[i] or overlap.MISSING_VALUE
        expected[value] = expected.get(value, 0) + 1
    assert dict(zip(values, counts.segments, strict=True)) == {
        v: expected.get(v, 0) for v in values
    }
    assert sum(counts.segments) == counts.all_parties


def test_two_parties_and_an_empty_overlap():
    counts, _ = overlap.overlap_in_process(
        {"lo": ["a@x.com", "b@x.com"], "p": ["c@x.com"]}, "lo", domain=psi_domain("a", "r")
    )
    assert counts.with_label_owner == {"p": 0} and counts.all_parties == 0


def test_shared_permutation_is_the_same_for_every_holder_of_the_seed():
    seed = overlap.new_group_seed()
    a = overlap.shared_permutation(seed, 1000, "partition 0")
    assert np.array_equal(a, overlap.shared_permutation(seed, 1000, "partition 0"))
    assert sorted(a.tolist()) == list(range(1000))
    assert not np.array_equal(a, overlap.shared_permutation(seed, 1000, "partition 1"))
    assert not np.array_equal(a, overlap.shared_permutation(overlap.new_group_seed(), 1000, "p"))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        overlap.shared_permutation(b"short", 10, "x")


def test_partitions_are_padded_to_the_whole_set():
    """Every partition has as many points as the holder has rows: their sizes say nothing."""
    points = np.random.default_rng(0).integers(0, 127, size=(50, 32), dtype=np.uint8)
    codes = np.array([0] * 45 + [1] * 4 + [2])
    parts = overlap.partition_points(points, codes, 3, b"domain")
    assert parts.shape == (3, 50, 32)
    for v in range(3):
        real = {bytes(p) for p in points[codes == v]}
        held = {bytes(p) for p in parts[v]}
        assert real <= held and len(held) == 50


def test_release_withholds_small_overlaps_and_cells():
    counts = overlap.OverlapCounts({"p1": 40, "p2": 500}, 300, (150, 140, 7, 3))
    release = overlap.release_overlap(
        counts,
        label_owner="lo",
        set_sizes={"lo": 1000, "p1": 800, "p2": 900},
        min_intersection=50,
        min_cohort=20,
        segment_values=["a", "b", "c", "d"],
        segment_party="p2",
        segment_column="region",
    )
    assert release.with_label_owner == {"p1": None, "p2": 500}
    assert release.all_parties == 300 and release.verdict == "ok"
    cells = {c["segment"]: c for c in release.segments}
    assert cells["a"]["customers"] == 150
    # c and d are under the cohort; together (10) still under it, so b is withheld too
    assert cells["c"]["suppressed"] and cells["d"]["suppressed"] and cells["b"]["suppressed"]
    assert "totals would reveal" in cells["b"]["reason"] or "total would" in cells["b"]["reason"]
    facts = release.public_facts()
    assert facts == {
        "overlap": {"p1": None, "p2": 500},
        "overlap_verdict": "ok",
        "joint_rows": 300,
        "segment_cells": 1,
    }
    below = overlap.release_overlap(
        overlap.OverlapCounts({"p1": 40}, 40, (30, 10)),
        label_owner="lo",
        set_sizes={"lo": 100, "p1": 100},
        min_intersection=50,
        min_cohort=5,
        segment_values=["a", "b"],
    )
    assert below.all_parties is None and below.verdict == "below-minimum"
    assert all(c["suppressed"] for c in below.segments)
    assert "joint_rows" not in below.public_facts()


def test_too_many_segment_values_is_a_clear_error():
    with pytest.raises(DataError, match=r"'bank'.*'region' has 5 distinct values.*max-segments"):
        overlap.segment_codes(list("abcde"), max_values=4, party="bank", column="region")


# --------------------------------------------------------------------------- the Flower job


@pytest.fixture
def collab(tmp_path):
    frames, shared = synthetic_frames(n_shared=300, n_only=40, seed=5)
    rng = np.random.default_rng(2)
    frames["p2"]["region"] = rng.choice(REGIONS, size=len(frames["p2"]))
    frames["lo"]["tier"] = rng.choice(["gold", "silver"], size=len(frames["lo"]))
    frames["p1"]["band"] = rng.choice(["lowspend", "highspend"], size=len(frames["p1"]))
    c = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    c.frames, c.shared = frames, shared
    return c


def _plain_ids(frame):
    return normalize_ids([frame["email"].astype(str).tolist()], "email", party="x")


def _expected_segments(collab, party, column):
    joint = set(collab.shared)
    frame = collab.frames[party]
    out: dict[str, int] = {}
    for email, value in zip(_plain_ids(frame), frame[column], strict=True):
        if email in joint:
            out[value] = out.get(value, 0) + 1
    return out


def _party_states(grid):
    return {ctx.node_config["party"]: load_state(ctx) for ctx in grid.contexts.values()}


@pytest.mark.parametrize("holder,column", [("p2", "region"), ("p1", "band")])
def test_the_job_releases_exact_counts_in_three_rounds(collab, holder, column):
    grids = []
    result = collab.run(
        grid_out=grids, model="overlap", **{"segment-party": holder, "segment-column": column}
    )
    assert result["phases"]["overlap"]["rounds"] == 3
    assert result["kind"] == "overlap" and result["job"] == "run"
    assert result["public"]["overlap"] == {"p1": 300, "p2": 300}
    assert result["joint_rows"] == 300 and result["public"]["overlap_verdict"] == "ok"
    report = json.loads((collab.root / "work/parties/lo/overlap.json").read_text())
    assert (collab.root / "work/parties/lo/overlap.html").is_file()
    cells = {c["segment"]: c["customers"] for c in report["segment"]["cells"]}
    assert cells == _expected_segments(collab, holder, column)
    assert report["with_label_owner"]["p1"]["match_rate"] == pytest.approx(300 / 340)
    # the server learns counts and the verdict, never a segment value
    blob = b"".join(m for _, _, m in grids[0].transcript)
    for value in (*REGIONS, "gold", "silver", "lowspend", "highspend"):
        assert value.encode() not in blob
    for email in collab.shared[:40]:
        assert email.encode() not in blob and email.upper().encode() not in blob
    # nobody holds a row-level result; the LO never held the group seed
    states = _party_states(grids[0])
    for party, state in states.items():
        assert "joint_rows" not in state and "hm.slot_of_row" not in state, party
        assert not any(k.startswith("overlap.") for k in state.array_keys()), party
    assert "overlap.group_seed" not in states["lo"]
    for party in ("p1", "p2"):
        assert not (collab.root / f"work/parties/{party}/overlap.json").exists()


def test_a_small_overlap_is_withheld_and_the_verdict_says_so(tmp_path):
    frames, _ = synthetic_frames(n_shared=60, n_only=200, seed=9)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=100)
    result = collab.run(model="overlap")
    assert result["public"]["overlap"] == {"p1": None, "p2": None}
    assert result["public"]["overlap_verdict"] == "below-minimum"
    assert "joint_rows" not in result["public"]
    report = json.loads((collab.root / "work/parties/lo/overlap.json").read_text())
    assert report["all_parties"]["customers"] is None
    assert any("fewer than 100" in line for line in report["summary"])


def test_the_report_goes_to_a_result_owner_that_is_not_the_label_owner(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=4)
    collab = make_collaboration(
        tmp_path / "c", frames, label_owner="lo", min_intersection=50, result_owner="p1"
    )
    collab.run(model="overlap")
    assert (collab.root / "work/parties/p1/overlap.json").is_file()
    assert not (collab.root / "work/parties/lo/overlap.json").exists()


def test_a_tampered_or_substituted_set_is_refused(collab, monkeypatch):
    from vfm_flower.strategies.transport import Transport

    original = Transport.post

    def relay(self, replies):
        original(self, replies)
        inbox = self._mailbox.get("lo", {})
        key = ("p1", "overlap.returned_set")
        if key in inbox:
            blob = inbox[key]
            inbox[key] = blob[:-200] + bytes([blob[-200] ^ 1]) + blob[-199:]

    monkeypatch.setattr(Transport, "post", relay)
    with pytest.raises(ProtocolAbort, match=r"lo.*p1.*(tampered|signature|authentic)"):
        collab.run(model="overlap")


def test_a_replayed_first_round_set_is_refused_in_the_second(collab, monkeypatch):
    """p1's round-1 set relayed to the LO again as if it were p1's round-2 reply: refused
    (an envelope is bound to its topic and round)."""
    from vfm_flower.strategies.transport import Transport

    original = Transport.post
    kept = {}

    def relay(self, replies):
        original(self, replies)
        inbox = self._mailbox.get("lo", {})
        first, second = ("p1", "overlap.passive_set"), ("p1", "overlap.returned_set")
        if first in inbox:
            kept["blob"] = inbox[first]
        if second in inbox:
            inbox[second] = kept["blob"]

    monkeypatch.setattr(Transport, "post", relay)
    with pytest.raises(ProtocolAbort, match=r"party .lo.: envelope round is 1, expected 2"):
        collab.run(model="overlap")


def test_bad_segment_parameters_are_clear_errors(collab):
    with pytest.raises(ConfigurationError, match="segment-party and segment-column"):
        collab.run(model="overlap", **{"segment-party": "p2"})
    with pytest.raises(ConfigurationError, match="'nobody' is not a party"):
        collab.run(model="overlap", **{"segment-party": "nobody", "segment-column": "x"})
    with pytest.raises(ProtocolAbort, match=r"p2.*region.*max-segments"):
        collab.run(
            model="overlap",
            **{"segment-party": "p2", "segment-column": "region", "max-segments": 3},
        )
    with pytest.raises(ProtocolAbort, match=r"p2.*not in its data|features"):
        collab.run(model="overlap", **{"segment-party": "p2", "segment-column": "nope"})


def test_a_denied_segment_column_is_refused_by_its_holder(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=4)
    frames["p2"]["region"] = "north"
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        denied_features={"p2": ["region"]},
    )
    with pytest.raises((ProtocolAbort, PolicyViolation), match=r"p2.*\[features\].*region"):
        collab.run(model="overlap", **{"segment-party": "p2", "segment-column": "region"})


def test_the_label_owners_own_column_never_segments_the_overlap(collab):
    """Its counts per value would tell the label owner which of its customers are shared
    (a value one customer holds: that customer's membership)."""
    for column in ("tier", "y"):
        with pytest.raises(ConfigurationError, match="label owner's own column cannot segment"):
            collab.run(model="overlap", **{"segment-party": "lo", "segment-column": column})


def test_a_segmented_overlap_is_refused_under_a_privacy_budget(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=4)
    frames["p2"]["region"] = "north"
    collab = make_collaboration(
        tmp_path / "c", frames, label_owner="lo", min_intersection=50, privacy_epsilon=1.0
    )
    with pytest.raises(PolicyViolation, match=r"\[privacy_budget\].*without a segment column"):
        collab.run(model="overlap", **{"segment-party": "p2", "segment-column": "region"})
    assert collab.run(model="overlap")["public"]["overlap_verdict"] == "ok"  # counts only


def test_overlap_matches_pandas_on_generated_data(tmp_path):
    """A bigger generated collaboration: the job's counts equal a pandas merge."""
    rng = np.random.default_rng(11)
    universe = [f"c{i:06d}@shop.example" for i in range(6000)]
    frames = {}
    for party, n in (("lo", 4000), ("p1", 3500), ("p2", 2500)):
        rows = rng.choice(6000, n, replace=False)
        frames[party] = pd.DataFrame(
            {"email": [universe[i] for i in rows], f"{party}_x": rng.normal(size=n)}
        )
    frames["lo"]["y"] = rng.integers(0, 2, len(frames["lo"]))
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=10)
    result = collab.run(model="overlap")
    lo = frames["lo"][["email"]]
    for party in ("p1", "p2"):
        assert result["public"]["overlap"][party] == len(lo.merge(frames[party][["email"]]))
    everyone = lo.merge(frames["p1"][["email"]]).merge(frames["p2"][["email"]])
    assert result["joint_rows"] == len(everyone)


def _membership_auc(scores, truth):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(truth, scores)


def test_the_label_owner_cannot_tell_which_of_its_customers_matched():
    """Attack: the LO scores each of its rows by whether the reply point at that row's
    position matched (what it would learn if the passive parties kept its order). With the
    group seed's permutation the score is noise (AUC about 0.5); the same attack on an
    unpermuted reply recovers membership exactly (AUC 1), so the test can fail."""
    from vfm_flower import psi

    universe, picks, ids = _sets(seed=3, n=3000)
    domain = psi_domain("agreement", "run")
    secret = {p: psi.PsiSecret.generate() for p in ids}
    lo_sets = overlap.blind_sets(psi.hash_ids_to_points(ids["lo"], domain)[None], secret["lo"])
    seed = overlap.new_group_seed()
    truth = np.array([i in set(picks["p1"]) for i in picks["lo"]], dtype=int)
    theirs = overlap.blind_sets(
        overlap.blind_sets(psi.hash_ids_to_points(ids["p1"], domain)[None], secret["p1"]),
        secret["lo"],
    )[0]
    for permuted, low, high in ((True, 0.45, 0.55), (False, 0.999, 1.0)):
        if permuted:
            reply = overlap.permute_returned_sets(lo_sets, secret["p1"], seed)[0]
        else:
            reply = overlap.blind_sets(lo_sets, secret["p1"])[0]
        matched = psi.find_points(np.ascontiguousarray(reply), np.ascontiguousarray(theirs), "p1")
        auc = _membership_auc((matched >= 0).astype(float), truth)
        assert low <= auc <= high, (permuted, auc)


def test_a_passive_party_gets_nothing_back(collab, monkeypatch):
    """A passive party's whole input is the LO's blinded set and the group seed: no count,
    no reply to its own set (guessed ids in its set tell it nothing)."""
    from vfm_flower.strategies.transport import Transport

    received: dict[str, set[str]] = {"p1": set(), "p2": set()}
    original = Transport.post

    def relay(self, replies):
        original(self, replies)
        for party in received:
            received[party] |= {topic for _, topic in self._mailbox.get(party, {})}

    monkeypatch.setattr(Transport, "post", relay)
    result = collab.run(model="overlap")
    assert received["p1"] == {"overlap.label_owner_set"}
    assert received["p2"] == {"overlap.label_owner_set", "overlap.group_seed"}
    assert result["public"]["overlap"]["p1"] == 300

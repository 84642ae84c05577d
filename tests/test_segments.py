"""The segment statistics job: exact cells, the minimum cohort, noise and the privacy budget."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_collaboration, synthetic_frames
from vfm_flower.agreement import JobTerms
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.jobs_builtin import BUILTIN_JOB_KINDS, SEGMENTS_KIND
from vfm_flower.normalize import normalize_ids
from vfm_flower.privacy import NoiseSpec, integer_noise

REGIONS = ["north", "south", "east", "tiny"]
SPEND_MAX = 150.0


@pytest.fixture(scope="module")
def collab(tmp_path_factory):
    frames, shared = synthetic_frames(n_shared=300, n_only=40, seed=5)
    rng = np.random.default_rng(1)
    for frame in frames.values():
        frame["region"] = rng.choice(REGIONS, p=[0.4, 0.4, 0.17, 0.03], size=len(frame))
        frame["spend"] = rng.gamma(2.0, 50.0, size=len(frame)).round(2)
        frame["tier"] = rng.choice(["gold", "silver"], p=[0.3, 0.7], size=len(frame))
    jobs = [
        *(k for k in BUILTIN_JOB_KINDS if k.name != "segments"),
        JobTerms.default_for(SEGMENTS_KIND, params={"target-max": {"min": 1.0, "max": SPEND_MAX}}),
    ]
    c = make_collaboration(
        tmp_path_factory.mktemp("seg") / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=jobs,
    )
    c.frames, c.shared = frames, shared
    c.ids = {
        p: normalize_ids([f["email"].astype(str).tolist()], "email", party=p)
        for p, f in frames.items()
    }
    return c


def _plain(collab, holder, target, column):
    joint = set(collab.shared)
    seg = pd.DataFrame({"id": collab.ids[holder], "segment": collab.frames[holder]["region"]})
    values = collab.frames[target]["y" if not column else column]
    tgt = pd.DataFrame({"id": collab.ids[target], "t": values})
    merged = seg.merge(tgt)
    merged = merged[merged["id"].isin(joint)]
    merged["t"] = merged["t"].clip(0.0, SPEND_MAX if column else 1.0)
    return merged.groupby("segment")["t"].agg(["count", "mean"])


CASES = [
    ("p2", "lo", ""),  # a partner's segments, the label owner's label: conversion rate
    ("lo", "lo", ""),
    ("lo", "p1", "spend"),  # the label owner's segments, a partner's spend
    ("p2", "p2", "spend"),
    ("p2", "p1", "spend"),  # a partner's segments, another partner's spend
    ("p1", "lo", "spend"),
]


@pytest.mark.parametrize("holder,target,column", CASES)
def test_released_cells_equal_a_plain_group_by(collab, holder, target, column, tmp_path):
    config = {
        "segment-party": holder,
        "segment-column": "region",
        "target-party": "" if target == "lo" else target,
        "target-column": column,
    }
    if column:
        config["target-max"] = SPEND_MAX
    grids = []
    result = collab.run(workdir=tmp_path / "w", grid_out=grids, model="segments", **config)
    report = json.loads((tmp_path / "w/parties/lo/segments.json").read_text())
    plain = _plain(collab, holder, target, column)
    statistic = "mean" if column else "rate"
    released = {c["segment"]: c for c in report["cells"] if not c["suppressed"]}
    assert released, report["cells"]
    for value, cell in released.items():
        assert cell["customers"] == plain.loc[value, "count"]
        assert cell[statistic] == pytest.approx(plain.loc[value, "mean"], abs=1e-4)
    # every cell under the minimum cohort is withheld, and never alone
    withheld = [c["segment"] for c in report["cells"] if c["suppressed"]]
    for value in plain.index:
        if plain.loc[value, "count"] < 20:
            assert value in withheld
    assert len(withheld) != 1
    assert sum(plain.loc[v, "count"] for v in withheld) >= 20 or not withheld
    assert result["public"]["segment_cells"] == len(released)
    # the server sees no segment value and no target value
    blob = b"".join(m for _, _, m in grids[0].transcript)
    for value in REGIONS:
        assert value.encode() not in blob
    for email in collab.shared[:30]:
        assert email.encode() not in blob
    # nor any ciphertext: every payload carries the label owner's Paillier key, never in clear
    from vfm_flower.clients.vertical_party import load_state
    from vfm_flower.paillier import PaillierContext

    lo_state = next(
        load_state(c) for c in grids[0].contexts.values() if c.node_config["party"] == "lo"
    )
    keys = PaillierContext.from_private_bytes(lo_state.get_bytes("ctx.paillier.private"))
    modulus = int(keys.public_key.n).to_bytes(keys.key_bits // 8, "big")
    assert modulus[:64] not in blob and modulus[-64:] not in blob
    assert keys.public_bytes()[-64:] not in blob


def test_a_segment_holder_receives_only_ciphertexts_and_cell_numbers(collab, monkeypatch, tmp_path):
    from vfm_flower.strategies.transport import Transport

    topics: set[str] = set()
    original = Transport.post

    def relay(self, replies):
        original(self, replies)
        topics.update(t for _, t in self._mailbox.get("p2", {}))

    monkeypatch.setattr(Transport, "post", relay)
    collab.run(
        workdir=tmp_path / "w",
        model="segments",
        **{"segment-party": "p2", "segment-column": "region"},
    )
    # Paillier vectors under the LO's key, the indices of withheld cells, the slot map
    assert topics <= {
        "segments.joint_vectors",
        "segments.withheld",
        "psi.slot_map",
        "psi.lo_blinded",
    }


def test_noise_spends_the_budget_and_a_job_beyond_it_is_refused(tmp_path):
    frames, _ = synthetic_frames(n_shared=200, n_only=20, seed=6)
    frames["p1"]["region"] = np.random.default_rng(3).choice(["a", "b"], size=len(frames["p1"]))
    collab = make_collaboration(
        tmp_path / "c", frames, label_owner="lo", min_intersection=50, privacy_epsilon=1.0
    )
    job = {"segment-party": "p1", "segment-column": "region", "epsilon": 0.4}
    result = collab.run(model="segments", **job)
    assert result["public"]["segment_cells"] >= 1
    report = json.loads((collab.root / "work/parties/lo/segments.json").read_text())
    assert report["noise"]["count_scale"] == pytest.approx(1 / 0.2)  # half of epsilon each
    collab.run(model="segments", **job)  # 0.8 of 1.0 spent
    before = (collab.root / "work/parties/lo/segments.json").read_bytes()
    with pytest.raises(PolicyViolation, match=r"\[privacy_budget\].*only 0.2 \(delta 0\) remains"):
        collab.run(model="segments", **job)
    assert (collab.root / "work/parties/lo/segments.json").read_bytes() == before
    with pytest.raises(PolicyViolation, match=r"\[privacy_budget\].*must add noise"):
        collab.run(model="segments", **{**job, "epsilon": 0.0})
    for party in ("lo", "p1", "p2"):
        logs = list((collab.root / "work/parties" / party).glob("audit-*.jsonl"))
        text = logs[0].read_text()
        assert text.count('"decision":"charged"') == 2, party  # each counts the same spend


@pytest.mark.parametrize(
    "mechanism,epsilon,delta", [("laplace", 0.5, 0.0), ("gaussian", 0.5, 1e-6)]
)
def test_the_noise_scale_matches_the_mechanism(mechanism, epsilon, delta):
    """Over many draws the noise's spread is the formula's for the clipped bounds."""
    spec = NoiseSpec(mechanism, epsilon, delta)
    sensitivity = 40
    draws = np.array(integer_noise(spec, sensitivity, 20000), dtype=np.float64)
    scale = spec.scale(sensitivity)
    expected_std = scale * np.sqrt(2) if mechanism == "laplace" else scale
    assert abs(draws.mean()) < 4 * expected_std / np.sqrt(len(draws))
    assert draws.std() == pytest.approx(expected_std, rel=0.04)
    if mechanism == "laplace":
        assert scale == pytest.approx(sensitivity / epsilon)
    else:
        assert scale == pytest.approx(sensitivity * np.sqrt(2 * np.log(1.25 / delta)) / epsilon)


def test_bad_input_is_a_clear_error(collab, tmp_path):
    from vfm_flower.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="segment-party and segment-column"):
        collab.run(workdir=tmp_path / "a", model="segments")
    with pytest.raises(ProtocolAbort, match=r"p1.*'email'.*distinct values|max-segments|features"):
        collab.run(
            workdir=tmp_path / "b",
            model="segments",
            **{"segment-party": "p1", "segment-column": "email"},
        )
    with pytest.raises(ProtocolAbort, match=r"p2.*region.*max-segments"):
        collab.run(
            workdir=tmp_path / "c",
            model="segments",
            **{"segment-party": "p2", "segment-column": "region", "max-segments": 3},
        )


def _plain_cross(collab, first, second, target, column):
    joint = set(collab.shared)
    (p1, c1), (p2, c2) = first, second
    a = pd.DataFrame({"id": collab.ids[p1], "a": collab.frames[p1][c1]})
    b = pd.DataFrame({"id": collab.ids[p2], "b": collab.frames[p2][c2]})
    values = collab.frames[target]["y" if not column else column]
    t = pd.DataFrame({"id": collab.ids[target], "t": values})
    merged = a.merge(b, on="id").merge(t, on="id")
    merged = merged[merged["id"].isin(joint)]
    merged["t"] = merged["t"].clip(0.0, SPEND_MAX if column else 1.0)
    merged["cell"] = merged["a"].astype(str) + " \u00d7 " + merged["b"].astype(str)
    return merged.groupby("cell")["t"].agg(["count", "mean"])


CROSSES = [
    (("p2", "region"), ("lo", "tier"), "lo", ""),  # a partner's column x the LO's
    (("lo", "tier"), ("p2", "region"), "p1", "spend"),  # LO's x a partner's, a third's spend
    (("p2", "region"), ("p2", "tier"), "lo", ""),  # two columns of one partner
    (("lo", "region"), ("lo", "tier"), "p1", "spend"),  # two of the LO's, a partner's spend
    (("p2", "region"), ("p1", "tier"), "lo", ""),  # two partners' columns, the LO's label
    (("p1", "region"), ("p2", "tier"), "p1", "spend"),  # ... the splitter's own spend
    (("p1", "region"), ("p2", "tier"), "p2", "spend"),  # ... the aggregator's own spend
]


@pytest.mark.parametrize("first,second,target,column", CROSSES)
def test_a_cross_of_two_columns_equals_a_plain_group_by(
    collab, first, second, target, column, tmp_path
):
    config = {
        "segment-party": first[0],
        "segment-column": first[1],
        "cross-party": second[0],
        "cross-column": second[1],
        "target-party": "" if target == "lo" else target,
        "target-column": column,
    }
    if column:
        config["target-max"] = SPEND_MAX
    collab.run(workdir=tmp_path / "w", model="segments", **config)
    report = json.loads((tmp_path / "w/parties/lo/segments.json").read_text())
    plain = _plain_cross(collab, first, second, target, column)
    statistic = "mean" if column else "rate"
    assert len(report["cells"]) == 8  # 4 regions x 2 tiers, every combination listed
    released = [c for c in report["cells"] if not c["suppressed"]]
    assert released
    for cell in released:
        assert cell["customers"] == plain.loc[cell["segment"], "count"]
        assert cell[statistic] == pytest.approx(plain.loc[cell["segment"], "mean"], abs=1e-4)
    for cell in report["cells"]:
        if cell["segment"] not in plain.index or plain.loc[cell["segment"], "count"] < 20:
            assert cell["suppressed"], cell
    # any row or column total may be known (the label owner's own column, another job's
    # release): the withheld cells of each row and column cover 0 or at least the cohort
    firsts = sorted({c["segment"].split(" \u00d7 ")[0] for c in report["cells"]})
    seconds = sorted({c["segment"].split(" \u00d7 ")[1] for c in report["cells"]})
    for side, names in ((0, firsts), (1, seconds)):
        for name in names:
            line = [c for c in report["cells"] if c["segment"].split(" \u00d7 ")[side] == name]
            hidden = [c["segment"] for c in line if c["suppressed"]]
            total = sum(int(plain["count"].get(h, 0)) for h in hidden)
            assert total == 0 or total >= 20 or len(hidden) == len(line), (name, hidden, total)


def test_a_label_owner_that_releases_a_withheld_cell_is_refused(collab, monkeypatch, tmp_path):
    """A deviating label owner whose final list drops a cell it asked to withhold before:
    the segment holder refuses to reveal any mask."""
    from vfm_flower.context import PartyContext

    original = PartyContext.send

    def send(self, recipient, topic, payload):
        if topic.name == "segments.withheld" and b'"final"' in payload:
            payload = json.dumps({"withheld": [[]], "final": True}).encode()
        return original(self, recipient, topic, payload)

    monkeypatch.setattr(PartyContext, "send", send)
    with pytest.raises(ProtocolAbort, match=r"p2.*min_cohort.*releases cells it withheld"):
        collab.run(
            workdir=tmp_path / "w",
            model="segments",
            **{"segment-party": "p2", "segment-column": "region"},
        )


def test_a_label_owner_that_scales_a_merge_test_is_refused(collab, monkeypatch, tmp_path):
    """Asking to test a cell several times over (t * C_i < k for t = 1, 2...) would measure
    a withheld count: the segment holder tests only distinct cells of one row or column."""
    from vfm_flower.context import PartyContext

    original = PartyContext.send

    def send(self, recipient, topic, payload):
        if topic.name == "segments.withheld" and b'"final"' not in payload:
            cell = json.loads(payload)["withheld"][0][0]
            payload = json.dumps({"withheld": [[cell] * 3]}).encode()
        return original(self, recipient, topic, payload)

    monkeypatch.setattr(PartyContext, "send", send)
    with pytest.raises(ProtocolAbort, match=r"p2.*min_cohort.*not distinct cells"):
        collab.run(
            workdir=tmp_path / "w",
            model="segments",
            **{"segment-party": "p2", "segment-column": "region"},
        )

"""A server that deviates from the protocol must not learn more (found in review, now refused).

Each test plays a malicious server by wrapping the strategy's own round methods.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import strategies.base as base
from tests.conftest import make_collaboration, synthetic_frames
from vfm_flower.errors import ProtocolAbort
from vfm_flower.session import SessionInfo

FAST = {"max-iterations": 6}


@pytest.fixture
def collab(tmp_path):
    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=3)
    return make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)


def _wrap_exchange(monkeypatch, hook):
    original = base.VerticalStrategy.exchange

    def exchange(self, kind, requests):
        return hook(self, kind, requests, lambda k, r: original(self, k, r))

    monkeypatch.setattr(base.VerticalStrategy, "exchange", exchange)


def test_replayed_forward_step_refused(collab, monkeypatch):
    """Re-asking step 0 after training moved on would reuse its mask: the party refuses."""

    def hook(self, kind, requests, send):
        out = send(kind, requests)
        if kind == "train.forward" and next(iter(requests.values())).step == 2:
            send("train.forward", {"p1": self.request("train.forward", 0, params={})})
        return out

    _wrap_exchange(monkeypatch, hook)
    with pytest.raises(ProtocolAbort, match=r"p1.*(out of order|mask label)"):
        collab.run(job="train", **FAST)


def test_session_without_hello_refused(collab, monkeypatch):
    """A server that skips hello and picks the run key alone is refused by every party."""

    def hello(self, flower_run_id):
        self._phase = "hello"
        nodes = self.wait_for_nodes()
        for party, node in zip(sorted(self.parties), sorted(nodes)):
            self.node_of[party] = node
        self.session = SessionInfo(flower_run_id=1, server_nonce="fixed", party_nonces={})

    monkeypatch.setattr(base.VerticalStrategy, "hello", hello)
    with pytest.raises(ProtocolAbort, match=r"\[session\]"):
        collab.run(job="train", **FAST)


def test_forged_session_nonces_refused(collab, monkeypatch):
    original = base.VerticalStrategy.hello

    def hello(self, flower_run_id):
        original(self, flower_run_id)
        nonces = dict(self.session.party_nonces)
        nonces["p2"] = "0" * 32
        self.session = SessionInfo(self.session.flower_run_id, self.session.server_nonce, nonces)

    monkeypatch.setattr(base.VerticalStrategy, "hello", hello)
    with pytest.raises(ProtocolAbort, match=r"p2.*\[session\]"):
        collab.run(job="train", **FAST)


def test_altered_forward_sum_refused(collab, monkeypatch):
    """Adding label-probing offsets to the relayed sum at iteration 0 is detected."""
    original = base.VerticalStrategy.request

    def request(self, kind, step, **kwargs):
        req = original(self, kind, step, **kwargs)
        if kind == "train.residual" and step == 0 and "forward" in req.sums:
            probe = np.zeros_like(req.sums["forward"])
            probe[:24] = [1 << (12 + i) for i in range(24)]
            req.sums["forward"] = req.sums["forward"] + probe
        return req

    monkeypatch.setattr(base.VerticalStrategy, "request", request)
    with pytest.raises(ProtocolAbort, match=r"lo.*altered"):
        collab.run(job="train", **FAST)


def test_server_learns_no_per_iteration_losses(collab):
    grids = []
    result = collab.run(grid_out=grids, job="train", **FAST)
    text = json.dumps(result)
    assert "objective" not in text and "holdout_loss" not in text
    for key in ("auc", "auc_label_owner_only", "log_loss"):
        value = result["public"][key]
        assert value == round(value, 3)


def test_result_owner_refuses_mismatched_slices_even_if_server_does_not(collab, monkeypatch):
    import shutil

    collab.run(job="train", **FAST)
    first_p2 = collab.root / "p2-model"
    shutil.copytree(collab.root / "work" / "parties" / "p2" / "model", first_p2)
    collab.run(job="train", **FAST)  # a second training run replaces every slice
    target = collab.root / "work" / "parties" / "p2" / "model"
    shutil.rmtree(target)
    shutil.copytree(first_p2, target)  # p2 now holds the first run's slice

    def score(self):  # the server's own model-id check is skipped
        lo = self.agreement.label_owner
        self.begin_phase("score")
        partial = self.exchange(
            "query.score",
            {p: self.request("query.score", 1, inbox=self.take_carry(p)) for p in self.parties},
        )
        from vfm_flower.masking import sum_masked

        sums = {"score": sum_masked([partial[p].masked["score"] for p in ("p1", "p2")])}
        inboxes = self.relay(partial.values())
        self.exchange(
            "query.combine", {lo: self.request("query.combine", 1, sums=sums, inbox=inboxes[lo])}
        )

    monkeypatch.setattr("strategies.regression.VerticalRegression.score", score)
    with pytest.raises(ProtocolAbort, match=r"lo.*'p2'.*another training run"):
        collab.run(job="score")
    assert not (collab.root / "work" / "parties" / "lo" / "scores.csv").exists()


def test_aborted_job_leaves_no_stale_result(collab):
    collab.run(job="train", **FAST)
    server = collab.root / "work" / "server"
    assert (server / "result.json").exists()
    with pytest.raises(ProtocolAbort):
        collab.run(offline=("p1",), job="train", **FAST)
    assert not (server / "result.json").exists()
    assert not (server / "result-train.json").exists()

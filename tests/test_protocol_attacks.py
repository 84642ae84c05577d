"""A server that deviates from the protocol must not learn more (found in review, now refused).

Each test plays a malicious server by wrapping the strategy's own round methods.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import make_collaboration, synthetic_frames
from vfm_flower.envelope import peek_header
from vfm_flower.errors import ProtocolAbort
from vfm_flower.session import SessionInfo
from vfm_flower.strategies.session import VerticalSession
from vfm_flower.strategies.transport import Transport

FAST = {"max-iterations": 6}


@pytest.fixture
def collab(tmp_path):
    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=3)
    return make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)


def _wrap_exchange(monkeypatch, hook):
    original = Transport.exchange

    def exchange(self, kind, requests):
        return hook(self, kind, requests, lambda k, r: original(self, k, r))

    monkeypatch.setattr(Transport, "exchange", exchange)


def test_replayed_passive_step_refused(collab, monkeypatch):
    """Re-asking round 0 after training moved on would reuse its masks: the party refuses."""

    def hook(self, kind, requests, send):
        out = send(kind, requests)
        passive = requests.get("p1")
        if passive is not None and passive.kind == "train.passive" and passive.step == 2:
            replay = dataclasses.replace(requests["p1"], step=0, inbox={})
            send("train.passive", {"p1": replay})
        return out

    _wrap_exchange(monkeypatch, hook)
    with pytest.raises(ProtocolAbort, match=r"p1.*(out of order|mask label)"):
        collab.run(job="train", **FAST)


def test_session_without_hello_refused(collab, monkeypatch):
    """A server that skips hello and picks the run key alone is refused by every party."""

    def hello(self):
        self.transport.phase = "hello"
        nodes = self.wait_for_nodes()
        for party, node in zip(sorted(self.parties), sorted(nodes)):
            self.transport.node_of[party] = node
        self.info = SessionInfo(flower_run_id=1, server_nonce="fixed", party_nonces={})
        self.transport.run_ref = self.info.run_key

    monkeypatch.setattr(VerticalSession, "hello", hello)
    with pytest.raises(ProtocolAbort, match=r"\[session\]"):
        collab.run(job="train", **FAST)


def test_forged_session_nonces_refused(collab, monkeypatch):
    original = VerticalSession.hello

    def hello(self):
        original(self)
        nonces = dict(self.info.party_nonces)
        nonces["p2"] = "0" * 32
        forged = dataclasses.replace(self.info, party_nonces=nonces)
        # a dishonest operator: it signs the forged session with its own key
        self.info = dataclasses.replace(
            forged, operator_signature=self._identity.sign(forged.signing_bytes())
        )
        self.transport.run_ref = self.info.run_key

    monkeypatch.setattr(VerticalSession, "hello", hello)
    # every party checks every signed hello: the first to get the session refuses it
    with pytest.raises(ProtocolAbort, match=r"\[session\].*p2|p2.*\[session\]"):
        collab.run(job="train", **FAST)


def _wrap_post(monkeypatch, mutate):
    """The server's relay, with ``mutate(mailbox)`` applied to what it holds after each round."""
    original = Transport.post

    def post(self, replies):
        original(self, replies)
        mutate(self._mailbox)

    monkeypatch.setattr(Transport, "post", post)


IMAGE = ("p1", "train.encrypted_image")


@pytest.mark.parametrize("iteration", [0, 3])
def test_altered_image_refused_at_every_iteration(collab, monkeypatch, iteration):
    """The server relays the passive parties' images sealed: changing one at any iteration
    (not only the first) is detected by the label owner."""

    def mutate(mailbox):
        blob = mailbox.get("lo", {}).get(IMAGE)
        if blob is not None and peek_header(blob).round == iteration:
            mailbox["lo"][IMAGE] = blob[:-300] + bytes([blob[-300] ^ 4]) + blob[-299:]

    _wrap_post(monkeypatch, mutate)
    with pytest.raises(ProtocolAbort, match=r"lo.*p1.*(tampered|signature|authentic)"):
        collab.run(job="train", **FAST)
    for party in ("lo", "p1", "p2"):
        assert not (collab.root / "work" / "parties" / party / "model").exists()


def test_replayed_image_refused(collab, monkeypatch):
    """An image of an earlier iteration relayed again is refused (bound to its round)."""
    kept = {}

    def mutate(mailbox):
        blob = mailbox.get("lo", {}).get(IMAGE)
        if blob is None:
            return
        round_ = peek_header(blob).round
        if round_ == 1:
            kept["old"] = blob
        if round_ == 3:
            mailbox["lo"][IMAGE] = kept["old"]

    _wrap_post(monkeypatch, mutate)
    with pytest.raises(ProtocolAbort, match=r"lo.*(round is 1, expected 3|replay)"):
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

    def score(self, session):  # the server's own model-id check is skipped
        session.send("query.score")
        session.send("query.combine", to=[session.label_owner])

    monkeypatch.setattr("vfm_flower.strategies.regression.VerticalRegression.score", score)
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

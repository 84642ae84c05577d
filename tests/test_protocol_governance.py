"""Governance enforced in the running protocol: the server's checks and every party's own."""

from __future__ import annotations

import dataclasses

import pytest

import vfm_flower.strategies.session as strategy_session
from tests.conftest import audit_decisions, governed_collab, make_collaboration, synthetic_frames
from vfm_flower.agreement import SignedAgreement
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.strategies.session import VerticalSession

FAST = {"max-iterations": 2}


def _collab(tmp_path, **terms):
    return governed_collab(tmp_path, 31, **terms)


@pytest.fixture
def malicious_server(monkeypatch):
    """A server that skips its own job check: the parties must still refuse."""
    monkeypatch.setattr(
        strategy_session, "check_job", lambda signed, job, kind=None, now=None: None
    )


def test_server_refuses_disallowed_model_before_contacting_anyone(tmp_path):
    collab = _collab(tmp_path, allowed_models=("logistic",))
    grids = []
    with pytest.raises(PolicyViolation, match=r"\[job_kind\]"):
        collab.run(grid_out=grids, job="train", model="linear", **FAST)
    assert ("server", "refused:job_kind") in audit_decisions(collab.root / "work")


def test_party_refuses_disallowed_job_from_malicious_server(tmp_path, malicious_server):
    collab = _collab(tmp_path, allowed_operations=("train",))
    with pytest.raises(ProtocolAbort, match=r"\[operation\]"):
        collab.run(job="score")
    decisions = audit_decisions(collab.root / "work")
    assert ("lo", "refused:operation") in decisions


def test_party_refuses_small_paillier_key(tmp_path, malicious_server, monkeypatch):
    """A server that also skips the kind's own range asks for a 1024-bit key."""
    import vfm_flower.strategies.settings as settings

    def job_from_config(config, kind):
        job = kind.bind(str(config.get("job", "train")), {})
        return dataclasses.replace(job, params={**job.params, "paillier-bits": 1024})

    monkeypatch.setattr(settings, "job_from_config", job_from_config)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[paillier_bits\]"):
        collab.run(job="train", **FAST)


def test_party_refuses_denied_feature(tmp_path, malicious_server, monkeypatch):
    collab = _collab(tmp_path, denied_features={"p1": ["p1_x"]})
    # the malicious server asks p1 for its denied column
    original = VerticalSession.request

    def request(self, kind, step, **kwargs):
        req = original(self, kind, step, **kwargs)
        req.job = dataclasses.replace(req.job, features={"p1": ("p1_x",)})
        return req

    monkeypatch.setattr(VerticalSession, "request", request)
    with pytest.raises(ProtocolAbort, match=r"\[features\].*'p1'.*p1_x"):
        collab.run(job="train", **FAST)


def test_denied_feature_is_never_used(tmp_path):
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=32)
    frames["p1"]["p1_secret"] = frames["p1"]["p1_x"] * 2
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        denied_features={"p1": ["p1_secret"]},
    )
    collab.run(job="train", **FAST)
    text = (collab.root / "work" / "parties" / "p1" / "model" / "slice.json").read_text()
    assert "p1_secret" not in text and "p1_x" in text


def test_different_agreement_at_one_party(tmp_path):
    collab = _collab(tmp_path)
    signed = SignedAgreement.load(collab.agreement_path)
    other_terms = dataclasses.replace(signed.agreement, purpose="something else")
    other = SignedAgreement(other_terms, {})
    for identity in collab.identities.values():
        other = other.with_signature(identity)
    other_path = tmp_path / "p2-agreement.toml"
    other.save(other_path)
    with pytest.raises(ProtocolAbort, match=r"p2.*\[agreement_hash\]"):
        collab.run(party_agreements={"p2": other_path}, job="train", **FAST)


def test_unsigned_agreement_refused(tmp_path):
    collab = _collab(tmp_path)
    signed = SignedAgreement.load(collab.agreement_path)
    partial = SignedAgreement(signed.agreement, {"lo": signed.signatures["lo"]})
    partial.save(collab.agreement_path)
    with pytest.raises(PolicyViolation, match=r"\[signatures\].*p1"):
        collab.run(job="train", **FAST)


def test_tampered_terms_refused(tmp_path):
    collab = _collab(tmp_path)
    text = collab.agreement_path.read_text()
    collab.agreement_path.write_text(text.replace("test collaboration", "another purpose"))
    with pytest.raises(PolicyViolation, match=r"\[signatures\]"):
        collab.run(job="train", **FAST)


def test_expired_agreement_refused(tmp_path):
    from datetime import UTC, datetime, timedelta

    collab = _collab(tmp_path, not_before=datetime.now(UTC) - timedelta(days=400), valid_days=30)
    with pytest.raises(PolicyViolation, match=r"\[validity\]"):
        collab.run(job="train", **FAST)


def test_party_absent_named(tmp_path):
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match="p1.*did not connect"):
        collab.run(offline=("p1",), job="train", **FAST)


def test_cohort_below_minimum_refused(tmp_path):
    collab = _collab(tmp_path, min_cohort=100)  # 30% of 120 rows held out = 36 < 100
    with pytest.raises(ProtocolAbort, match=r"lo.*\[min_cohort\]"):
        collab.run(job="train", **FAST)
    decisions = audit_decisions(collab.root / "work")
    assert ("lo", "refused:min_cohort") in decisions


def test_audit_logs_sealed_and_intact_after_a_refusal(tmp_path):
    collab = _collab(tmp_path, min_cohort=100)
    with pytest.raises(ProtocolAbort):
        collab.run(job="train", **FAST)
    results = verify_audit_tree(collab.root / "work")
    assert len(results) == 4
    assert all(v.ok for _, v in results), [(p, v.reason) for p, v in results]


def test_a_server_without_the_operators_key_refuses_to_run(tmp_path):
    from vfm_flower.keys import PartyIdentity

    collab = _collab(tmp_path)
    impostor, _ = PartyIdentity.generate("operator").save(tmp_path / "impostor")
    collab.operator_key = impostor
    with pytest.raises(PolicyViolation, match=r"\[operator\].*not the operator key"):
        collab.run(workdir=tmp_path / "w", job="train", **FAST)
    assert not [d for d in audit_decisions(tmp_path / "w")]  # nobody was contacted


def _impostor_server(monkeypatch):
    """A server that runs with a key the agreement does not list (its own check skipped)."""
    from vfm_flower.keys import PartyIdentity

    impostor = PartyIdentity.generate("operator")
    monkeypatch.setattr(strategy_session, "load_operator_identity", lambda a, w: impostor)


def test_every_party_refuses_a_hello_the_operator_did_not_sign(tmp_path, monkeypatch):
    _impostor_server(monkeypatch)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[operator\].*hello"):
        collab.run(job="train", **FAST)
    decisions = audit_decisions(collab.root / "work")
    for party in ("lo", "p1", "p2"):
        assert (party, "refused:operator") in decisions


def test_every_party_refuses_a_session_the_operator_did_not_sign(tmp_path, monkeypatch):
    original = VerticalSession.hello

    def hello(self):
        original(self)  # a relay that rewrites the session after the operator signed its hello
        self.info = dataclasses.replace(self.info, operator_signature=bytes(64))

    monkeypatch.setattr(VerticalSession, "hello", hello)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[operator\].*session"):
        collab.run(job="train", **FAST)
    assert ("lo", "refused:operator") in audit_decisions(collab.root / "work")


def test_a_request_changed_by_a_relay_is_refused(tmp_path, monkeypatch):
    """Every request after hello is signed by the operator: a relay between the operator and
    the parties (or the SuperLink itself) cannot change a step's parameters."""
    import json

    from flwr.app import ConfigRecord

    from vfm_flower.runtime import wire

    original = wire.encode_request

    def encode(request):
        content = original(request)
        if request.kind == "query.close":  # e.g. a relay presenting another audit head
            cfg = dict(content["vfm"])
            params = json.loads(str(cfg["params"]))
            params["server_head"]["seq"] += 1
            cfg["params"] = json.dumps(params)
            content["vfm"] = ConfigRecord(cfg)
        return content

    monkeypatch.setattr(wire, "encode_request", encode)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[operator\].*'query.close' request is not signed"):
        collab.run(job="train", **FAST)
    assert ("lo", "refused:operator") in audit_decisions(collab.root / "work")


def test_a_request_replayed_by_a_relay_is_refused(tmp_path, monkeypatch):
    from vfm_flower.strategies.transport import Transport

    original = Transport.round
    replayed = []

    def round_(self, kind, requests, *, by_node=False):
        out = original(self, kind, requests, by_node=by_node)
        if kind == "query.align" and not replayed:  # the same signed messages, again
            replayed.append(kind)
            original(self, kind, requests, by_node=by_node)
        return out

    monkeypatch.setattr(Transport, "round", round_)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[session\].*replayed or reordered"):
        collab.run(job="train", **FAST)
    assert replayed


def test_a_re_delivered_hello_is_refused_and_counts_once(tmp_path, monkeypatch):
    from vfm_flower.strategies.transport import Transport

    original = Transport.round

    def round_(self, kind, requests, *, by_node=False):
        out = original(self, kind, requests, by_node=by_node)
        if kind == "query.hello":  # a relay delivers the same signed hello once more
            original(self, kind, dict(list(requests.items())[:1]), by_node=by_node)
        return out

    monkeypatch.setattr(Transport, "round", round_)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[session\].*second hello"):
        collab.run(job="train", **FAST)
    decisions = audit_decisions(collab.root / "work")
    assert sum(1 for w, d in decisions if d == "refused:session") == 1


def test_parties_refuse_an_older_server_head_at_close(tmp_path, monkeypatch):
    """A listed operator that re-presents the head it showed at the last close (to roll its
    log back behind it later) is refused by every party."""
    from vfm_flower.audit import verify_audit_log

    collab = _collab(tmp_path)
    collab.run(job="train", **FAST)
    lo_log = next((collab.root / "work" / "parties" / "lo").glob("audit-*.jsonl"))
    attested = verify_audit_log(lo_log).attested_heads["operator"][-1]
    original = VerticalSession.close

    def close(self):
        self.audit.head = lambda: attested  # the head of the job before, signed again
        original(self)

    monkeypatch.setattr(VerticalSession, "close", close)
    with pytest.raises(ProtocolAbort, match=r"\[operator\].*not after"):
        collab.run(job="train", **FAST)


def test_a_party_node_with_a_substituted_key_is_refused_by_the_operator_and_the_others(
    tmp_path, monkeypatch
):
    """Someone answers for p1 under a key the agreement does not list for p1 (the key pins
    catch the swap at sign time; this is the run)."""
    from vfm_flower.keys import PartyIdentity
    from vfm_flower.strategies.transport import Transport

    impostor, sign = PartyIdentity.generate("p1"), PartyIdentity.sign

    def sign_as_impostor(self, data):  # p1's replies, signed under the impostor's key
        return sign(
            impostor if self.party == "p1" and data.startswith(b'{"party":') else self, data
        )

    monkeypatch.setattr(PartyIdentity, "sign", sign_as_impostor)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"p1.*reply signature does not verify"):
        collab.run(workdir=tmp_path / "w1", job="train", **FAST)
    # an operator that skipped the check: every other party refuses the session itself
    original = Transport.verify_reply

    def verify_reply(self, kind, step, reply, *, run_ref):
        if kind != "query.hello":
            original(self, kind, step, reply, run_ref=run_ref)

    monkeypatch.setattr(Transport, "verify_reply", verify_reply)
    with pytest.raises(ProtocolAbort, match=r"\[session\].*hello of 'p1' in the session is not"):
        collab.run(workdir=tmp_path / "w2", job="train", **FAST)
    decisions = audit_decisions(tmp_path / "w2")
    assert ("lo", "refused:session") in decisions and ("p2", "refused:session") in decisions


def test_every_party_refuses_a_certificate_with_another_operator_head(tmp_path, monkeypatch):
    """An operator that shows the parties one head at close and certifies another (a forked
    log) is refused by every party before it seals."""
    import dataclasses as dc

    from vfm_flower.audit_heads import CloseCertificate, SignedHead

    signed_by = CloseCertificate.signed_by

    def forked(self, operator):
        own = self.heads[operator.party]
        other = SignedHead.sign(
            operator,
            agreement_hash=own.agreement_hash,
            job_counter=own.job_counter,
            seq=own.seq,
            head="f" * 64,
        )
        return signed_by(dc.replace(self, heads={**self.heads, operator.party: other}), operator)

    monkeypatch.setattr(CloseCertificate, "signed_by", forked)
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"\[audit\].*operator's head this party attested"):
        collab.run(job="train", **FAST)
    decisions = audit_decisions(collab.root / "work")
    for party in ("lo", "p1", "p2"):
        assert (party, "refused:audit") in decisions


def test_a_parameter_added_after_signing_runs_only_at_its_default():
    """An agreement signed before a kind gained a parameter (no bound for it) still runs the
    kind's jobs, with that parameter at its default only."""
    from vfm_flower.agreement import JobTerms
    from vfm_flower.jobs_builtin import LOGISTIC
    from vfm_flower.policy import check_param_bound

    terms = JobTerms.default_for(LOGISTIC)
    older = dataclasses.replace(
        terms, params={k: v for k, v in terms.params.items() if k != "junk-threshold"}
    )
    check_param_bound(older, "junk-threshold", 0.05, default=0.05)  # what the signers ran
    with pytest.raises(PolicyViolation, match=r"\[params\].*no bound for parameter"):
        check_param_bound(older, "junk-threshold", 0.1, default=0.05)
    with pytest.raises(PolicyViolation, match=r"\[params\]"):
        check_param_bound(older, "junk-threshold", 0.05)  # a kind the party does not know

"""Jobs are governed units: each bypass of the signed job is refused with a named rule.

A malicious server (its own check skipped) tries: training under a score-only agreement,
scoring under a train-only one, a parameter outside the signed bounds, a different job for one
party, a parameter changed between messages, a step of another job kind. Every party refuses
on its own, names the rule, audits the refusal, and the logs stay intact and sealed.
"""

from __future__ import annotations

import base64
import dataclasses

import pytest

import vfm_flower.strategies.session as strategy_session
from tests.conftest import audit_decisions, governed_collab
from vfm_flower.agreement import JobTerms
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.errors import ConfigurationError, PolicyViolation, ProtocolAbort
from vfm_flower.jobs_builtin import LOGISTIC
from vfm_flower.keys import PartyIdentity
from vfm_flower.session import server_hello_bytes
from vfm_flower.strategies.session import VerticalSession
from vfm_flower.strategies.transport import Transport

FAST = {"max-iterations": 2}


def _collab(tmp_path, **terms):
    return governed_collab(tmp_path, 41, **terms)


def _assert_logs_sealed(root):
    reports = verify_audit_tree(root)
    assert reports and all(r.ok and r.sealed for _, r in reports), reports


@pytest.fixture
def malicious_server(monkeypatch):
    """A server that skips its own job check: the parties must refuse on their own."""
    monkeypatch.setattr(
        strategy_session, "check_job", lambda signed, job, kind=None, now=None: None
    )


def _tamper_requests(monkeypatch, change):
    """Let ``change(kind, step, request)`` rewrite the job of the server's requests."""
    original = VerticalSession.request

    def request(self, kind, step, **kwargs):
        req = original(self, kind, step, **kwargs)
        change(kind, step, req)
        return req

    monkeypatch.setattr(VerticalSession, "request", request)


def test_training_under_a_score_only_agreement_is_refused(tmp_path, malicious_server):
    collab = _collab(tmp_path, allowed_operations=("score",))
    with pytest.raises(ProtocolAbort, match=r"\[operation\]"):
        collab.run(job="train", **FAST)
    assert ("lo", "refused:operation") in audit_decisions(collab.root / "work")
    assert not list((collab.root / "work").rglob("model-*.npz"))
    _assert_logs_sealed(collab.root / "work")


def test_scoring_under_a_train_only_agreement_is_refused(tmp_path, malicious_server):
    collab = _collab(tmp_path, allowed_operations=("train",))
    with pytest.raises(ProtocolAbort, match=r"\[operation\]"):
        collab.run(job="score")
    _assert_logs_sealed(collab.root / "work")


def test_server_refuses_an_operation_the_agreement_does_not_name(tmp_path):
    collab = _collab(tmp_path, allowed_operations=("train",))
    with pytest.raises(PolicyViolation, match=r"\[operation\]"):
        collab.run(job="score")
    assert ("server", "refused:operation") in audit_decisions(collab.root / "work")


def test_a_step_of_another_operation_is_refused(tmp_path, malicious_server, monkeypatch):
    """A score job whose server sends training steps: the step does not serve 'score'."""
    collab = _collab(tmp_path)
    from vfm_flower.strategies.regression import VerticalRegression

    monkeypatch.setattr(VerticalRegression, "score", VerticalRegression.train)  # (self, session)
    with pytest.raises(ProtocolAbort, match=r"\[operation\].*train\.prepare"):
        collab.run(job="score")


@pytest.mark.parametrize(
    ("param", "value"),
    [("holdout-fraction", 0.04), ("holdout-fraction", 0.6), ("tol", 0.5), ("l2", 50.0)],
)
def test_a_parameter_outside_the_signed_bounds_is_refused(tmp_path, malicious_server, param, value):
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=rf"\[params\].*'{param}'"):
        collab.run(job="train", **{param: value}, **FAST)
    _assert_logs_sealed(collab.root / "work")


def test_server_refuses_a_parameter_outside_the_signed_bounds(tmp_path):
    terms = JobTerms.default_for(LOGISTIC, params={"l2": [1e-3, 1e-2]})
    collab = _collab(tmp_path, jobs=[terms])
    with pytest.raises(PolicyViolation, match=r"\[params\].*'l2'"):
        collab.run(job="train", l2=0.5, **FAST)


def test_a_parameter_outside_the_kinds_hard_range_is_a_configuration_error(tmp_path):
    collab = _collab(tmp_path)
    with pytest.raises(ConfigurationError, match="holdout-fraction"):
        collab.run(job="train", **{"holdout-fraction": 0.95})


def test_a_different_l2_for_one_party_is_refused(tmp_path, malicious_server, monkeypatch):
    """Per-party parameters: p1 is told another l2 than the others, from hello on."""
    collab = _collab(tmp_path)
    original = Transport.round

    operator = PartyIdentity.load(collab.operator_key)

    def round_(self, kind, requests, *, by_node=False):
        if kind == "query.hello":
            requests = dict(requests)
            node = sorted(requests)[1]
            job = requests[node].job
            other = dataclasses.replace(job, params={**job.params, "l2": 0.5})
            params = dict(requests[node].params)
            # a dishonest operator signs each party's hello for the job it tells that party
            hello = server_hello_bytes(
                agreement_hash=requests[node].agreement_hash,
                job_digest=other.digest(),
                flower_run_id=params["flower_run_id"],
                server_nonce=params["server_nonce"],
                job_counter=params["job_counter"],
            )
            params["operator_signature"] = base64.b64encode(operator.sign(hello)).decode()
            requests[node] = dataclasses.replace(requests[node], job=other, params=params)
        return original(self, kind, requests, by_node=by_node)

    monkeypatch.setattr(Transport, "round", round_)
    with pytest.raises((ProtocolAbort, PolicyViolation), match=r"\[job_mismatch\]"):
        collab.run(job="train", **FAST)


def test_another_model_for_one_party_is_refused(tmp_path, malicious_server, monkeypatch):
    collab = _collab(tmp_path)

    def change(kind, step, req):
        if kind.startswith("train.") and req.session is not None:
            req.job = dataclasses.replace(req.job, kind="linear")

    _tamper_requests(monkeypatch, change)
    with pytest.raises(ProtocolAbort, match=r"\[job_changed\]"):
        collab.run(job="train", **FAST)
    _assert_logs_sealed(collab.root / "work")


def test_a_parameter_changed_between_messages_is_refused(tmp_path, malicious_server, monkeypatch):
    collab = _collab(tmp_path)

    def change(kind, step, req):
        if kind == "train.label_owner" and step >= 1:
            req.job = dataclasses.replace(req.job, params={**req.job.params, "tol": 1e-3})

    _tamper_requests(monkeypatch, change)
    with pytest.raises(ProtocolAbort, match=r"\[job_changed\]"):
        collab.run(job="train", **FAST)
    assert ("lo", "refused:job_changed") in audit_decisions(collab.root / "work")
    _assert_logs_sealed(collab.root / "work")


def test_a_job_kind_the_agreement_does_not_name_is_refused(tmp_path, malicious_server):
    collab = _collab(tmp_path, allowed_models=("logistic",))
    with pytest.raises(ProtocolAbort, match=r"\[job_kind\]"):
        collab.run(job="train", model="linear", **FAST)


def test_a_release_the_agreement_does_not_list_is_refused(tmp_path):
    terms = JobTerms.default_for(LOGISTIC)
    release = dict(terms.release)
    release["server"] = tuple(n for n in release["server"] if n != "stop")
    collab = _collab(tmp_path, jobs=[dataclasses.replace(terms, release=release)])
    with pytest.raises(ProtocolAbort, match=r"\[release\].*stop"):
        collab.run(job="train", **FAST)
    _assert_logs_sealed(collab.root / "work")


def test_headline_metrics_left_off_the_release_list_are_withheld(tmp_path):
    terms = JobTerms.default_for(LOGISTIC)
    release = dict(terms.release)
    release["server"] = tuple(n for n in release["server"] if n not in ("auc", "headline"))
    collab = _collab(tmp_path, jobs=[dataclasses.replace(terms, release=release)])
    result = collab.run(job="train", **FAST)
    assert "auc" not in result["public"] and "headline" not in result["public"]
    assert "log_loss" in result["public"]


def test_evaluate_writes_no_model_slice(tmp_path):
    collab = _collab(tmp_path)
    result = collab.run(job="evaluate", **FAST)
    assert "auc" in result["public"]
    assert not list((collab.root / "work").rglob("model-*"))


def test_the_job_is_part_of_the_run_key():
    from vfm_flower.session import SessionInfo

    base = SessionInfo(1, "s", {"a": "1"}, job_digest=LOGISTIC.bind("train").digest())
    other = dataclasses.replace(base, job_digest=LOGISTIC.bind("train", {"l2": 0.01}).digest())
    assert base.run_key != other.run_key

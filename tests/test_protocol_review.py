"""Regression tests from an attack review of the plugin layer: each was a bypass once.

A malicious server forces parties to seal without the close, sends parameters of the wrong
type, malformed or deeply nested JSON, out-of-range close numbers, forged row counts; a step
publishes a headline that quotes a withheld metric; a job step tries to exempt facts from the
release list or to send plaintext. Every one ends in a named refusal (or is withheld), audited.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from flwr.app import ConfigRecord

import vfm_flower.runtime.wire as wire
import vfm_flower.strategies.session as strategy_session
from tests.conftest import audit_decisions, governed_collab
from vfm_flower.agreement import JobTerms
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs import JobKind
from vfm_flower.jobs_builtin import LOGISTIC
from vfm_flower.party import StepRegistry, StepRequest
from vfm_flower.strategies.session import VerticalSession

FAST = {"max-iterations": 2}


def _tamper_wire(monkeypatch, when, field, value):
    original = wire.encode_request

    def encode(request):
        content = original(request)
        if when(request):
            cfg = dict(content["vfm"])
            cfg[field] = value
            content["vfm"] = ConfigRecord(cfg)
        return content

    monkeypatch.setattr(wire, "encode_request", encode)


@pytest.fixture
def malicious_server(monkeypatch):
    monkeypatch.setattr(
        strategy_session, "check_job", lambda signed, job, kind=None, now=None: None
    )


def test_a_server_cannot_make_parties_seal_without_the_close(tmp_path, monkeypatch):
    """A session-less message mid-run is refused, but the party does not seal on it."""

    def fake_close(self):
        bare = StepRequest(
            kind="query.hello",
            step=1,
            session=None,
            job=self.job,
            agreement_hash=self.agreement_hash,
        )
        for node in self.transport.node_of.values():
            with pytest.raises(ProtocolAbort, match=r"\[session\]"):
                self.transport.round("query.hello", {node: bare})
        self.audit.seal()

    monkeypatch.setattr(VerticalSession, "close", fake_close)
    collab = governed_collab(tmp_path, 41)
    collab.run(job="train", **FAST)
    reports = {r.writer: r for _, r in verify_audit_tree(collab.root / "work")}
    assert reports["operator"].sealed  # the server's log, written with the operator's key
    assert not any(reports[p].sealed for p in ("lo", "p1", "p2"))  # no close: not sealed


@pytest.mark.parametrize(
    ("param", "value"),
    [("holdout-seed", -1), ("holdout-seed", 1.5), ("holdout-seed", "abc"), ("max-iterations", 2.5)],
)
def test_a_parameter_of_the_wrong_type_or_outside_the_kinds_range_is_refused(
    tmp_path, malicious_server, monkeypatch, param, value
):
    import vfm_flower.strategies.settings as settings

    def job_from_config(config, kind):
        job = kind.bind("train", {"max-iterations": 2})
        return dataclasses.replace(job, params={**job.params, param: value})

    monkeypatch.setattr(settings, "job_from_config", job_from_config)
    collab = governed_collab(tmp_path, 41)
    with pytest.raises(ProtocolAbort, match=rf"\[params\].*'{param}'"):
        collab.run(job="train")


@pytest.mark.parametrize(
    ("kind", "field", "value", "needle"),
    [
        ("query.hello", "params", "[]", "params must be a JSON object"),
        ("train.prepare", "job", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("train.prepare", "session", "{not json", "malformed session"),
    ],
)
def test_malformed_requests_end_in_a_named_audited_refusal(
    tmp_path, monkeypatch, kind, field, value, needle
):
    _tamper_wire(monkeypatch, lambda r: r.kind == kind, field, value)
    collab = governed_collab(tmp_path, 41)
    with pytest.raises(ProtocolAbort, match=needle) as info:
        collab.run(job="train", **FAST)
    assert "internal error" not in str(info.value)
    decisions = audit_decisions(collab.root / "work")
    assert any(w != "server" and d == "abort" for w, d in decisions), decisions


@pytest.mark.parametrize("seq", [2**64, -1])
def test_close_numbers_out_of_range_are_refused_by_name(tmp_path, monkeypatch, seq):
    original = VerticalSession.send

    def send(self, kind, to=None, **kwargs):
        if kind == "query.close":
            head = {**kwargs["params"]["server_head"], "seq": seq}
            kwargs["params"] = {**kwargs["params"], "server_head": head}
        return original(self, kind, to, **kwargs)

    monkeypatch.setattr(VerticalSession, "send", send)
    collab = governed_collab(tmp_path, 41)
    with pytest.raises(ProtocolAbort, match="no valid audit head") as info:
        collab.run(job="train", **FAST)
    assert "internal error" not in str(info.value)


def test_the_report_takes_row_counts_from_signed_hellos(tmp_path, monkeypatch):
    original = VerticalSession.send

    def send(self, kind, to=None, **kwargs):
        if kind == "train.finish":
            kwargs["params"] = {"rows_per_party": {"lo": 10**9, "acme": 7}}
        return original(self, kind, to, **kwargs)

    monkeypatch.setattr(VerticalSession, "send", send)
    collab = governed_collab(tmp_path, 41)
    result = collab.run(job="train", **FAST)
    report = json.loads((collab.root / "work" / "parties" / "lo" / "report.json").read_text())
    assert "acme" not in json.dumps(report) and "1000000000" not in json.dumps(report)
    assert result["rows"]["lo"] == 130


def test_the_headline_is_withheld_when_a_metric_it_quotes_is(tmp_path):
    terms = JobTerms.default_for(LOGISTIC)
    release = dict(terms.release)
    release["server"] = tuple(n for n in release["server"] if n != "auc")
    collab = governed_collab(tmp_path, 41, jobs=[dataclasses.replace(terms, release=release)])
    result = collab.run(job="train", **FAST)
    assert "auc" not in result["public"] and "headline" not in result["public"]


def test_a_job_step_cannot_exempt_facts_from_the_release_list():
    from vfm_flower.party import StepSpec

    with pytest.raises(ConfigurationError, match="only protocol steps declare public facts"):
        StepRegistry().add(
            StepSpec(kind="query.leak", handler=lambda ctx: None, jobs=("x",), public=("ids",))
        )


def test_a_step_that_serves_one_operation_must_say_so():
    from vfm_flower.clients.app import VerticalClientApp

    two_ops = JobKind("two_ops", ("score", "train"))
    app = VerticalClientApp(jobs=[two_ops])
    with pytest.raises(ConfigurationError, match="say which operations"):
        app.step("query.thing")(lambda ctx: None)
    app.step("query.thing", operations=("train",))(lambda ctx: None)


def test_a_job_step_cannot_send_plaintext_or_unmasked_vectors(tmp_path):
    import numpy as np
    from flwr.serverapp import ServerApp

    from tests.conftest import make_collaboration, synthetic_frames
    from vfm_flower import VerticalClientApp, vertical_session
    from vfm_flower.runtime.local_job import run_local_app

    leaky = JobKind("leaky", ("run",), releases={"server": ("n",)})
    client = VerticalClientApp(jobs=[leaky])

    @client.step("query.leak_plain")
    def leak_plain(ctx):
        ctx.reply.outbox[(ctx.label_owner, "leak.ids")] = b"alice@example.com"

    @client.step("query.leak_vector")
    def leak_vector(ctx):
        ctx.reply.masked["x"] = np.arange(4, dtype=np.uint64)

    server = ServerApp()

    @server.main()
    def main(grid, context):
        with vertical_session(grid, context, leaky.bind("run"), job_kind=leaky) as session:
            session.align()
            session.send(str(context.run_config["step"]), to=session.passive_parties[:1])

    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=41)
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=[JobTerms.default_for(leaky)],
    )
    for step, needle in (
        ("query.leak_plain", "not an envelope"),
        ("query.leak_vector", "not masked by share"),
    ):
        with pytest.raises(ProtocolAbort, match=needle):
            run_local_app(
                server,
                client,
                collab.agreement_path,
                collab.files(),
                tmp_path / step,
                {"step": step},
                operator_key=collab.operator_key,
            )


def test_an_undecodable_payload_from_a_peer_is_refused_naming_the_peer(tmp_path, monkeypatch):
    """A deviating passive party seals garbage as its image: the label owner names it."""
    import vfm_flower.steps.training as training

    real = training.pack_payload

    def garbage_image(arrays, meta=None):
        return b"garbage" if "corrections" in arrays else real(arrays, meta)

    monkeypatch.setattr(training, "pack_payload", garbage_image)
    collab = governed_collab(tmp_path, 41)
    with pytest.raises(ProtocolAbort, match=r"lo.*payload 'train.encrypted_image' from 'p(1|2)'"):
        collab.run(job="train", **FAST)
    assert all(v.ok for _, v in verify_audit_tree(collab.root / "work"))


def test_the_release_budget_is_counted_from_each_partys_audit_log(tmp_path):
    collab = governed_collab(tmp_path, 41, max_jobs=2)
    collab.run(job="train", **FAST)
    collab.run(job="score")
    with pytest.raises(ProtocolAbort, match=r"\[max_jobs\].*2 job\(s\)"):
        collab.run(job="train", **FAST)
    assert ("lo", "refused:max_jobs") in audit_decisions(collab.root / "work")


def test_the_holdout_split_is_fixed_per_agreement(tmp_path):
    from vfm_flower.clients.vertical_party import load_state

    masks = []
    for run in range(2):
        collab = governed_collab(tmp_path / f"r{run}", 41)
        grids: list = []
        collab.run(job="train", grid_out=grids, **FAST)
        states = {c.node_config["party"]: load_state(c) for c in grids[0].contexts.values()}
        lo = states["lo"]
        rows = lo.array("joint_rows")
        mask = lo.array("coord.holdout_mask").astype(bool)
        masks.append((collab, set(rows[mask].tolist())))
    # the same agreement twice: the same customers held out (the rows are the LO's own)
    collab, first = masks[0]
    grids = []
    collab.run(job="train", grid_out=grids, workdir=collab.root / "again", **FAST)
    lo = {c.node_config["party"]: load_state(c) for c in grids[0].contexts.values()}["lo"]
    again = set(lo.array("joint_rows")[lo.array("coord.holdout_mask").astype(bool)].tolist())
    assert again == first


def test_every_party_applies_feature_cohorts_before_it_sends_anything(tmp_path):
    """A level held by 12 joint customers never becomes a one-hot slot (min cohort 20)."""
    from tests.conftest import make_collaboration, synthetic_frames
    from vfm_flower.clients.vertical_party import load_state
    from vfm_flower.preparation import PreparationPlan

    frames, _ = synthetic_frames(n_shared=200, n_only=10, seed=43)
    p1 = frames["p1"]
    p1["tier"] = ["gold" if i % 2 else "silver" for i in range(len(p1))]
    joint = p1.index[~p1["email"].str.strip().str.lower().str.startswith("only")]
    p1.loc[joint[:12], "tier"] = "platinum"  # 12 joint customers: kept at 5, pooled at 20
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    grids: list = []
    collab.run(job="train", grid_out=grids, **FAST)
    state = {c.node_config["party"]: load_state(c) for c in grids[0].contexts.values()}["p1"]
    plan = PreparationPlan.from_json(str(state.get("prep_plan")))
    tier = next(c for c in plan.columns if c.name == "tier")
    assert "platinum" not in tier.levels and set(tier.levels) == {"gold", "silver"}

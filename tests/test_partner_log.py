"""Every partner's own log ends each job with one line: job, outcome, releases, outputs.

Real in-process runs (Flower's Grid and serialization): a training job that succeeds, one a
party aborts mid-job (every other party's line names the phase, the rule and the party), a
hello one party refuses (its own line says why), and the operator wrapper's exit code.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import governed_collab
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.job_summary import PARTNER_LOG, JobSummary, decode_released

FAST = {"max-iterations": 2}


def _lines(work, party):
    path = work / "parties" / party / PARTNER_LOG
    return path.read_text().splitlines() if path.exists() else []


def test_each_party_logs_one_line_per_job(tmp_path):
    collab = governed_collab(tmp_path, 5)
    work = collab.root / "work"
    result = collab.run(workdir=work, job="train", **FAST)
    for party in ("lo", "p1", "p2"):
        (line,) = _lines(work, party)
        assert f"party '{party}' job 1 (logistic train): done" in line
        assert "released to the server: " in line and "rows" in line
        assert "sealed to parties: " in line
        assert f"job released: auc {result['public']['auc']:.3f}" in line
        assert f"outputs in {work / 'parties' / party}: " in line  # where its slice is
        assert "model/slice.json" in line
    assert "party_report.json" in _lines(work, "p1")[0]
    # a passive party's own report shows the released outcome; every report has the header
    passive = json.loads((work / "parties" / "p1" / "party_report.json").read_text())
    assert passive["job_outcome"]["outcome"] == "done"
    assert passive["job_outcome"]["released"]["auc"] == pytest.approx(result["public"]["auc"])
    shared = json.loads((work / "parties" / "lo" / "report.json").read_text())
    for report in (passive, shared):
        assert report["header"]["purpose"] == "test collaboration"
        assert report["header"]["job"]["params"]["max-iterations"] == 2
        assert report["header"]["parties"]["lo"] == "label owner"
    assert "Outcome of the job" in (work / "parties" / "p1" / "party_report.html").read_text()
    collab.run(workdir=work, job="score")
    (_, score_line) = _lines(work, "lo")
    assert "job 2 (logistic score): done" in score_line and "scores.csv" in score_line
    (_, passive_line) = _lines(work, "p1")
    assert "scores.csv" not in passive_line


def test_an_aborted_job_is_logged_by_every_party(tmp_path, monkeypatch):
    from vfm_flower.party import PartyRuntime

    collab = governed_collab(tmp_path, 6)
    work = collab.root / "work"
    original = PartyRuntime.handle

    def handle(self, request):
        if self.party == "p2" and request.kind == "train.passive":
            raise PolicyViolation("session", "simulated refusal")
        return original(self, request)

    monkeypatch.setattr(PartyRuntime, "handle", handle)
    with pytest.raises(ProtocolAbort):
        collab.run(workdir=work, job="train", **FAST)
    for party in ("lo", "p1", "p2"):
        (line,) = _lines(work, party)
        assert (
            "job 1 (logistic train): aborted in phase train, rule [session], by party 'p2'" in line
        ), line
        assert "simulated refusal" not in line


def test_a_refused_hello_is_in_the_refusing_partys_log(tmp_path):
    collab = governed_collab(tmp_path, 7)
    work = collab.root / "work"
    collab.data["p1"].write_text("email,p1_x\n")  # no rows
    with pytest.raises(ProtocolAbort):
        collab.run(workdir=work, job="train", **FAST)
    (line,) = _lines(work, "p1")
    assert "refused by this party at query.hello" in line


def test_the_line_names_everything_once():
    summary = JobSummary(
        party="bank",
        job="logistic score",
        job_counter=4,
        outcome="done",
        data_set="campaign",
        released=("rows",),
        sent_bytes=2_500_000,
        received_bytes=900,
        received=decode_released({"scored_rows": 812, "auc": 0.74123, "bad": [1], "x": True}),
        outputs=tuple(f"f{i}" for i in range(10)),
        work_dir="/w",
    )
    assert summary.line() == (
        "party 'bank' job 4 (logistic score, data set 'campaign'): done; released to the "
        "server: rows; sealed to parties: 2.4 MB sent, 900 B received; job released: "
        "scored_rows 812, auc 0.741; outputs in /w: f0, f1, f2, f3, f4, f5, f6, f7 and 2 more"
    )
    assert decode_released("not an object") == {}


def test_only_headline_figures_are_relayed_and_texts_stay_on_one_line():
    from vfm_flower.errors import ProtocolAbort as Abort
    from vfm_flower.strategies.session import abort_outcome, released_figures

    public = {"auc": 0.74, "auc_label_owner_only": 0.72, "custom_sum": 1234.5, "headline": ["x"]}
    assert released_figures(public) == {"auc": 0.74}
    assert decode_released({"auc": 0.7, "auc_label_owner_only": 0.7}) == {"auc": 0.7}
    # a party named by an error reply counts only if it is a party of the agreement
    blamed = Abort("train", "mallory\nparty 'bank' job 9: done", "[session] x")
    assert abort_outcome("train", blamed, ("bank", "lo")) == (
        "aborted in phase train, rule [session]"
    )
    line = JobSummary(party="bank", job="k op", job_counter=1, outcome="done\n\x1b[2Jfake").line()
    assert "\n" not in line and "\x1b" not in line

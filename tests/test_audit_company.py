"""One company verifies its own records alone: every tampering of issue 11 is detected by
the company it affects, from its own work dir (plus the log in question), naming the entry.

Real runs (two jobs under one agreement), then the records are tampered with on copies.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import governed_collab
from vfm_flower.agreement import SignedAgreement
from vfm_flower.audit import _ENTRY_DOMAIN, AuditLog, entry_hash, verify_audit_log
from vfm_flower.audit_heads import certificates_path, read_certificates
from vfm_flower.audit_verify import verify_audit_records
from vfm_flower.cli import main
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.keys import PartyIdentity

FAST = {"max-iterations": 2}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Two training jobs; the work dir as it was after the first one, and after both."""
    root = tmp_path_factory.mktemp("company")
    collab = governed_collab(root, 71)
    collab.run(job="train", **FAST)
    after_first = root / "after-first"
    shutil.copytree(collab.root / "work", after_first)
    collab.run(job="train", **FAST)
    return collab, after_first


@pytest.fixture
def work(ran, tmp_path) -> Path:
    collab, _ = ran
    shutil.copytree(collab.root / "work", tmp_path / "work")
    return tmp_path / "work"


def _dir(work: Path, who: str) -> Path:
    return work / ("server" if who == "operator" else f"parties/{who}")


def _log(work: Path, who: str) -> Path:
    return next(_dir(work, who).glob("audit-*.jsonl"))


def _agreement(ran):
    return SignedAgreement.load(ran[0].agreement_path).agreement


def _check(ran, *paths: Path):
    report = verify_audit_records(list(paths), _agreement(ran))
    findings = [*report.problems, *(f"{n}: {r.reason}" for n, r in report.logs if not r.ok)]
    return report, " | ".join(findings)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _resign(path: Path, identity: PartyIdentity, edit) -> None:
    """Rewrite a log with ``edit(entry)`` applied to every entry, re-chained and re-signed
    with the writer's own genuine key: a valid chain that is not what was attested."""
    prev = "0" * 64
    out = []
    for line in _lines(path):
        entry = json.loads(line)
        edit(entry)
        entry["prev"] = prev
        entry.pop("hash")
        entry.pop("sig")
        entry["hash"] = prev = entry_hash(entry)
        entry["sig"] = base64.b64encode(identity.sign(_ENTRY_DOMAIN + bytes.fromhex(prev))).decode()
        out.append(json.dumps(entry, separators=(",", ":")) + "\n")
    path.write_text("".join(out))


def test_every_company_verifies_its_own_work_dir(ran, work):
    for who in ("operator", "lo", "p1", "p2"):
        report, findings = _check(ran, _dir(work, who))
        assert report.ok, (who, findings)
        assert not report.unvouched, who  # every entry is vouched for by a certificate
        assert report.certificates == 2  # one close certificate per job
        assert [r.job_counter for _, r in report.logs] == [2]
        assert sum((report.vouched or {}).values()) >= 2  # its own log matches both
        assert any("is not here" in n for n in report.notes)  # the peers' logs are theirs
    # every log of the collaboration names every other at each close
    certs = [c.certificate for c in read_certificates(certificates_path(_log(work, "p1")))]
    assert [c.job_counter for c in certs] == [1, 2]
    assert all(set(c.heads) == {"operator", "lo", "p1", "p2"} for c in certs)
    # and the whole collaboration verifies together
    report, findings = _check(ran, work)
    assert report.ok, findings
    assert report.certificates == 8 and not report.notes


def test_own_log_deleted_is_named_from_own_certificates(ran, work):
    _log(work, "p1").unlink()
    report, findings = _check(ran, _dir(work, "p1"))
    assert not report.ok
    assert "no audit log of p1 here, though" in findings and "of job 2" in findings


def test_own_log_rolled_back_to_the_previous_seal(ran, work):
    _, after_first = ran
    log = _log(work, "p1")
    shutil.copyfile(_log(after_first, "p1"), log)  # p1's log as it was after job 1
    assert verify_audit_log(log).ok  # a valid, sealed chain on its own
    report, findings = _check(ran, _dir(work, "p1"))
    ((name, res),) = report.logs
    assert not res.ok and "rolled back or truncated" in res.reason and "job 2" in res.reason
    assert res.first_bad_line == len(_lines(log)) + 1  # the first missing entry


def test_own_log_rewritten_and_re_signed_with_its_own_key(ran, work):
    collab, _ = ran
    log = _log(work, "p2")
    entries = [json.loads(line) for line in _lines(log)]
    # an entry of the second job, rewritten (its decision), the chain re-signed by p2 itself
    target = next(e["seq"] for e in entries if e["job_counter"] == 2 and e["kind"] == "event")

    def edit(entry):
        if entry["seq"] == target:
            entry["decision"] = "refused:min_cohort"

    _resign(log, collab.identities["p2"], edit)
    assert verify_audit_log(log, collab.identities["p2"].public.signing_key).ok
    report, findings = _check(ran, _dir(work, "p2"))
    ((_, res),) = report.logs
    assert not res.ok and "rewritten and re-signed" in res.reason
    first = res.first_bad_line - 1  # the first entry no held head vouches for
    last_job1 = max(e["seq"] for e in entries if e["job_counter"] == 1)
    assert last_job1 <= first <= target  # from job 1's seal (its certificate names the entry
    # before it), at or before the edit


def test_entries_added_after_the_last_close_are_vouched_by_nobody(ran, work, capsys):
    """An insider appends a job that never happened (an event and a seal), re-signed with the
    company's own key: no certificate vouches for it; `--strict` fails on it."""
    collab, _ = ran
    log = _log(work, "p1")
    lines = _lines(log)
    last = json.loads(lines[-1])
    extra = [
        {**last, "seq": last["seq"] + 1, "job_counter": 3, "kind": "event", "phase": "query.hello"},
        {**last, "seq": last["seq"] + 2, "job_counter": 3, "certificate": {}},
    ]
    extra[0].pop("peer_heads"), extra[0].pop("certificate"), extra[0].update(decision="ok")
    log.write_text("".join(lines) + "".join(json.dumps(e) + "\n" for e in extra))
    _resign(log, collab.identities["p1"], lambda entry: None)
    report, findings = _check(ran, _dir(work, "p1"))
    assert report.ok  # every held head matches: only the new tail is unvouched
    assert report.unvouched == {str(log): (len(lines), len(lines) + 1)}
    agreement = ["--agreement", str(collab.agreement_path)]
    assert main(["audit", "verify", str(_dir(work, "p1")), *agreement]) == 0
    assert f"warning {log}: entries {len(lines)} to {len(lines) + 1} are vouched" in (
        capsys.readouterr().err
    )
    assert main(["audit", "verify", str(_dir(work, "p1")), *agreement, "--strict"]) == 1


def test_the_last_seal_rewritten_is_caught(ran, work):
    collab, _ = ran
    log = _log(work, "p2")
    last_seq = len(_lines(log)) - 1

    def edit(entry):
        if entry["seq"] == last_seq:  # the seal of job 2, without its certificate
            entry["certificate"], entry["detail"] = {}, "refused before the session started"

    _resign(log, collab.identities["p2"], edit)
    report, findings = _check(ran, _dir(work, "p2"))
    ((_, res),) = report.logs
    assert not res.ok and f"entry {last_seq} is not the seal" in res.reason
    assert res.first_bad_line == last_seq + 1
    # and an honest collaboration has nothing unvouched
    report, _ = _check(ran, ran[0].root / "work")
    assert report.ok and not report.unvouched


def test_a_substituted_server_key_is_caught_by_each_party(ran, work):
    collab, _ = ran
    server_log = _log(work, "operator")
    server_log.unlink()
    fake = AuditLog.open(
        server_log, PartyIdentity.generate("operator"), _agreement(ran).terms_hash()
    )
    fake.begin_job(1)
    fake.seal()
    for who in ("lo", "p1"):
        report, findings = _check(ran, _dir(work, who), server_log)
        assert not report.ok
        assert "another key than operator's in the agreement" in findings
    # without the agreement: the party's attested heads are not under the log's key
    report = verify_audit_records([_dir(work, "lo"), server_log])
    bad = dict(report.logs)[str(server_log)]
    assert not bad.ok and "its key did not sign" in bad.reason


def test_a_server_log_rolled_back_is_caught_by_each_party(ran, work):
    _, after_first = ran
    shutil.copyfile(_log(after_first, "operator"), _log(work, "operator"))
    for who in ("lo", "p2"):
        report, findings = _check(ran, _dir(work, who), _log(work, "operator"))
        bad = dict(report.logs)[str(_log(work, "operator"))]
        assert not bad.ok and "rolled back or truncated" in bad.reason
        assert f"parties/{who}/" in bad.reason  # the party's own record names it
    # the genuine server log passes the same check
    report, findings = _check(
        ran, _dir(ran[0].root / "work", "lo"), _log(ran[0].root / "work", "operator")
    )
    assert report.ok, findings


def test_an_edited_certificate_is_refused(ran, work):
    path = certificates_path(_log(work, "p1"))
    text = path.read_text()
    line = json.loads(text.splitlines()[0])
    line["certificate"]["heads"]["p1"]["seq"] += 1
    path.write_text(json.dumps(line) + "\n" + "\n".join(text.splitlines()[1:]) + "\n")
    report, findings = _check(ran, _dir(work, "p1"))
    assert not report.ok and "line 1: the close certificate of job 1 does not verify" in findings


def test_a_second_log_of_one_writer_is_flagged(ran, work):
    shutil.copyfile(_log(work, "p1"), _dir(work, "p1") / "audit-copy.jsonl")
    report, findings = _check(ran, _dir(work, "p1"))
    assert not report.ok and "p1 has 2 logs of this agreement" in findings


def test_the_cli_verifies_one_company_and_names_the_entry(ran, work, capsys):
    collab, after_first = ran
    agreement = ["--agreement", str(collab.agreement_path)]
    assert main(["audit", "verify", str(_dir(work, "p1")), *agreement]) == 0
    out = capsys.readouterr().out
    assert "sealed at job 2" in out and "2 close certificate(s)" in out
    shutil.copyfile(_log(after_first, "p1"), _log(work, "p1"))
    assert main(["audit", "verify", str(_dir(work, "p1")), *agreement]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "rolled back or truncated" in err and "line " in err


# ------------------------------------------------------------------------ refused at run time


def test_a_party_with_a_rolled_back_log_refuses_the_next_job(ran, tmp_path):
    collab, after_first = ran
    work = tmp_path / "work"
    shutil.copytree(collab.root / "work", work)
    log = _log(work, "p1")
    shutil.copyfile(_log(after_first, "p1"), log)  # the log went back; its certificates not
    with pytest.raises(ProtocolAbort, match=r"p1.*\[audit\].*close certificates reach job 2"):
        collab.run(workdir=work, job="train", **FAST)


def test_every_party_refuses_an_operator_whose_log_went_back(ran, tmp_path):
    collab, after_first = ran
    work = tmp_path / "work"
    shutil.copytree(collab.root / "work", work)
    server = _dir(work, "operator")
    for path in server.glob("audit-*"):  # the operator's log and certificates, as after job 1
        shutil.copyfile(_dir(after_first, "operator") / path.name, path)
    with pytest.raises((ProtocolAbort, PolicyViolation), match=r"\[audit\].*numbers this job 2"):
        collab.run(workdir=work, job="train", **FAST)
    decisions = [json.loads(line)["decision"] for line in _lines(_log(work, "lo"))]
    assert decisions[-2:] == ["refused:audit", "sealed"]

"""Audit trail: hash chain, signatures, resume, cross-signing, and every kind of tampering."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from vfm_flower.audit import (
    _ENTRY_DOMAIN,
    TRUNCATED,
    AuditIntegrityError,
    AuditLog,
    entry_hash,
    payload_hash,
    verify_audit_log,
)
from vfm_flower.audit_heads import SignedHead
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.errors import PolicyViolation, SignatureError
from vfm_flower.keys import PartyIdentity

AGREEMENT = "a" * 64


@pytest.fixture(scope="module")
def bank() -> PartyIdentity:
    return PartyIdentity.generate("bank")


@pytest.fixture(scope="module")
def server() -> PartyIdentity:
    return PartyIdentity.generate("server")


def write_run(path: Path, signer: PartyIdentity, *, seal: bool = True) -> AuditLog:
    log = AuditLog.open(path, signer, AGREEMENT)
    log.record("hello", 1, "ok", sizes={"rows": 5000})
    log.record(
        "align",
        2,
        "ok",
        sizes={"ids": 5000, "intersection": 3100},
        bytes_in=160_000,
        bytes_out=160_000,
        payload_hashes=[payload_hash(b"blinded ids")],
    )
    log.record("train", 3, "ok", bytes_out=4096, detail="iteration 1")
    if seal:
        log.seal()
    return log


def signed(signer: PartyIdentity, seq: int, head: str, job: int = 0, terms: str = AGREEMENT):
    return SignedHead.sign(signer, agreement_hash=terms, job_counter=job, seq=seq, head=head)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


# ---------------------------------------------------------------------------- intact logs


def test_intact_log_with_resume_across_reopen(tmp_path: Path, bank, server):
    path = tmp_path / "bank" / "audit.jsonl"
    log = AuditLog.open(path, bank, AGREEMENT)
    first = log.record("hello", 1, "ok", sizes={"rows": 10})
    assert log.head() == (1, first)
    # a fresh process (Flower message) resumes the same log
    again = AuditLog.open(path, bank, AGREEMENT)
    assert again.head() == (1, first)
    again.record("align", 2, "ok")
    third = AuditLog.open(path, bank, AGREEMENT)
    seal = third.seal(peer_heads={"server": signed(server, 3, "b" * 64)})
    assert third.sealed
    res = verify_audit_log(path, expected_key=bank.public.signing_key)
    assert res.ok, res.reason
    assert (res.entries, res.sealed, res.head, res.first_bad_line) == (4, True, (3, seal), None)
    assert res.writer == "bank" and res.agreement_hash == AGREEMENT
    assert res.attested_heads == {"server": [(3, "b" * 64)]}
    genesis = json.loads(lines(path)[0])
    assert genesis["kind"] == "genesis" and genesis["writer"] == "bank"
    assert genesis["prev"] == "0" * 64 and genesis["agreement_hash"] == AGREEMENT
    # a sealed log can be resumed for a new run; it is unsealed until sealed again
    fourth = AuditLog.open(path, bank, AGREEMENT)
    fourth.record("hello", 1, "ok")
    assert not fourth.sealed
    assert verify_audit_log(path).reason == TRUNCATED
    fourth.seal()
    assert verify_audit_log(path).ok


def test_entry_format_has_no_payloads(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    entry = json.loads(lines(path)[2])
    assert set(entry) == {
        "seq", "ts", "kind", "actor", "job_counter", "phase", "round", "decision", "sizes",
        "bytes_in", "bytes_out", "payload_hashes", "detail", "prev", "hash", "sig",
    }  # fmt: skip
    assert entry["payload_hashes"] == [payload_hash(b"blinded ids")]
    assert entry["hash"] == entry_hash(entry)
    assert entry["ts"].endswith("Z")
    assert "blinded ids" not in path.read_text()


def test_two_writers_take_turns(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    a = AuditLog.open(path, bank, AGREEMENT)
    b = AuditLog.open(path, bank, AGREEMENT)
    a.record("x", 1, "ok")
    b.record("y", 1, "ok")  # b first verifies and follows what a appended
    a.seal()
    res = verify_audit_log(path)
    assert res.ok and res.entries == 4


def test_record_refuses_data_shaped_arguments(tmp_path: Path, bank):
    log = AuditLog.open(tmp_path / "audit.jsonl", bank, AGREEMENT)
    with pytest.raises(ValueError, match="sha256"):
        log.record("align", 1, "ok", payload_hashes=["alice@example.com"])
    with pytest.raises(ValueError, match="integer count"):
        log.record("align", 1, "ok", sizes={"ids": "alice"})
    with pytest.raises(ValueError, match="decision"):
        log.record("align", 1, "")
    log.record("align", 1, "ok", detail="x" * 1000)
    assert len(json.loads(lines(log.path)[-1])["detail"]) == 200
    h = log.record_refusal("hello", 1, PolicyViolation("min_intersection", "too small"))
    last = json.loads(lines(log.path)[-1])
    assert last["decision"] == "refused:min_intersection" and last["hash"] == h


def test_head_signatures_are_bound_to_agreement_job_and_writer(bank, server):
    from dataclasses import replace

    head = signed(bank, 3, "c" * 64, job=2)
    head.verify(bank.public)
    assert head.verifies(bank.public.signing_key)
    assert not head.verifies(server.public)
    for changed in (
        replace(head, seq=4),
        replace(head, job_counter=1),  # a head of another job
        replace(head, agreement_hash="b" * 64),  # of another agreement
        replace(head, writer="bank2"),  # presented as another writer's
        replace(head, head="d" * 64),
    ):
        assert not changed.verifies(bank.public)
    with pytest.raises(SignatureError):
        replace(head, seq=4).verify(bank.public)


def test_attest_checks_peer_signature_agreement_and_job(tmp_path: Path, bank, server):
    from dataclasses import replace

    log = AuditLog.open(tmp_path / "server.jsonl", server, AGREEMENT)
    good = signed(bank, 1, "d" * 64)
    with pytest.raises(SignatureError):
        log.attest_peer_head(replace(good, signature=b"\0" * 64), peer_public=bank.public)
    with pytest.raises(ValueError, match="another agreement or job"):
        log.attest_peer_head(signed(bank, 1, "d" * 64, job=3), peer_public=bank.public)
    log.attest_peer_head(good, peer_public=bank.public)


def test_the_job_counter_never_goes_back(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, bank, AGREEMENT)
    assert log.job_counter == 0
    log.begin_job(3)
    log.record("hello", 1, "ok")
    log.seal()
    assert AuditLog.open(path, bank, AGREEMENT).job_counter == 3  # resumed from the log
    for earlier in (3, 2):
        with pytest.raises(AuditIntegrityError, match="not above"):
            log.begin_job(earlier)
    log.begin_job(5)  # a gap is allowed (a job this writer was not reached in)
    log.seal()
    res = verify_audit_log(path)
    assert res.ok and res.job_counter == 5
    # an entry moved back to an earlier job (re-signed by the writer): the counter went back
    ls = lines(path)
    entry = json.loads(ls[-1])
    entry["job_counter"] = 2
    entry["hash"] = entry_hash(entry)
    entry["sig"] = base64.b64encode(
        bank.sign(_ENTRY_DOMAIN + bytes.fromhex(entry["hash"]))
    ).decode()
    rewrite(path, ls[:-1] + [json.dumps(entry) + "\n"])
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == len(ls) and "went back from 5 to 2" in res.reason


def test_a_log_of_the_older_format_is_named(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    rewrite(path, [lines(path)[0].replace("vfm-audit/2", "vfm-audit/1")])
    res = verify_audit_log(path)
    assert res.first_bad_line == 1 and "an older vfm-flower wrote it" in res.reason


# ---------------------------------------------------------------------------- tampering


def test_edited_field_is_a_hash_mismatch(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    ls = lines(path)
    ls[2] = ls[2].replace('"intersection":3100', '"intersection":9999')
    rewrite(path, ls)
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 3 and "hash mismatch" in res.reason
    assert res.entries == 2


def test_edited_field_with_recomputed_hash_has_bad_signature(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    ls = lines(path)
    entry = json.loads(ls[1])
    entry["decision"] = "refused:min_intersection"
    entry["hash"] = entry_hash(entry)
    ls[1] = json.dumps(entry) + "\n"
    rewrite(path, ls)
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 2 and "bad signature" in res.reason


def test_entry_signed_by_another_key(tmp_path: Path, bank):
    """An impostor with the same name writes a well-formed entry: the signature gives it away."""
    path = tmp_path / "audit.jsonl"
    write_run(path, bank, seal=False)
    impostor = PartyIdentity.generate("bank")
    forged = tmp_path / "forged.jsonl"
    AuditLog.open(forged, impostor, AGREEMENT)
    # rebuild one entry continuing the real chain, signed by the impostor
    head_seq, head_hash = verify_audit_log(path).head
    entry = json.loads(lines(path)[-1])
    entry.update(seq=head_seq + 1, prev=head_hash, phase="score", detail="")
    entry["hash"] = entry_hash(entry)
    entry["sig"] = base64.b64encode(
        impostor.sign(_ENTRY_DOMAIN + bytes.fromhex(entry["hash"]))
    ).decode()
    rewrite(path, lines(path) + [json.dumps(entry) + "\n"])
    res = verify_audit_log(path)
    assert res.first_bad_line == 5 and "bad signature" in res.reason
    # the whole log rewritten by another key: caught by the expected key
    res = verify_audit_log(forged, expected_key=bank.public.signing_key)
    assert not res.ok and res.first_bad_line == 1 and "another key" in res.reason


def test_deleted_line(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    ls = lines(path)
    del ls[2]
    rewrite(path, ls)
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 3
    assert "deleted, inserted or reordered" in res.reason


def test_inserted_line(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    ls = lines(path)
    ls.insert(3, ls[1])  # a genuine, signed entry replayed at another place
    rewrite(path, ls)
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 4
    assert "deleted, inserted or reordered" in res.reason


def test_reordered_lines(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    ls = lines(path)
    ls[1], ls[2] = ls[2], ls[1]
    rewrite(path, ls)
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 2
    assert "deleted, inserted or reordered" in res.reason


def test_truncated_end_without_seal(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    rewrite(path, lines(path)[:-2])
    res = verify_audit_log(path)
    assert not res.ok and res.reason == TRUNCATED
    assert res.first_bad_line == 4 and res.entries == 3 and not res.sealed


def test_truncated_inside_a_line_and_garbage(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    res = verify_audit_log(path)
    assert not res.ok and res.first_bad_line == 5 and "incomplete" in res.reason
    path.write_bytes(data + b"\n")
    assert "blank line" in verify_audit_log(path).reason
    path.write_bytes(b"")
    assert verify_audit_log(path).reason.startswith("empty log")
    path.write_bytes(b"[1, 2]\n")
    assert verify_audit_log(path).first_bad_line == 1


def test_truncated_log_whose_head_was_attested(tmp_path: Path, bank, server):
    """Cut back to an earlier seal: intact on its own; the server's attestation shows it."""
    work = tmp_path / "work"
    bank_path = work / "bank" / "audit.jsonl"
    write_run(bank_path, bank)  # run 1, sealed
    keep = len(lines(bank_path))
    log = AuditLog.open(bank_path, bank, AGREEMENT)  # run 2
    log.record("score", 1, "ok")
    log.seal()
    seq, head = log.head()
    server_log = AuditLog.open(work / "server.jsonl", server, AGREEMENT)
    server_log.attest_peer_head(signed(bank, seq, head), peer_public=bank.public)
    server_log.seal()
    assert all(r.ok for _, r in verify_audit_tree(work))

    rewrite(bank_path, lines(bank_path)[:keep])  # drop run 2
    assert verify_audit_log(bank_path).ok  # undetectable from the log alone
    results = dict(verify_audit_tree(work))
    assert results[work / "server.jsonl"].ok
    bad = results[bank_path]
    assert not bad.ok
    assert bad.reason.startswith("rolled back or truncated: the log ends at entry")
    assert f"server.jsonl line {len(lines(work / 'server.jsonl')) - 1} holds" in bad.reason
    assert bad.first_bad_line == keep + 1


def test_attested_head_in_seal_and_unsealed_truncation(tmp_path: Path, bank, server):
    work = tmp_path / "work"
    bank_log = write_run(work / "bank.jsonl", bank, seal=False)
    seq, head = bank_log.head()
    server_log = AuditLog.open(work / "server.jsonl", server, AGREEMENT)
    server_log.seal(peer_heads={"bank": signed(bank, seq, head)})
    bank_log.seal()
    assert all(r.ok for _, r in verify_audit_tree(work))
    rewrite(work / "bank.jsonl", lines(work / "bank.jsonl")[:2])
    bad = dict(verify_audit_tree(work))[work / "bank.jsonl"]
    assert bad.reason.startswith("rolled back or truncated") and bad.first_bad_line == 3


def test_tree_reports_other_problems_per_file(tmp_path: Path, bank, server):
    write_run(tmp_path / "a" / "bank.jsonl", bank)
    write_run(tmp_path / "server.jsonl", server)
    ls = lines(tmp_path / "server.jsonl")
    rewrite(tmp_path / "server.jsonl", ls[:1] + ls[2:])
    results = dict(verify_audit_tree(tmp_path))
    assert results[tmp_path / "a" / "bank.jsonl"].ok
    assert results[tmp_path / "server.jsonl"].first_bad_line == 2
    assert verify_audit_tree(tmp_path / "a" / "bank.jsonl")[0][1].ok
    assert verify_audit_tree(tmp_path / "empty") == []


# ---------------------------------------------------------------------------- resume refusals


def test_open_refuses_tampered_or_foreign_log(tmp_path: Path, bank, server):
    path = tmp_path / "audit.jsonl"
    write_run(path, bank)
    with pytest.raises(AuditIntegrityError, match="another key"):
        AuditLog.open(path, server, AGREEMENT)
    with pytest.raises(AuditIntegrityError, match="agreement"):
        AuditLog.open(path, bank, "b" * 64)
    ls = lines(path)
    del ls[1]
    rewrite(path, ls)
    with pytest.raises(AuditIntegrityError, match="line 2"):
        AuditLog.open(path, bank, AGREEMENT)


def test_append_refuses_log_changed_underneath(tmp_path: Path, bank):
    path = tmp_path / "audit.jsonl"
    log = write_run(path, bank, seal=False)
    rewrite(path, lines(path)[:-1])
    with pytest.raises(AuditIntegrityError, match="shrank"):
        log.record("x", 1, "ok")


def test_crafted_entries_are_findings_not_crashes(tmp_path: Path, bank):
    """Huge numbers, a bad agreement hash or deep nesting, re-signed by the writer: each is a
    named bad line, never an exception."""
    path = tmp_path / "audit.jsonl"
    write_run(path, bank, seal=False)
    good = lines(path)

    def resigned(entry):
        entry["hash"] = entry_hash(entry)
        sig = bank.sign(_ENTRY_DOMAIN + bytes.fromhex(entry["hash"]))
        entry["sig"] = base64.b64encode(sig).decode()
        return json.dumps(entry) + "\n"

    last = json.loads(good[-1])
    attest = {
        **{k: v for k, v in last.items() if k not in ("hash", "sig")},
        "seq": last["seq"] + 1, "prev": last["hash"], "kind": "attest", "peer": "server",
        "peer_seq": 2**64, "peer_head": "b" * 64, "peer_sig": base64.b64encode(bytes(64)).decode(),
    }  # fmt: skip
    rewrite(path, good + [resigned(attest)])
    res = verify_audit_log(path)
    assert res.first_bad_line == len(good) + 1 and "malformed attested head" in res.reason
    for field, value in (("job_counter", 2**63), ("seq", 2**64)):
        entry = {**{k: v for k, v in last.items() if k not in ("hash", "sig")}, field: value}
        rewrite(path, good[:-1] + [resigned(entry)])
        res = verify_audit_log(path)
        assert res.first_bad_line == len(good) and ("range" in res.reason or field == "seq")
    rewrite(path, good + ["[" * 200_000 + "]" * 200_000 + "\n"])
    assert verify_audit_log(path).first_bad_line == len(good) + 1
    genesis = json.loads(good[0])
    genesis["agreement_hash"] = "not hex"
    rewrite(path, [resigned(genesis)])
    assert "agreement hash" in verify_audit_log(path).reason
    assert verify_audit_tree(path)  # and the tree verification reports, not raises

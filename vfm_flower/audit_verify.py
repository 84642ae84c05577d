"""Verifying audit logs together: each log against what the other records hold of it.

:func:`vfm_flower.audit.verify_audit_log` checks one log on its own: its chain, signatures,
job counter and seal. A log that was rolled back to an earlier seal, deleted, or rewritten and
re-signed by its own writer is still a valid chain; what exposes it are the *heads held of it*
elsewhere, each signed by the log's writer for this agreement and job
(:class:`vfm_flower.audit_heads.SignedHead`):

* the ``attest`` entries and seals of the other logs (each party attests the operator's head
  at every close; the operator's seal names every party's sealed head);
* the close certificates (every log's head at each close, countersigned by the operator),
  inside every seal and in each company's certificates file beside its log.

:func:`verify_audit_records` reads every log and certificates file under the given paths and,
for every writer, compares its log with every head held of it:

==================================  ======================================================
finding                             what it proves
==================================  ======================================================
a held head past the log's end      the log was rolled back or truncated behind a close its
                                    writer signed (names the first missing entry)
a held head that differs            the log was rewritten and re-signed after the close
                                    (names the first entry no held head vouches for)
a held head, or a log, under a      a key substitution: with the agreement, every head and
key the agreement does not list     every log must be under the key it lists for its writer
no log of a company whose           the company's own log was deleted (its certificates file
certificates file is here           names it); in a bundle, every signer's log is required
two logs of one writer              a replaced log (one log per agreement and writer)
a certificate that does not         an edited certificate (every head and the operator's
verify                              countersignature are checked against the agreement)
==================================  ======================================================

So one company verifies its own work dir alone (its log against the certificates it holds),
and with a peer's or the operator's log added, that log against the heads the company holds.
What no verifier can see: records rolled back together with every copy of the heads held of
them (a company that deletes its log *and* its certificates is exposed only by its peers'
copies of the same certificates; every company's records rolled back together look like a
collaboration that ran fewer jobs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vfm_flower.agreement import Agreement
from vfm_flower.audit import TRUNCATED, AuditVerification, verify_audit_log
from vfm_flower.audit_heads import (
    CloseCertificate,
    SignedHead,
    certificate_files,
    read_certificates,
)

__all__ = [
    "AuditTreeVerification",
    "HeldHead",
    "audit_log_files",
    "check_logs_against_agreement",
    "verify_audit_records",
    "verify_audit_tree",
]


@dataclass(frozen=True)
class HeldHead:
    """A head of ``signed.writer``'s log held by another record (``source`` says where)."""

    signed: SignedHead
    source: str
    #: the close certificate it comes from, when that is the writer's own (in its
    #: certificates file): it also vouches for the seal that closed the job
    certificate: CloseCertificate | None = None

    @property
    def writer(self) -> str:
        return self.signed.writer


@dataclass(frozen=True)
class AuditTreeVerification:
    """What verifying logs together found.

    Attributes
    ----------
    logs : tuple of (str, AuditVerification)
        Every log checked, by its name (path), with its verdict.
    problems : tuple of str
        Findings that are not one log's (a missing log, a bad certificate...).
    notes : tuple of str
        What was not checked, and why (a peer's log held elsewhere, another agreement's log).
    vouched : dict
        Log name -> how many held heads match it.
    certificates : int
        Close certificates read and verified.
    unvouched : dict
        Log name -> ``(first, last)`` entries that no held record vouches for (with an
        agreement): a job that did not close normally, or entries added or rewritten after
        the last close; its writer alone stands for them.
    """

    logs: tuple[tuple[str, AuditVerification], ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    vouched: Mapping[str, int] | None = None
    certificates: int = 0
    unvouched: Mapping[str, tuple[int, int]] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and all(res.ok for _, res in self.logs)


def audit_log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The audit logs at ``path``: the file itself, or every ``*.jsonl`` under a directory."""
    root = Path(path)
    return [root] if root.is_file() else sorted(p for p in root.rglob("*.jsonl") if p.is_file())


def _fail(res: AuditVerification, line: int, reason: str) -> AuditVerification:
    return replace(res, ok=False, first_bad_line=line, reason=reason)


def check_logs_against_agreement(
    results: Iterable[tuple[str, AuditVerification]], agreement: Agreement
) -> list[tuple[str, AuditVerification]]:
    """Each log records this agreement and is written by a signer, with the key it lists
    (first bad line 1: the genesis names the writer, its key and the agreement)."""
    out = []
    for name, res in results:
        # checked for every log whose genesis was read (also one already failing: a foreign
        # key is the more fundamental finding)
        if res.writer is not None and res.public_key is not None:
            if res.agreement_hash != agreement.terms_hash():
                res = _fail(res, 1, "the log records another agreement")
            elif res.writer not in agreement.signer_names:
                res = _fail(res, 1, f"the log's writer '{res.writer}' does not sign the agreement")
            elif res.public_key != agreement.signer(res.writer).signing_key:
                res = _fail(
                    res,
                    1,
                    f"the log is signed with another key than {res.writer}'s in the agreement "
                    "(re-signed or rebuilt under a fresh key)",
                )
        out.append((name, res))
    return out


def _compare(res: AuditVerification, held: list[HeldHead]) -> tuple[AuditVerification, int, int]:
    """``res`` against every head held of it: (verdict, how many held heads match, the last
    entry they vouch for, -1 if none).

    A head in the writer's own close certificate also vouches for the seal that closed that
    job: the next seal after it (past the operator's attestations) must carry that very
    certificate, so a rewritten or emptied seal is found too.
    """
    hashes, kinds = res.entry_hashes, res.entry_kinds
    sealed_with = {line - 1: cert for line, cert in res.certificates}  # seq -> certificate
    matched = vouched = -1
    count = 0
    for item in sorted(held, key=lambda h: (h.signed.seq, h.source)):
        head = item.signed
        if head.seq >= len(hashes):
            last = len(hashes) - 1
            reason = (
                f"rolled back or truncated: the log ends at entry {last} (job "
                f"{res.job_counter}), but {item.source} holds its entry {head.seq} of job "
                f"{head.job_counter}: entries {last + 1} to {head.seq} are missing"
            )
            return _fail(res, len(hashes) + 1, reason), count, vouched
        if hashes[head.seq] != head.head:
            first = matched + 1
            reason = (
                f"rewritten and re-signed: entry {head.seq} differs from the head "
                f"{item.source} holds (job {head.job_counter}); entry {first} is the first "
                "that no held head vouches for"
            )
            return _fail(res, first + 1, reason), count, vouched
        matched = max(matched, head.seq)
        vouched = max(vouched, head.seq)
        count += 1
        if item.certificate is not None:
            seal = head.seq + 1
            while seal < len(kinds) and kinds[seal] == "attest":
                seal += 1  # the operator attests every party's head before it seals
            if seal < len(kinds):
                cert = sealed_with.get(seal)
                if (
                    kinds[seal] != "seal"
                    or cert is None
                    or cert.to_json() != (item.certificate.to_json())
                ):
                    reason = (
                        f"rewritten and re-signed: entry {seal} is not the seal that carries "
                        f"the close certificate of job {head.job_counter} ({item.source})"
                    )
                    return _fail(res, seal + 1, reason), count, vouched
                vouched = max(vouched, seal)
    return res, count, vouched


def verify_audit_records(
    paths: Iterable[str | os.PathLike[str]],
    agreement: Agreement | None = None,
    *,
    every_signer: bool = False,
    names: Mapping[Path, str] | None = None,
) -> AuditTreeVerification:
    """Verify every log and certificates file under ``paths`` together (see the module
    docstring).

    Parameters
    ----------
    paths : iterable of path-like
        Work dirs, log files (``*.jsonl``) or certificates files (``*.certificates``).
    agreement : Agreement, optional
        The verifier's own copy. With it every log, head and certificate is checked against
        the keys it lists, and logs of other agreements are left aside (noted). Without it
        only chains and the heads held of each log (under that log's own key) are checked.
    every_signer : bool
        Require a log of every signer (a bundle), not only of the certificates' holders.
    names : mapping of Path to str, optional
        How to name each file in findings (default: its path).
    """
    names = dict(names or {})
    paths = [Path(p) for p in paths]
    files = sorted({f for p in paths for f in audit_log_files(p)})
    label = {f: names.get(f, str(f)) for f in files}
    results = {f: verify_audit_log(f) for f in files}
    notes: list[str] = []
    problems: list[str] = []
    keys: dict[str, bytes] | None = None
    if agreement is not None:
        terms = agreement.terms_hash()
        for f in list(files):
            other = results[f].agreement_hash
            if other is not None and other != terms and not every_signer:
                notes.append(f"{label[f]}: a log of another agreement ({other[:16]}), left aside")
                files.remove(f)
                del results[f]
        results = dict(check_logs_against_agreement(results.items(), agreement))
        keys = {n: agreement.signer(n).signing_key for n in agreement.signer_names}

    # the logs of each writer (of one agreement)
    by_writer: dict[tuple[str, str], list[Path]] = {}
    for f in files:
        res = results[f]
        if res.writer is not None and res.agreement_hash is not None:
            by_writer.setdefault((res.writer, res.agreement_hash), []).append(f)
    for (writer, _), logs in sorted(by_writer.items()):
        if len(logs) > 1 and agreement is not None:
            problems.append(
                f"{writer} has {len(logs)} logs of this agreement "
                f"({', '.join(label[f] for f in logs)}): a writer keeps one log per agreement, "
                "a second one replaced or hides the first"
            )

    # every head held of another log: in logs, in the certificates their seals carry, and in
    # certificates files
    held: list[tuple[str, HeldHead]] = []  # (agreement hash, head)
    for f in files:
        res = results[f]
        if res.agreement_hash is None:
            continue
        for att in res.attestations:
            if att.peer != res.writer:
                where = f"{label[f]} line {att.line}"
                held.append(
                    (res.agreement_hash, HeldHead(att.signed_head(res.agreement_hash), where))
                )
        for line, cert in res.certificates:
            if keys is not None and agreement is not None:
                for finding in cert.problems(keys, agreement.operator.name):
                    problems.append(
                        f"{label[f]} line {line}: the close certificate of job "
                        f"{cert.job_counter} does not verify: {finding}"
                    )
    holders: dict[str, str] = {}
    n_certificates = 0
    cert_files = sorted({c for p in paths for c in certificate_files(p)})
    if cert_files and agreement is None:
        notes.append("certificates files need the agreement (--agreement) to be checked")
    for cert_file in cert_files if agreement is not None else []:
        assert keys is not None and agreement is not None
        cname = names.get(cert_file, str(cert_file))
        for item in read_certificates(cert_file):
            where = f"{cname} line {item.line}"
            if item.certificate is None:
                problems.append(f"{where}: {item.error}")
                continue
            cert = item.certificate
            if cert.agreement_hash != agreement.terms_hash():
                notes.append(f"{where}: a certificate of another agreement, left aside")
                continue
            findings = cert.problems(keys, agreement.operator.name)
            if item.holder not in keys:
                findings.append(f"its holder {item.holder!r} does not sign the agreement")
            if findings:
                problems.extend(
                    f"{where}: the close certificate of job {cert.job_counter} does not verify: "
                    f"{finding}"
                    for finding in findings
                )
                continue
            n_certificates += 1
            assert item.holder is not None
            holders.setdefault(item.holder, where)
            for head in cert.heads.values():
                held.append(
                    (
                        cert.agreement_hash,
                        HeldHead(
                            head,
                            f"{where} (close certificate of job {cert.job_counter})",
                            cert if item.holder == head.writer else None,
                        ),
                    )
                )

    # each held head must be signed by its writer's key, then found in the writer's log
    evidence: dict[tuple[str, str], list[HeldHead]] = {}
    for terms_hash, item in held:
        writer = item.writer
        if keys is not None:
            if writer not in keys:
                problems.append(f"{item.source}: holds a head of {writer!r}, not a signer")
                continue
            if not item.signed.verifies(keys[writer]):
                problems.append(
                    f"{item.source}: holds a head of {writer} (entry {item.signed.seq}) that "
                    f"{writer}'s key in the agreement did not sign (a forged or edited record)"
                )
                continue
        else:
            logs = by_writer.get((writer, terms_hash), [])
            if logs and not any(
                results[f].public_key and item.signed.verifies(results[f].public_key or b"")
                for f in logs
            ):
                for f in logs:
                    if results[f].ok or results[f].reason == TRUNCATED:
                        results[f] = _fail(
                            results[f],
                            1,
                            f"{item.source} holds a head of this log that its key did not sign "
                            "(rebuilt under another key, or a forged record: check with the "
                            "agreement)",
                        )
                continue
        evidence.setdefault((writer, terms_hash), []).append(item)

    expected = dict(holders)
    if every_signer and agreement is not None:
        for name in agreement.signer_names:
            expected.setdefault(name, "the bundle")
    for name, why in sorted(expected.items()):
        assert agreement is not None
        if (name, agreement.terms_hash()) in by_writer:
            continue
        heads = evidence.get((name, agreement.terms_hash()), [])
        latest = max(heads, key=lambda h: h.signed.seq, default=None)
        problems.append(
            f"no audit log of {name} here"
            + (
                f", though {latest.source} holds its entry {latest.signed.seq} of job "
                f"{latest.signed.job_counter}"
                if latest is not None
                else f" ({why} needs it)"
            )
            + ": deleted, or not exported"
        )
    vouched: dict[str, int] = {}
    through: dict[Path, int] = {}
    for (writer, terms_hash), heads in sorted(evidence.items()):
        logs = by_writer.get((writer, terms_hash), [])
        if not logs:
            if writer not in expected:
                latest = max(heads, key=lambda h: h.signed.seq)
                notes.append(
                    f"{writer}'s log is not here (heads held of it up to entry "
                    f"{latest.signed.seq}, job {latest.signed.job_counter}): add it to check it"
                )
            continue
        for f in logs:
            res = results[f]
            if not res.ok and res.reason != TRUNCATED:
                continue  # a more fundamental problem is already reported for this log
            results[f], vouched[label[f]], through[f] = _compare(res, heads)
    # entries no held record vouches for: a job that did not close, or entries added since
    unvouched: dict[str, tuple[int, int]] = {}
    for f in files if agreement is not None else []:
        res = results[f]
        last = through.get(f, -1)
        if res.ok and last < res.entries - 1:
            unvouched[label[f]] = (last + 1, res.entries - 1)
    return AuditTreeVerification(
        logs=tuple((label[f], results[f]) for f in files),
        problems=tuple(problems),
        notes=tuple(notes),
        vouched=vouched,
        certificates=n_certificates,
        unvouched=unvouched,
    )


def verify_audit_tree(path: str | os.PathLike[str]) -> list[tuple[Path, AuditVerification]]:
    """Verify every log under ``path`` (a directory or one log) and the heads they hold of
    each other, without an agreement (:func:`verify_audit_records` does more with one).

    Returns
    -------
    list of (Path, AuditVerification)
        Sorted by path; empty if there is no log.
    """
    report = verify_audit_records([path])
    return [(Path(name), res) for name, res in report.logs]

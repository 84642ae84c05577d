"""Audit bundles: one file with the agreement, every log and every close certificate of a
collaboration, verifiable by anyone.

A single company verifies its own log against the certificates it holds
(:mod:`vfm_flower.audit_verify`); an auditor who wants the whole collaboration gets one file:
``vfm audit export`` gathers the logs and certificates files into a ``.tar.gz`` bundle
(``agreement.toml``, ``logs/NAME/FILE.jsonl``, ``logs/NAME/FILE.certificates``,
``manifest.json``), and ``vfm audit verify BUNDLE`` checks

* the agreement: every party and the operator signed these terms;
* every log: its hash chain, signatures and seal (:func:`vfm_flower.audit.verify_audit_log`),
  that it records this agreement, and that its writer is a signer whose key the agreement
  lists (a log re-signed or rebuilt under another key fails here);
* completeness: a log of every signer (a deleted log fails, naming the signer);
* cross-signing: every head held of a log (attested by another log, or in a close
  certificate) is an entry of that log, signed by the key the agreement lists (a log truncated,
  rolled back or rewritten behind a head another company holds fails, naming the entry).

What it cannot see: every log rolled back together to an earlier seal, by someone holding
all of them, looks like a collaboration that ran fewer jobs; each company's own copy of its
log (and of the heads it attested) is the remedy.

Who learns what: the bundle holds the logs, which hold no ids, values, labels or keys (see
:mod:`vfm_flower.audit`), and the agreement.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vfm_flower.agreement import SignedAgreement
from vfm_flower.audit import AuditVerification, verify_audit_log
from vfm_flower.audit_heads import certificates_path, read_certificates
from vfm_flower.audit_verify import audit_log_files, verify_audit_records
from vfm_flower.errors import ConfigurationError
from vfm_flower.files import atomic_write

__all__ = ["BundleVerification", "export_audit_bundle", "verify_audit_bundle", "is_audit_bundle"]

BUNDLE_FORMAT = "vfm-audit-bundle/1"
#: Largest bundle member read (a log of a long collaboration stays far below).
MAX_MEMBER_BYTES = 256 * 1024 * 1024
#: Largest bundle, decompressed, and most members (a bundle beyond them is refused).
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 10_000
_LOG_MEMBER = re.compile(
    r"^logs/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([A-Za-z0-9_.-]+\.(jsonl|certificates))$"
)


@dataclass(frozen=True)
class BundleVerification:
    """What verifying a bundle found: per log, and what the bundle as a whole lacks."""

    logs: tuple[tuple[str, AuditVerification], ...]
    problems: tuple[str, ...]
    #: log name -> (first, last) entries no held record vouches for (see audit_verify)
    unvouched: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(res.ok for _, res in self.logs)


def export_audit_bundle(
    agreement_path: str | os.PathLike[str],
    sources: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
) -> Path:
    """Write the bundle of ``agreement_path`` and every audit log under ``sources`` (work dirs
    or log files) to ``out`` (atomically). Only logs of this agreement are taken.

    Raises
    ------
    ConfigurationError
        No log of the agreement under ``sources``, or ``out`` cannot be written.
    """
    signed = SignedAgreement.load(agreement_path)
    terms_hash = signed.terms_hash()
    logs: dict[str, bytes] = {}
    for source in sources:
        for path in audit_log_files(source):
            res = verify_audit_log(path)
            if res.agreement_hash != terms_hash or res.writer is None:
                continue  # another agreement's log (or not a log): not part of this bundle
            name = f"logs/{res.writer}/{path.name}"
            if not _LOG_MEMBER.match(name):
                raise ConfigurationError(
                    f"{path}: its writer {res.writer!r} or its file name cannot be a party's "
                    "(a planted log?): move it out of the sources"
                )
            data = path.read_bytes()
            if logs.get(name, data) != data:
                raise ConfigurationError(f"two different logs of {res.writer} named {path.name}")
            logs[name] = data
            # the writer's certificates file, beside its log: the heads of every log it holds
            certs = certificates_path(path)
            held = [c for c in read_certificates(certs)] if certs.is_file() else []
            if any(c.certificate and c.certificate.agreement_hash == terms_hash for c in held):
                logs[f"logs/{res.writer}/{certs.name}"] = certs.read_bytes()
    if not logs:
        raise ConfigurationError(f"no audit log of agreement {terms_hash[:16]} under the sources")
    manifest = {
        "format": BUNDLE_FORMAT,
        "agreement_hash": terms_hash,
        "logs": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(logs.items())},
    }
    members = {
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode(),
        "agreement.toml": Path(agreement_path).read_bytes(),
        **logs,
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return atomic_write(out, archive.getvalue())


def is_audit_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that ``tarfile`` can open (a bundle, or refused as one)."""
    path = Path(path)
    return path.is_file() and tarfile.is_tarfile(path)


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member, or a refusal: only regular files named exactly ``manifest.json``,
    ``agreement.toml`` or ``logs/NAME/FILE.jsonl``, each once, within the size limits (what
    is verified is then exactly what ``tar`` would extract)."""
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                name = info.name
                expected = name in ("manifest.json", "agreement.toml") or _LOG_MEMBER.match(name)
                if not info.isfile() or not expected or name in members:
                    raise ConfigurationError(
                        f"{path}: bundle member {name!r} refused (only regular files "
                        "manifest.json, agreement.toml and logs/NAME/FILE.jsonl, each once)"
                    )
                total += info.size
                if info.size > MAX_MEMBER_BYTES or total > MAX_BUNDLE_BYTES:
                    raise ConfigurationError(f"{path}: the bundle exceeds its size limits")
                if len(members) >= MAX_MEMBERS:
                    raise ConfigurationError(f"{path}: more than {MAX_MEMBERS} members")
                handle = tar.extractfile(info)
                members[name] = handle.read(MAX_MEMBER_BYTES + 1) if handle else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ConfigurationError(f"{path} is not a readable audit bundle: {exc}") from exc
    return members


def verify_audit_bundle(path: str | os.PathLike[str], expected_hash: str) -> BundleVerification:
    """Verify a bundle written by :func:`export_audit_bundle` (see the module docstring)
    against the terms hash of the verifier's own copy of the agreement: a bundle's own
    agreement proves nothing by itself (anyone can draft and sign one under the same names).

    Raises
    ------
    ConfigurationError
        The file is not a bundle (no manifest or agreement, another format).
    """
    path = Path(path)
    members = _read_members(path)
    try:
        manifest = json.loads(members["manifest.json"])
        text = members["agreement.toml"].decode("utf-8")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: no manifest.json or agreement.toml inside") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ConfigurationError(f"{path}: not a {BUNDLE_FORMAT} bundle")
    signed = SignedAgreement.from_toml(text, source=f"{path}:agreement.toml")
    agreement = signed.agreement
    problems = []
    expected = expected_hash.strip().lower()
    if agreement.terms_hash() != expected or manifest.get("agreement_hash") != expected:
        problems.append(
            f"the bundle is for agreement terms {agreement.terms_hash()}, not {expected}: "
            "another agreement (or one drafted under the same names)"
        )
    unsigned = [n for n in agreement.signer_names if n not in signed.signed_by()]
    if unsigned:
        problems.append(f"the agreement lacks a valid signature of {', '.join(unsigned)}")
    listed = dict(manifest.get("logs", {}))
    logs = {n: d for n, d in members.items() if n.startswith("logs/")}
    for name in sorted(set(listed) | set(logs)):
        if name not in logs:
            problems.append(f"{name} is listed in the manifest but missing from the bundle")
        elif hashlib.sha256(logs[name]).hexdigest() != listed.get(name):
            problems.append(f"{name} differs from the manifest (changed after export)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, data in logs.items():
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot unpack its logs: {exc}") from exc
        root = Path(tmp) / "logs"
        names = {root / n.removeprefix("logs/"): n for n in logs}
        report = verify_audit_records(
            [root] if logs else [], agreement, every_signer=True, names=names
        )
    problems.extend(report.problems)
    if not logs:
        problems.append("the bundle holds no audit log")
    return BundleVerification(report.logs, tuple(problems), dict(report.unvouched or {}))

"""Signed audit heads and close certificates: what one company holds of every other's log.

A log's *head* is ``(seq, hash)`` of its last entry. A :class:`SignedHead` is a head signed
by the log's writer, bound to the agreement, the job counter and the writer's name (a head
signed for one agreement or one job cannot be presented for another).

At the close of every job, the operator gathers the signed head of every log of the
collaboration (every party's and its own) into a :class:`CloseCertificate`, signs it and
sends it to every party. Each company keeps it twice: inside its own log (the seal entry) and
in a *certificates file* beside the log (``audit-HASH.certificates``, one JSON line per job).
The file is the evidence that survives a rollback or a deletion of the log: it holds heads of
the company's own log signed by the company *and* countersigned by the operator, so an insider
who rewrites, re-signs, rolls back or deletes the log cannot make it agree with the file
without the operator's key. Keep a copy of the file where the log's custodians cannot write
(deleting both is detected only by the peers, who hold the same certificate).

Who learns what: heads are hashes of log entries, which hold no data (see
:mod:`vfm_flower.audit`); a certificate adds only names, job counters and signatures.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vfm_flower.errors import SignatureError
from vfm_flower.keys import PublicIdentity

try:  # POSIX advisory locks: appends of one company's processes take turns
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SignedHead",
    "CloseCertificate",
    "HeldCertificate",
    "append_certificate",
    "read_certificates",
    "certificates_path",
    "certificate_files",
    "last_certified_job",
]

CERTIFICATE_FORMAT = "vfm-close-certificate/1"
_HEAD_DOMAIN = b"vfm-flower/v2/audit-head\x00"
_CERT_DOMAIN = b"vfm-flower/v1/close-certificate\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_CERTIFICATE_LINE = 64 * 1024


class _Signer(Protocol):
    @property
    def party(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _verify(key: PublicIdentity | bytes, signature: bytes, message: bytes) -> bool:
    raw = key.signing_key if isinstance(key, PublicIdentity) else key
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits")
    return value


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class SignedHead:
    """Entry ``seq`` (hash ``head``) of ``writer``'s log in job ``job_counter``, signed by
    ``writer`` for the agreement ``agreement_hash``."""

    writer: str
    agreement_hash: str
    job_counter: int
    seq: int
    head: str
    signature: bytes

    def __post_init__(self) -> None:
        _check_hex(self.agreement_hash, "an agreement hash")
        _check_hex(self.head, "a head hash")
        _check_count(self.seq, "a head's sequence number")
        _check_count(self.job_counter, "a job counter")

    @staticmethod
    def message(writer: str, agreement_hash: str, job_counter: int, seq: int, head: str) -> bytes:
        """The signed bytes: domain, agreement, job counter, writer, seq, head."""
        name = writer.encode("utf-8")
        return (
            _HEAD_DOMAIN
            + bytes.fromhex(_check_hex(agreement_hash, "an agreement hash"))
            + struct.pack(">QQ", job_counter, seq)
            + struct.pack(">H", len(name))
            + name
            + bytes.fromhex(_check_hex(head, "a head hash"))
        )

    @classmethod
    def sign(
        cls, signer: _Signer, *, agreement_hash: str, job_counter: int, seq: int, head: str
    ) -> SignedHead:
        """Sign the head of ``signer``'s own log."""
        data = cls.message(signer.party, agreement_hash, job_counter, seq, head)
        return cls(signer.party, agreement_hash, job_counter, seq, head, signer.sign(data))

    def verifies(self, key: PublicIdentity | bytes) -> bool:
        """Whether ``key`` (the writer's) signed this head."""
        data = self.message(self.writer, self.agreement_hash, self.job_counter, self.seq, self.head)
        return _verify(key, self.signature, data)

    def verify(self, key: PublicIdentity | bytes) -> None:
        """Raise ``SignatureError`` unless ``key`` signed this head."""
        if not self.verifies(key):
            raise SignatureError(
                f"the audit head of {self.writer} (entry {self.seq}, job {self.job_counter}) "
                "is not signed by its key"
            )

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "head": self.head, "sig": _b64(self.signature)}

    @classmethod
    def from_json(
        cls, obj: Any, *, writer: str, agreement_hash: str, job_counter: int
    ) -> SignedHead:
        """Parse ``{"seq", "head", "sig"}``; ``ValueError`` if malformed."""
        if not isinstance(obj, Mapping) or set(obj) != {"seq", "head", "sig"}:
            raise ValueError("a signed head is an object with seq, head and sig")
        try:
            signature = base64.b64decode(str(obj["sig"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a head signature is not base64") from exc
        return cls(writer, agreement_hash, job_counter, obj["seq"], obj["head"], signature)


@dataclass(frozen=True)
class CloseCertificate:
    """Every log's signed head at the close of one job, countersigned by the operator.

    ``heads`` maps each writer (every party and the operator) to its head.
    """

    agreement_hash: str
    job_counter: int
    heads: Mapping[str, SignedHead]
    operator_signature: bytes = b""

    def __post_init__(self) -> None:
        for name, head in self.heads.items():
            if (head.writer, head.agreement_hash, head.job_counter) != (
                name,
                self.agreement_hash,
                self.job_counter,
            ):
                raise ValueError(f"the head listed for {name} is not {name}'s for this job")

    def signing_bytes(self) -> bytes:
        """What the operator signs: the agreement, the job counter and every head."""
        body = {
            "format": CERTIFICATE_FORMAT,
            "agreement_hash": self.agreement_hash,
            "job_counter": self.job_counter,
            "heads": {n: h.to_json() for n, h in sorted(self.heads.items())},
        }
        return _CERT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed_by(self, operator: _Signer) -> CloseCertificate:
        """This certificate with the operator's signature."""
        return CloseCertificate(
            self.agreement_hash,
            self.job_counter,
            dict(self.heads),
            operator.sign(self.signing_bytes()),
        )

    def problems(self, signers: Mapping[str, PublicIdentity | bytes], operator: str) -> list[str]:
        """What is wrong with this certificate for a collaboration whose signers' keys are
        ``signers`` (name -> key, the agreement's) and whose operator is ``operator``; empty
        if it is genuine and names every log."""
        found = []
        if set(self.heads) != set(signers):
            missing = sorted(set(signers) - set(self.heads))
            extra = sorted(set(self.heads) - set(signers))
            found.append(
                "it does not name every log of the collaboration"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(extra)})" if extra else "")
            )
        if operator not in signers or not _verify(
            signers[operator], self.operator_signature, self.signing_bytes()
        ):
            found.append(f"it is not signed by the operator {operator}")
        for name, head in sorted(self.heads.items()):
            if name in signers and not head.verifies(signers[name]):
                found.append(f"the head of {name} is not signed by {name}'s key")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CERTIFICATE_FORMAT,
            "agreement_hash": self.agreement_hash,
            "job_counter": self.job_counter,
            "heads": {n: h.to_json() for n, h in sorted(self.heads.items())},
            "operator_sig": _b64(self.operator_signature),
        }

    @classmethod
    def from_json(cls, obj: Any) -> CloseCertificate:
        """Parse :meth:`to_json`'s output; ``ValueError`` if malformed."""
        if not isinstance(obj, Mapping) or obj.get("format") != CERTIFICATE_FORMAT:
            raise ValueError(f"not a {CERTIFICATE_FORMAT} certificate")
        if set(obj) != {"format", "agreement_hash", "job_counter", "heads", "operator_sig"}:
            raise ValueError("a close certificate's fields were changed")
        agreement_hash = _check_hex(obj["agreement_hash"], "an agreement hash")
        job = _check_count(obj["job_counter"], "a job counter")
        heads_obj = obj["heads"]
        if not isinstance(heads_obj, Mapping):
            raise ValueError("a certificate's heads must be an object")
        heads = {
            str(name): SignedHead.from_json(
                head, writer=str(name), agreement_hash=agreement_hash, job_counter=job
            )
            for name, head in heads_obj.items()
        }
        try:
            signature = base64.b64decode(str(obj["operator_sig"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("the operator signature is not base64") from exc
        return cls(agreement_hash, job, heads, signature)


# ----------------------------------------------------------------------------------------------
# the certificates file
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldCertificate:
    """One line of a certificates file: the certificate (or why it could not be read)."""

    path: Path
    line: int
    holder: str | None
    certificate: CloseCertificate | None
    error: str = ""


def certificates_path(log_path: str | os.PathLike[str]) -> Path:
    """The certificates file kept beside an audit log (``audit-HASH.certificates``)."""
    path = Path(log_path)
    return path.with_name(path.stem + ".certificates")


def append_certificate(
    path: str | os.PathLike[str], holder: str, certificate: CloseCertificate
) -> None:
    """Append ``certificate`` to the holder's certificates file (locked, flushed, fsync'ed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"holder": holder, "certificate": certificate.to_json()}, sort_keys=True)
    with path.open("ab") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write(line.encode("ascii") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_certificates(path: str | os.PathLike[str]) -> Iterator[HeldCertificate]:
    """Every line of a certificates file, parsed (not verified: see
    :meth:`CloseCertificate.problems`); a line that cannot be parsed carries ``error``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield HeldCertificate(path, 0, None, None, f"cannot read: {exc.strerror or exc}")
        return
    for number, raw in enumerate(data.splitlines(), start=1):
        holder: str | None = None
        try:
            if len(raw) > MAX_CERTIFICATE_LINE:
                raise ValueError("line too long")
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict) or set(obj) != {"holder", "certificate"}:
                raise ValueError("not a certificate line")
            holder = str(obj["holder"])
            item = HeldCertificate(
                path, number, holder, CloseCertificate.from_json(obj["certificate"])
            )
        except (ValueError, UnicodeDecodeError, TypeError, RecursionError) as exc:
            item = HeldCertificate(path, number, holder, None, f"unreadable ({exc})")
        yield item


def last_certified_job(path: str | os.PathLike[str], agreement_hash: str) -> int:
    """The highest job counter of this agreement's certificates in a certificates file (0 if
    none; lines that cannot be read are skipped: :mod:`vfm_flower.audit_verify` reports them)."""
    if not Path(path).is_file():
        return 0
    return max(
        (
            item.certificate.job_counter
            for item in read_certificates(path)
            if item.certificate is not None and item.certificate.agreement_hash == agreement_hash
        ),
        default=0,
    )


def certificate_files(path: str | os.PathLike[str]) -> list[Path]:
    """The certificates files at ``path`` (the file itself, or every one under a directory)."""
    root = Path(path)
    if root.is_file():
        return [root] if root.suffix == ".certificates" else []
    return sorted(p for p in root.rglob("*.certificates") if p.is_file())

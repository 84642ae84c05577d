"""Tamper-evident audit trail: an append-only, hash-chained, signed JSON-lines log.

One log per writer (a party, or the server under the operator's key) and agreement. The
format of an entry, and verifying one log, are :mod:`vfm_flower.audit_chain`; the heads and
close certificates one log holds of the others, :mod:`vfm_flower.audit_heads`; verifying
logs together, :mod:`vfm_flower.audit_verify`. This module writes: :class:`AuditLog` creates
or resumes a log, appends events, attestations and seals, and never rewrites a line.

What the log never contains: ids, feature values, labels, scores or keys (only the writer's
*public* key). Payloads appear as SHA-256 hashes and byte counts; ``detail`` is short free
text that callers must keep free of data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from vfm_flower.audit_chain import (  # noqa: F401 - the format's names, re-exported
    _ENTRY_DOMAIN,
    _HEX64,
    GENESIS_PREV,
    LOG_FORMAT,
    MAX_DETAIL,
    TRUNCATED,
    Attestation,
    AuditVerification,
    _b64,
    _Bad,
    _Chain,
    _split_lines,
    _unb64,
    _verify_bytes,
    _verify_entry_sig,
    entry_hash,
    payload_hash,
    verify_audit_log,
)
from vfm_flower.audit_heads import (
    CloseCertificate,
    SignedHead,
    append_certificate,
    certificates_path,
    last_certified_job,
)
from vfm_flower.errors import PolicyViolation, VfmError
from vfm_flower.keys import PublicIdentity
from vfm_flower.privacy import PrivacyCost, total_spent

#: The phase of the audit events that charge the privacy budget (decision ``charged``).
PRIVACY_PHASE = "privacy"


def event_details_of(data: bytes, *, phase: str, decision: str) -> list[str]:
    """The ``detail`` texts of the events with ``phase`` and ``decision`` in a log's bytes
    (read them from a verified log)."""
    out = []
    for _, raw in _split_lines(data):
        entry = json.loads(raw.decode("utf-8"))
        if (entry.get("kind"), entry.get("phase"), entry.get("decision")) == (
            "event",
            phase,
            decision,
        ):
            out.append(str(entry.get("detail", "")))
    return out


try:  # POSIX advisory locks: several Flower processes of one party may append in turn.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class AuditIntegrityError(VfmError):
    """An audit log cannot be opened for appending: it is not intact or not this writer's."""


class AuditSigner(Protocol):
    """What a log writer needs: a name, a signing function and its public identity."""

    @property
    def party(self) -> str: ...

    @property
    def public(self) -> PublicIdentity: ...

    def sign(self, data: bytes) -> bytes: ...


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    handle = path.open("a+b")
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield handle
    finally:
        handle.close()  # closing releases the lock


class AuditLog:
    """Append-only writer of one signed, hash-chained audit log.

    Use :meth:`open`: it creates the log with its genesis entry, or resumes an existing log
    after verifying it (each Flower message may be a fresh process appending to the same log).
    Appends take an exclusive advisory lock and first verify whatever another process appended
    since, so several processes of the same writer can take turns.
    """

    def __init__(
        self, path: Path, signer: AuditSigner, agreement_hash: str, chain: _Chain, size: int
    ) -> None:
        self._path = path
        self._signer = signer
        self._agreement_hash = agreement_hash
        self._chain = chain
        self._size = size

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], signer: AuditSigner, agreement_hash: str
    ) -> AuditLog:
        """Create or resume the log at ``path`` for ``signer``.

        Raises
        ------
        AuditIntegrityError
            If an existing log does not verify, was written by another writer or key, or
            belongs to another agreement.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        public_key = signer.public.signing_key
        with _locked(path) as handle:
            handle.seek(0)
            data = handle.read()
            chain, bad = _verify_bytes(data, public_key)
            if bad is not None:
                raise AuditIntegrityError(
                    f"audit log {path} is not intact (line {bad.line}: {bad.reason}): refusing "
                    "to append; keep it as evidence and start a new log"
                )
            log = cls(path, signer, agreement_hash, chain, len(data))
            if chain.entries == 0:
                log._append(
                    handle,
                    "genesis",
                    phase="open",
                    round=0,
                    decision="ok",
                    extra={
                        "format": LOG_FORMAT,
                        "writer": signer.party,
                        "public_key": _b64(public_key),
                        "agreement_hash": agreement_hash,
                    },
                )
            else:
                if chain.writer != signer.party:
                    raise AuditIntegrityError(
                        f"audit log {path} belongs to '{chain.writer}', not '{signer.party}'"
                    )
                if chain.agreement_hash != agreement_hash:
                    raise AuditIntegrityError(
                        f"audit log {path} records agreement {str(chain.agreement_hash)[:16]}..., "
                        f"not {agreement_hash[:16]}...: use a new log per agreement"
                    )
        return log

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def writer(self) -> str:
        """The writer's name."""
        return self._signer.party

    @property
    def sealed(self) -> bool:
        """Whether the last entry is a seal."""
        return self._chain.last_kind == "seal"

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry."""
        head = self._chain.head
        assert head is not None
        return head

    @property
    def agreement_hash(self) -> str:
        """The agreement this log records."""
        return self._agreement_hash

    @property
    def job_counter(self) -> int:
        """The job counter of the last entry (0 before the first job)."""
        return self._chain.job_counter

    @property
    def certificates_path(self) -> Path:
        """The writer's certificates file, beside the log (``audit-HASH.certificates``)."""
        return certificates_path(self._path)

    def last_certified_job(self) -> int:
        """The highest job counter of this agreement's close certificates the writer keeps."""
        return last_certified_job(self.certificates_path, self._agreement_hash)

    def keep_certificate(self, certificate: CloseCertificate) -> None:
        """Append a job's close certificate to the writer's certificates file."""
        append_certificate(self.certificates_path, self.writer, certificate)

    def signed_head(self) -> SignedHead:
        """The current head, signed by this log's writer for its agreement and job."""
        seq, head = self.head()
        return SignedHead.sign(
            self._signer,
            agreement_hash=self._agreement_hash,
            job_counter=self.job_counter,
            seq=seq,
            head=head,
        )

    def begin_job(self, job_counter: int, *, round: int = 0, detail: str = "") -> str:
        """Start job ``job_counter`` (above every earlier one): later entries carry it.

        Raises
        ------
        AuditIntegrityError
            If the counter is not above the log's (a counter never goes back).
        """
        if isinstance(job_counter, bool) or not isinstance(job_counter, int):
            raise ValueError("a job counter must be an integer")
        with _locked(self._path) as handle:
            self._sync(handle)
            if job_counter <= self._chain.job_counter:
                raise AuditIntegrityError(
                    f"job counter {job_counter} is not above this log's ({self._chain.job_counter})"
                )
            return self._append(
                handle,
                "event",
                phase="job",
                round=round,
                decision="begin",
                detail=str(detail)[:MAX_DETAIL],
                job_counter=job_counter,
            )

    def _sync(self, handle: IO[bytes]) -> None:
        """Verify what other processes appended since we last looked (lock held)."""
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == self._size:
            return
        if size < self._size:
            raise AuditIntegrityError(
                f"audit log {self._path} shrank while open (truncated by someone): refusing "
                "to append"
            )
        handle.seek(self._size)
        data = handle.read(size - self._size)
        first_line = self._chain.entries + 1
        try:
            for line_no, raw in _split_lines(data, first_line):
                self._chain.feed(line_no, raw)
        except _Bad as bad:
            raise AuditIntegrityError(
                f"audit log {self._path} is not intact (line {bad.line}: {bad.reason}): "
                "refusing to append"
            ) from None
        self._size = size

    def _append(
        self,
        handle: IO[bytes],
        kind: str,
        *,
        phase: str,
        round: int,
        decision: str,
        sizes: Mapping[str, int] | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        payload_hashes: Iterable[str] = (),
        detail: str = "",
        extra: Mapping[str, Any] | None = None,
        job_counter: int | None = None,
    ) -> str:
        self._sync(handle)
        entry: dict[str, Any] = {
            "seq": self._chain.entries,
            "ts": _utc_now(),
            "kind": kind,
            "actor": self._signer.party,
            "job_counter": self._chain.job_counter if job_counter is None else job_counter,
            "phase": str(phase),
            "round": int(round),
            "decision": str(decision),
            "sizes": {str(k): int(v) for k, v in sorted((sizes or {}).items())},
            "bytes_in": int(bytes_in),
            "bytes_out": int(bytes_out),
            "payload_hashes": list(payload_hashes),
            "detail": detail,
            "prev": self._chain.head_hash,
        }
        entry.update(extra or {})
        digest = entry_hash(entry)
        entry["hash"] = digest
        entry["sig"] = _b64(self._signer.sign(_ENTRY_DOMAIN + bytes.fromhex(digest)))
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
        if not _verify_entry_sig(self._signer.public.signing_key, digest, _unb64(entry["sig"])):
            raise AuditIntegrityError(
                f"cannot write audit entry: the signer's signature does not match its public key "
                f"({self._signer.party})"
            )
        handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()
        self._size += len(line)
        try:  # follow our own entry exactly as a verifier will
            self._chain.feed(self._chain.entries + 1, line[:-1])
        except _Bad as bad:  # pragma: no cover - only a broken signer gets here
            raise AuditIntegrityError(f"audit entry written but not valid: {bad.reason}") from None
        return digest

    def record(
        self,
        phase: str,
        round: int,
        decision: str,
        *,
        sizes: Mapping[str, int] | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        payload_hashes: Iterable[str] = (),
        detail: str = "",
    ) -> str:
        """Append one event and return its hash.

        Parameters
        ----------
        phase : str
            Protocol phase (``"hello"``, ``"align"``, ``"train"``...).
        round : int
            Message round within the run.
        decision : str
            ``"ok"``, ``"refused:<rule>"``, ``"abort"``...
        sizes : mapping of str to int, optional
            Counts only (rows, ids, features...).
        bytes_in, bytes_out : int
            Payload sizes received and sent.
        payload_hashes : iterable of str
            SHA-256 hex digests of payloads (:func:`payload_hash`), never the payloads.
        detail : str
            Short free text without data; cut at 200 characters.
        """
        if not isinstance(decision, str) or not decision:
            raise ValueError("an audit decision must be a non-empty string")
        hashes = list(payload_hashes)
        for h in hashes:
            if not isinstance(h, str) or not _HEX64.match(h):
                raise ValueError(
                    "payload_hashes must be sha256 hex digests (use audit.payload_hash(bytes)), "
                    "never payloads"
                )
        for key, value in (sizes or {}).items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"audit size {key!r} must be an integer count")
        detail = str(detail)
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
        with _locked(self._path) as handle:
            return self._append(
                handle,
                "event",
                phase=phase,
                round=round,
                decision=decision,
                sizes=sizes,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                payload_hashes=hashes,
                detail=detail,
            )

    def count_events(self, *, phase: str, decision: str) -> int:
        """How many events of this (verified) log have ``phase`` and ``decision``."""
        return len(self.event_details(phase=phase, decision=decision))

    def event_details(self, *, phase: str, decision: str) -> list[str]:
        """The ``detail`` texts of this (verified) log's events with ``phase`` and
        ``decision`` (the privacy budget's charges: :mod:`vfm_flower.privacy`)."""
        with _locked(self._path) as handle:
            self._sync(handle)
            handle.seek(0)
            return event_details_of(handle.read(), phase=phase, decision=decision)

    def charge_privacy(
        self, round: int, decide: Callable[[PrivacyCost], PrivacyCost]
    ) -> PrivacyCost:
        """Charge the privacy budget atomically: with the log locked, ``decide(spent)``
        returns the job's cost (or raises, refusing it) and a non-zero cost is appended, so
        two jobs running at once can never both spend the last of the budget."""
        with _locked(self._path) as handle:
            self._sync(handle)
            handle.seek(0)
            details = event_details_of(handle.read(), phase=PRIVACY_PHASE, decision="charged")
            cost = decide(total_spent(details))
            if not cost.is_free:
                self._append(
                    handle,
                    "event",
                    phase=PRIVACY_PHASE,
                    round=round,
                    decision="charged",
                    detail=cost.to_detail(),
                )
        return cost

    def record_refusal(self, phase: str, round: int, violation: PolicyViolation) -> str:
        """Append a ``"refused:<rule>"`` event for a policy violation."""
        return self.record(phase, round, f"refused:{violation.rule}")

    def attest_peer_head(
        self,
        head: SignedHead,
        *,
        peer_public: PublicIdentity | bytes,
        phase: str = "attest",
        round: int = 0,
    ) -> str:
        """Record another writer's log head, signed by that writer for this agreement and this
        log's current job (cross-signing).

        Raises
        ------
        SignatureError
            If ``peer_public`` did not sign ``head``.
        ValueError
            If the head is for another agreement or job.
        """
        if (head.agreement_hash, head.job_counter) != (self._agreement_hash, self.job_counter):
            raise ValueError(
                f"the head of {head.writer} is for another agreement or job than this log's"
            )
        head.verify(peer_public)
        with _locked(self._path) as handle:
            return self._append(
                handle,
                "attest",
                phase=phase,
                round=round,
                decision="ok",
                extra={
                    "peer": head.writer,
                    "peer_seq": head.seq,
                    "peer_head": head.head,
                    "peer_sig": _b64(head.signature),
                },
            )

    def seal(
        self,
        peer_heads: Mapping[str, SignedHead] | None = None,
        *,
        certificate: CloseCertificate | None = None,
        round: int = 0,
        detail: str = "",
    ) -> str:
        """Append the closing entry of a job: optionally the heads of peers' logs (signed, for
        this agreement and job) and the job's close certificate."""
        heads: dict[str, Any] = {}
        for peer, head in sorted((peer_heads or {}).items()):
            if (head.writer, head.agreement_hash, head.job_counter) != (
                peer,
                self._agreement_hash,
                self.job_counter,
            ):
                raise ValueError(f"the head of {peer} is not {peer}'s for this agreement and job")
            heads[str(peer)] = head.to_json()
        if certificate is not None and (certificate.agreement_hash, certificate.job_counter) != (
            self._agreement_hash,
            self.job_counter,
        ):
            raise ValueError("the close certificate is for another agreement or job")
        with _locked(self._path) as handle:
            return self._append(
                handle,
                "seal",
                phase="seal",
                round=round,
                decision="sealed",
                detail=str(detail)[:MAX_DETAIL],
                extra={
                    "peer_heads": heads,
                    "certificate": certificate.to_json() if certificate is not None else {},
                },
            )

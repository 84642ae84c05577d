"""Tamper-evident audit trail: an append-only, hash-chained, signed JSON-lines log.

One log per writer (a party, or the server with its own key). Each line is one JSON object::

    {"seq": 3, "ts": "2025-05-01T12:00:00.123456Z", "kind": "event", "actor": "bank",
     "phase": "align", "round": 2, "decision": "ok", "sizes": {"ids": 5000},
     "bytes_in": 1234, "bytes_out": 4321, "payload_hashes": ["<sha256 hex>"],
     "detail": "", "prev": "<hash of entry 2>", "hash": "<sha256 hex>", "sig": "<base64>"}

- ``hash`` is SHA-256 over the canonical JSON (sorted keys, compact, ASCII) of the entry
  without ``hash`` and ``sig``; ``prev`` is the previous entry's hash (a fixed genesis value for
  the first entry); ``sig`` is the writer's Ed25519 signature over the hash (domain-separated).
- The first entry (``kind = "genesis"``) names the writer, its Ed25519 public key and the
  agreement hash; every later entry must be signed by that key.
- ``kind = "attest"`` records another log's head ``(seq, hash)`` signed by that log's writer
  (cross-signing): the other log must contain that exact entry, or it was truncated or
  rewritten. ``kind = "seal"`` closes a run; a log whose last entry is not a seal is reported
  as possibly truncated.

What the log never contains: ids, feature values, labels, scores or keys (only the writer's
*public* key). Payloads appear as SHA-256 hashes and byte counts; ``detail`` is short free
text that callers must keep free of data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vfm_flower.errors import PolicyViolation, SignatureError, VfmError
from vfm_flower.keys import PublicIdentity

try:  # POSIX advisory locks: several Flower processes of one party may append in turn.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOG_FORMAT = "vfm-audit/1"
GENESIS_PREV = "0" * 64
MAX_DETAIL = 200
TRUNCATED = "truncated: no closing entry"

_ENTRY_DOMAIN = b"vfm-flower/v1/audit-entry\x00"
_HEAD_DOMAIN = b"vfm-flower/v1/audit-head\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BASE_FIELDS = {
    "seq": int,
    "ts": str,
    "kind": str,
    "actor": str,
    "phase": str,
    "round": int,
    "decision": str,
    "sizes": dict,
    "bytes_in": int,
    "bytes_out": int,
    "payload_hashes": list,
    "detail": str,
    "prev": str,
    "hash": str,
    "sig": str,
}
_KIND_FIELDS: dict[str, dict[str, type]] = {
    "genesis": {"format": str, "writer": str, "public_key": str, "agreement_hash": str},
    "event": {},
    "attest": {"peer": str, "peer_seq": int, "peer_head": str, "peer_sig": str},
    "seal": {"peer_heads": dict},
}


class AuditIntegrityError(VfmError):
    """An audit log cannot be opened for appending: it is not intact or not this writer's."""


class AuditSigner(Protocol):
    """What a log writer needs: a name, a signing function and its public identity."""

    @property
    def party(self) -> str: ...

    @property
    def public(self) -> PublicIdentity: ...

    def sign(self, data: bytes) -> bytes: ...


# ----------------------------------------------------------------------------------------------
# hashing and signatures
# ----------------------------------------------------------------------------------------------


def payload_hash(data: bytes) -> str:
    """SHA-256 hex digest of a payload (what the log records instead of the payload)."""
    return hashlib.sha256(data).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _canonical(entry: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of an entry's canonical form (without ``hash`` and ``sig``)."""
    return hashlib.sha256(_canonical(entry)).hexdigest()


def _head_message(seq: int, head_hash: str) -> bytes:
    if not _HEX64.match(head_hash):
        raise ValueError("a head hash must be 64 lowercase hex digits")
    return _HEAD_DOMAIN + struct.pack(">Q", seq) + bytes.fromhex(head_hash)


def sign_head(signer: AuditSigner, seq: int, head_hash: str) -> bytes:
    """Sign a log head ``(seq, hash)`` so that another log can attest it.

    Parameters
    ----------
    signer : AuditSigner
        The writer of the log whose head this is.
    seq, head_hash : int, str
        The head, as returned by :meth:`AuditLog.head`.
    """
    return signer.sign(_head_message(seq, head_hash))


def verify_head_signature(
    public: PublicIdentity | bytes, seq: int, head_hash: str, sig: bytes
) -> None:
    """Verify a head signature from :func:`sign_head`; raise ``SignatureError`` if invalid."""
    key = public.signing_key if isinstance(public, PublicIdentity) else public
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, _head_message(seq, head_hash))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"head signature for seq {seq} does not verify") from exc


def _verify_entry_sig(public_key: bytes, digest_hex: str, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            sig, _ENTRY_DOMAIN + bytes.fromhex(digest_hex)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ----------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attestation:
    """One log's record of another writer's head."""

    peer: str
    seq: int
    head: str
    signature: bytes | None
    line: int


@dataclass(frozen=True)
class AuditVerification:
    """Result of verifying one audit log.

    Attributes
    ----------
    ok : bool
        True only if every entry verifies and the log ends with a seal.
    entries : int
        Number of entries that verified (before the first bad line).
    first_bad_line : int or None
        1-based line number of the first problem (``entries + 1`` for a missing seal).
    reason : str
        ``"ok"`` or what is wrong.
    sealed : bool
        Whether the last verified entry is a seal.
    head : tuple of (int, str) or None
        ``(seq, hash)`` of the last verified entry.
    attested_heads : dict
        Peer name -> list of ``(seq, hash)`` heads this log attests.
    """

    ok: bool
    entries: int
    first_bad_line: int | None
    reason: str
    sealed: bool
    head: tuple[int, str] | None
    attested_heads: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    writer: str | None = None
    public_key: bytes | None = None
    agreement_hash: str | None = None
    attestations: tuple[Attestation, ...] = ()


class _Bad(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Chain:
    """Incremental verifier: feed lines one by one; keeps the head."""

    def __init__(self, expected_key: bytes | None = None) -> None:
        self.expected_key = expected_key
        self.writer: str | None = None
        self.public_key: bytes | None = None
        self.agreement_hash: str | None = None
        self.entries = 0
        self.head_hash = GENESIS_PREV
        self.last_kind: str | None = None
        self.attestations: list[Attestation] = []

    @property
    def head(self) -> tuple[int, str] | None:
        return (self.entries - 1, self.head_hash) if self.entries else None

    def feed(self, line_no: int, raw: bytes) -> dict[str, Any]:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Bad(line_no, "not a JSON object (edited or corrupted)") from exc
        if not isinstance(entry, dict):
            raise _Bad(line_no, "not a JSON object (edited or corrupted)")
        kind = entry.get("kind")
        if kind not in _KIND_FIELDS:
            raise _Bad(line_no, f"unknown entry kind {kind!r} (edited or corrupted)")
        expected_fields = {**_BASE_FIELDS, **_KIND_FIELDS[kind]}
        if set(entry) != set(expected_fields):
            extra = sorted(set(entry) - set(expected_fields))
            missing = sorted(set(expected_fields) - set(entry))
            raise _Bad(
                line_no,
                "fields changed (edited): "
                + ", ".join(
                    ([f"unexpected {', '.join(extra)}"] if extra else [])
                    + ([f"missing {', '.join(missing)}"] if missing else [])
                ),
            )
        for name, typ in expected_fields.items():
            value = entry[name]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise _Bad(line_no, f"field {name} has the wrong type (edited)")
        if entry_hash(entry) != entry["hash"]:
            raise _Bad(line_no, "hash mismatch: the entry was edited")
        if kind == "genesis":
            if self.entries:
                raise _Bad(line_no, "a second genesis entry (logs concatenated or inserted)")
            if entry["format"] != LOG_FORMAT:
                raise _Bad(line_no, f"unknown log format {entry['format']!r}")
            try:
                key = _unb64(entry["public_key"])
            except (binascii.Error, ValueError) as exc:
                raise _Bad(line_no, "genesis public key is not base64") from exc
            if len(key) != 32:
                raise _Bad(line_no, "genesis public key is not a 32-byte Ed25519 key")
            if self.expected_key is not None and key != self.expected_key:
                raise _Bad(line_no, "the log was written with another key than the expected one")
            public_key = key
        elif not self.entries:
            raise _Bad(line_no, "the first entry is not a genesis entry (truncated at the start)")
        else:
            assert self.public_key is not None
            public_key = self.public_key
        try:
            sig = _unb64(entry["sig"])
        except (binascii.Error, ValueError) as exc:
            raise _Bad(line_no, "signature is not base64 (edited)") from exc
        if not _verify_entry_sig(public_key, entry["hash"], sig):
            raise _Bad(line_no, "bad signature: the entry was not written by the log's writer")
        if entry["seq"] != self.entries:
            raise _Bad(
                line_no,
                f"sequence number {entry['seq']}, expected {self.entries}: an entry was "
                "deleted, inserted or reordered",
            )
        if entry["prev"] != self.head_hash:
            raise _Bad(
                line_no,
                "prev does not link to the previous entry: an entry was deleted, inserted or "
                "reordered",
            )
        if kind == "genesis":
            self.writer = entry["writer"]
            self.public_key = public_key
            self.agreement_hash = entry["agreement_hash"]
        if entry["actor"] != self.writer:
            raise _Bad(line_no, f"actor {entry['actor']!r} is not the log's writer")
        if kind == "attest":
            if not _HEX64.match(entry["peer_head"]):
                raise _Bad(line_no, "attested head is not a sha256 hex digest")
            try:
                peer_sig = _unb64(entry["peer_sig"])
            except (binascii.Error, ValueError) as exc:
                raise _Bad(line_no, "attestation signature is not base64") from exc
            self.attestations.append(
                Attestation(entry["peer"], entry["peer_seq"], entry["peer_head"], peer_sig, line_no)
            )
        elif kind == "seal":
            for peer, head in sorted(entry["peer_heads"].items()):
                if (
                    not isinstance(head, list)
                    or len(head) != 2
                    or not isinstance(head[0], int)
                    or not isinstance(head[1], str)
                    or not _HEX64.match(head[1])
                ):
                    raise _Bad(line_no, f"malformed peer head for {peer!r} in the seal")
                self.attestations.append(Attestation(peer, head[0], head[1], None, line_no))
        self.head_hash = entry["hash"]
        self.entries += 1
        self.last_kind = kind
        return entry

    def result(self, ok: bool, bad_line: int | None, reason: str) -> AuditVerification:
        attested: dict[str, list[tuple[int, str]]] = {}
        for att in self.attestations:
            attested.setdefault(att.peer, []).append((att.seq, att.head))
        return AuditVerification(
            ok=ok,
            entries=self.entries,
            first_bad_line=bad_line,
            reason=reason,
            sealed=self.last_kind == "seal",
            head=self.head,
            attested_heads=attested,
            writer=self.writer,
            public_key=self.public_key,
            agreement_hash=self.agreement_hash,
            attestations=tuple(self.attestations),
        )


def _split_lines(data: bytes, start_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)``; a last line without newline raises ``_Bad``."""
    if not data:
        return
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the data ends with a newline
    for offset, line in enumerate(lines):
        if not line.strip():
            raise _Bad(start_line + offset, "blank line (an entry was deleted or corrupted)")
        yield start_line + offset, line
    if tail:
        raise _Bad(
            start_line + len(lines),
            "incomplete last line (interrupted write or truncation inside an entry)",
        )


def _verify_bytes(data: bytes, expected_key: bytes | None) -> tuple[_Chain, _Bad | None]:
    chain = _Chain(expected_key)
    try:
        for line_no, raw in _split_lines(data):
            chain.feed(line_no, raw)
    except _Bad as bad:
        return chain, bad
    return chain, None


def verify_audit_log(
    path: str | os.PathLike[str], expected_key: bytes | None = None
) -> AuditVerification:
    """Verify one audit log end to end.

    Detects edited entries (hash mismatch or bad signature), deleted / inserted / reordered
    entries (sequence numbers and the ``prev`` chain), a log written with another key than
    ``expected_key``, and truncation (no closing seal).

    Parameters
    ----------
    path : path-like
        The ``.jsonl`` log.
    expected_key : bytes or None
        The writer's Ed25519 public key, if known from elsewhere (e.g. the agreement).

    Returns
    -------
    AuditVerification
        ``ok`` is true only for an intact, sealed log; ``first_bad_line`` and ``reason`` say
        where and what otherwise.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return AuditVerification(
            ok=False,
            entries=0,
            first_bad_line=None,
            reason=f"cannot read: {exc.strerror or exc}",
            sealed=False,
            head=None,
        )
    chain, bad = _verify_bytes(data, expected_key)
    if bad is not None:
        return chain.result(False, bad.line, bad.reason)
    if chain.entries == 0:
        return chain.result(False, 1, "empty log: no genesis entry")
    if chain.last_kind != "seal":
        return chain.result(False, chain.entries + 1, TRUNCATED)
    return chain.result(True, None, "ok")


def _entry_at(path: Path, seq: int) -> str | None:
    """Hash of entry ``seq`` of a log (unverified read), or None."""
    try:
        with path.open("rb") as handle:
            for index, line in enumerate(handle):
                if index == seq:
                    return json.loads(line.decode("utf-8")).get("hash")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return None


def audit_log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The audit logs at ``path``: the file itself, or every ``*.jsonl`` under a directory."""
    root = Path(path)
    return [root] if root.is_file() else sorted(p for p in root.rglob("*.jsonl") if p.is_file())


def verify_audit_tree(path: str | os.PathLike[str]) -> list[tuple[Path, AuditVerification]]:
    """Verify every ``*.jsonl`` audit log under a directory (or one log file) and cross-check.

    When a log attests another writer's head ``(seq, hash)``, a log of that writer in the tree
    must contain exactly that entry; otherwise each of that writer's logs is reported as
    ``"truncated or rewritten: head attested by X not found"``. Attestations of writers whose
    logs are elsewhere are not checked here.

    Returns
    -------
    list of (Path, AuditVerification)
        Sorted by path; empty if there is no log.
    """
    files = audit_log_files(path)
    results = {p: verify_audit_log(p) for p in files}
    by_writer: dict[str, list[Path]] = {}
    for p, res in results.items():
        if res.writer is not None:
            by_writer.setdefault(res.writer, []).append(p)
    for _path, res in list(results.items()):
        for att in res.attestations:
            candidates = by_writer.get(att.peer, [])
            if not candidates or att.peer == res.writer:
                continue
            if att.signature is not None:
                signed_by = []
                for c in candidates:
                    key = results[c].public_key
                    with contextlib.suppress(SignatureError, ValueError):
                        if key is not None:
                            verify_head_signature(key, att.seq, att.head, att.signature)
                            signed_by.append(c)
                candidates = signed_by or candidates
            if any(_entry_at(c, att.seq) == att.head for c in candidates):
                continue
            for c in candidates:
                cres = results[c]
                if not cres.ok and cres.reason != TRUNCATED:
                    continue  # a more fundamental problem is already reported for this log
                results[c] = AuditVerification(
                    ok=False,
                    entries=cres.entries,
                    first_bad_line=min(att.seq + 1, cres.entries + 1),
                    reason=f"truncated or rewritten: head attested by {res.writer} not found",
                    sealed=cres.sealed,
                    head=cres.head,
                    attested_heads=cres.attested_heads,
                    writer=cres.writer,
                    public_key=cres.public_key,
                    agreement_hash=cres.agreement_hash,
                    attestations=cres.attestations,
                )
    return [(p, results[p]) for p in files]


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
    ) -> str:
        self._sync(handle)
        entry: dict[str, Any] = {
            "seq": self._chain.entries,
            "ts": _utc_now(),
            "kind": kind,
            "actor": self._signer.party,
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
        with _locked(self._path) as handle:
            self._sync(handle)
            handle.seek(0)
            data = handle.read()
        count = 0
        for _, raw in _split_lines(data):
            entry = json.loads(raw.decode("utf-8"))
            if (entry.get("kind"), entry.get("phase"), entry.get("decision")) == (
                "event",
                phase,
                decision,
            ):
                count += 1
        return count

    def record_refusal(self, phase: str, round: int, violation: PolicyViolation) -> str:
        """Append a ``"refused:<rule>"`` event for a policy violation."""
        return self.record(phase, round, f"refused:{violation.rule}")

    def attest_peer_head(
        self,
        peer: str,
        seq: int,
        head_hash: str,
        signature: bytes,
        *,
        peer_public: PublicIdentity | bytes | None = None,
        phase: str = "attest",
        round: int = 0,
    ) -> str:
        """Record another writer's log head, signed by that writer (cross-signing).

        With ``peer_public`` the signature is verified first (``SignatureError`` if invalid).
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError("seq must be a non-negative integer")
        if not isinstance(head_hash, str) or not _HEX64.match(head_hash):
            raise ValueError("head_hash must be a sha256 hex digest")
        if peer_public is not None:
            verify_head_signature(peer_public, seq, head_hash, signature)
        with _locked(self._path) as handle:
            return self._append(
                handle,
                "attest",
                phase=phase,
                round=round,
                decision="ok",
                extra={
                    "peer": str(peer),
                    "peer_seq": seq,
                    "peer_head": head_hash,
                    "peer_sig": _b64(signature),
                },
            )

    def seal(
        self,
        peer_heads: Mapping[str, tuple[int, str]] | None = None,
        *,
        round: int = 0,
        detail: str = "",
    ) -> str:
        """Append the closing entry of a run (optionally with the heads of peers' logs)."""
        heads: dict[str, list[Any]] = {}
        for peer, (seq, head_hash) in sorted((peer_heads or {}).items()):
            if not _HEX64.match(head_hash) or isinstance(seq, bool) or not isinstance(seq, int):
                raise ValueError(f"peer head of {peer!r} must be (int seq, sha256 hex)")
            heads[str(peer)] = [seq, head_hash]
        with _locked(self._path) as handle:
            return self._append(
                handle,
                "seal",
                phase="seal",
                round=round,
                decision="sealed",
                detail=str(detail)[:MAX_DETAIL],
                extra={"peer_heads": heads},
            )

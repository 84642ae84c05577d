"""The audit log format, and verifying one log: hash chain, signatures, job counter, seal.

One log per writer (a party, or the server with its own key). Each line is one JSON object::

    {"seq": 3, "ts": "2025-05-01T12:00:00.123456Z", "kind": "event", "actor": "bank",
     "job_counter": 4, "phase": "align", "round": 2, "decision": "ok", "sizes": {"ids": 5000},
     "bytes_in": 1234, "bytes_out": 4321, "payload_hashes": ["<sha256 hex>"],
     "detail": "", "prev": "<hash of entry 2>", "hash": "<sha256 hex>", "sig": "<base64>"}

- ``hash`` is SHA-256 over the canonical JSON (sorted keys, compact, ASCII) of the entry
  without ``hash`` and ``sig``; ``prev`` is the previous entry's hash (a fixed genesis value for
  the first entry); ``sig`` is the writer's Ed25519 signature over the hash (domain-separated).
- The first entry (``kind = "genesis"``) names the writer, its Ed25519 public key and the
  agreement hash; every later entry must be signed by that key.
- ``job_counter`` is the collaboration's job counter: 0 before the first job, then the number
  the operator gave the job at its hello (each job's is higher than every earlier one's). It
  never goes back along a log; a party refuses a hello whose counter is not above its own.
- ``kind = "attest"`` records another log's head ``(seq, hash)`` signed by that log's writer
  for this agreement and job (cross-signing, :class:`vfm_flower.audit_heads.SignedHead`): the
  other log must contain that exact entry, or it was truncated or rewritten. ``kind = "seal"``
  closes a job; it carries the job's close certificate (every log's signed head,
  countersigned by the operator) and, in the operator's log, every party's sealed head. A log
  whose last entry is not a seal is reported as possibly truncated.

Checking one log against what other logs and certificates hold of it is
:mod:`vfm_flower.audit_verify`.

What the log never contains: ids, feature values, labels, scores or keys (only the writer's
*public* key). Payloads appear as SHA-256 hashes and byte counts; ``detail`` is short free
text that callers must keep free of data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vfm_flower.audit_heads import CloseCertificate, SignedHead

LOG_FORMAT = "vfm-audit/2"
GENESIS_PREV = "0" * 64
MAX_DETAIL = 200
TRUNCATED = "truncated: no closing entry"

_ENTRY_DOMAIN = b"vfm-flower/v1/audit-entry\x00"
#: Longest entry read (a seal with the close certificate of a large collaboration stays below).
MAX_ENTRY_BYTES = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BASE_FIELDS = {
    "seq": int,
    "ts": str,
    "kind": str,
    "actor": str,
    "job_counter": int,
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
    "seal": {"peer_heads": dict, "certificate": dict},
}


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


def _verify_entry_sig(public_key: bytes, digest_hex: str, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            sig, _ENTRY_DOMAIN + bytes.fromhex(digest_hex)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attestation:
    """A head of another writer's log that this log holds: in an ``attest`` entry, among a
    seal's ``peer_heads``, or in the close certificate a seal carries (``how``)."""

    peer: str
    seq: int
    head: str
    signature: bytes
    line: int
    job_counter: int = 0
    how: str = "attest"

    def signed_head(self, agreement_hash: str) -> SignedHead:
        """The head as its writer signed it (for :meth:`SignedHead.verifies`)."""
        return SignedHead(
            self.peer, agreement_hash, self.job_counter, self.seq, self.head, self.signature
        )


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
    writer, public_key, agreement_hash : str, bytes, str or None
        From the genesis entry.
    attestations : tuple of Attestation
        Every head of another log this log holds (with its signature).
    job_counter : int
        The job counter of the last verified entry.
    entry_hashes, entry_kinds : tuple of str
        The hash and the kind of every verified entry, by ``seq``.
    certificates : tuple of (int, CloseCertificate)
        The close certificates the seals carry, with their line numbers.
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
    job_counter: int = 0
    entry_hashes: tuple[str, ...] = ()
    entry_kinds: tuple[str, ...] = ()
    certificates: tuple[tuple[int, CloseCertificate], ...] = ()


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
        self.job_counter = 0
        self.hashes: list[str] = []
        self.kinds: list[str] = []
        self.certificates: list[tuple[int, CloseCertificate]] = []

    @property
    def head(self) -> tuple[int, str] | None:
        return (self.entries - 1, self.head_hash) if self.entries else None

    def feed(self, line_no: int, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_ENTRY_BYTES:
            raise _Bad(line_no, "an entry longer than any the writer writes (edited or corrupted)")
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _Bad(line_no, "not a JSON object (edited or corrupted)") from exc
        if not isinstance(entry, dict):
            raise _Bad(line_no, "not a JSON object (edited or corrupted)")
        kind = entry.get("kind")
        if kind == "genesis" and entry.get("format") != LOG_FORMAT:
            raise _Bad(
                line_no,
                f"log format {entry.get('format')!r}, not {LOG_FORMAT} (an older vfm-flower wrote "
                "it: verify it with that version; a new agreement starts a new log)",
            )
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
            if not _HEX64.match(entry["agreement_hash"]):
                raise _Bad(line_no, "the genesis agreement hash is not a sha256 hex digest")
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
        job = entry["job_counter"]
        if not 0 <= job < 2**63 or not 0 <= entry["seq"] < 2**63:
            raise _Bad(line_no, "a job counter or sequence number out of range (edited)")
        if kind == "genesis" and job != 0:
            raise _Bad(line_no, "the genesis entry is not at job counter 0 (edited)")
        if job < self.job_counter:
            raise _Bad(
                line_no,
                f"the job counter went back from {self.job_counter} to {job}: logs spliced, or "
                "entries of a later job removed",
            )
        if kind == "attest":
            self._read_attest(line_no, entry)
        elif kind == "seal":
            self._read_seal(line_no, entry)
        self.head_hash = entry["hash"]
        self.hashes.append(entry["hash"])
        self.kinds.append(kind)
        self.entries += 1
        self.last_kind = kind
        self.job_counter = job
        return entry

    def _read_attest(self, line_no: int, entry: Mapping[str, Any]) -> None:
        assert self.agreement_hash is not None
        try:
            peer_sig = _unb64(entry["peer_sig"])
            SignedHead(  # every field of the attested head in range
                entry["peer"],
                self.agreement_hash,
                entry["job_counter"],
                entry["peer_seq"],
                entry["peer_head"],
                peer_sig,
            )
        except (binascii.Error, ValueError) as exc:
            raise _Bad(line_no, f"malformed attested head ({exc})") from exc
        self.attestations.append(
            Attestation(
                entry["peer"],
                entry["peer_seq"],
                entry["peer_head"],
                peer_sig,
                line_no,
                entry["job_counter"],
                "attest",
            )
        )

    def _read_seal(self, line_no: int, entry: Mapping[str, Any]) -> None:
        assert self.agreement_hash is not None
        job = entry["job_counter"]
        for peer, obj in sorted(entry["peer_heads"].items()):
            try:
                head = SignedHead.from_json(
                    obj, writer=peer, agreement_hash=self.agreement_hash, job_counter=job
                )
            except (ValueError, TypeError) as exc:
                raise _Bad(line_no, f"malformed peer head for {peer!r} in the seal") from exc
            self.attestations.append(
                Attestation(peer, head.seq, head.head, head.signature, line_no, job, "seal")
            )
        if entry["certificate"]:
            try:
                cert = CloseCertificate.from_json(entry["certificate"])
            except (ValueError, TypeError) as exc:
                raise _Bad(line_no, "malformed close certificate in the seal") from exc
            if (cert.agreement_hash, cert.job_counter) != (self.agreement_hash, job):
                raise _Bad(line_no, "the seal's close certificate is for another agreement or job")
            self.certificates.append((line_no, cert))
            for peer, head in sorted(cert.heads.items()):
                if peer != self.writer:
                    self.attestations.append(
                        Attestation(
                            peer, head.seq, head.head, head.signature, line_no, job, "certificate"
                        )
                    )

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
            job_counter=self.job_counter,
            entry_hashes=tuple(self.hashes),
            entry_kinds=tuple(self.kinds),
            certificates=tuple(self.certificates),
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

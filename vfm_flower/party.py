"""The party side of every phase, independent of Flower.

A ``PartyRuntime`` takes one ``StepRequest`` (what the server asked, the session, the job, the
envelopes relayed to this party), checks it against the party's own signed agreement, runs
the protocol step registered for the message kind, and returns a signed ``StepReply``. The
Flower client in ``clients/`` only translates messages and ``context.state`` to and from these
types.

Protocol steps live in ``vfm_flower/steps/``; each registers itself in ``STEP_HANDLERS``
under the message kind it serves (``"query.hello"``, ``"query.align"``, ...).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vfm_flower.agreement import JobRequest, SignedAgreement, check_job
from vfm_flower.audit import AuditLog
from vfm_flower.envelope import ReplayGuard, open_envelope, seal_envelope
from vfm_flower.errors import ConfigurationError, PolicyViolation, ProtocolAbort, VfmError
from vfm_flower.keys import PartyIdentity, validate_party_name
from vfm_flower.session import SessionInfo, reply_signing_bytes
from vfm_flower.state import PartyState

logger = logging.getLogger(__name__)

# node-config keys a partner sets on its SuperNode.
NODE_CONFIG_KEYS = {
    "party": "this party's name as listed in the agreement",
    "data-path": "CSV file with this party's customers (id column(s) and feature columns)",
    "key-path": "this party's private key file NAME.key (from `vfm keygen`)",
    "agreement-path": "the signed agreement TOML this party reviewed and signed",
    "work-dir": "directory for this party's model slice, audit log and outputs",
}


@dataclass(frozen=True)
class PartySettings:
    """A partner's private settings (from its SuperNode's node-config)."""

    party: str
    data_path: Path
    key_path: Path
    agreement_path: Path
    work_dir: Path

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PartySettings:
        """Validate node-config; every problem is a one-line error that says what to set."""
        missing = [k for k in NODE_CONFIG_KEYS if not str(node_config.get(k, "")).strip()]
        if missing:
            hints = "; ".join(f"'{k}' ({NODE_CONFIG_KEYS[k]})" for k in missing)
            example = " ".join(f'{k}="..."' for k in missing)
            raise ConfigurationError(
                f"node-config is missing {hints}: start the SuperNode with "
                f"--node-config '{example}'"
            )
        try:
            party = validate_party_name(str(node_config["party"]))
        except ValueError as exc:
            raise ConfigurationError(f"node-config 'party': {exc}") from exc
        settings = cls(
            party=party,
            data_path=Path(str(node_config["data-path"])).expanduser(),
            key_path=Path(str(node_config["key-path"])).expanduser(),
            agreement_path=Path(str(node_config["agreement-path"])).expanduser(),
            work_dir=Path(str(node_config["work-dir"])).expanduser(),
        )
        for name, path in (
            ("data-path", settings.data_path),
            ("key-path", settings.key_path),
            ("agreement-path", settings.agreement_path),
        ):
            if not path.is_file():
                raise ConfigurationError(
                    f"node-config '{name}' of party '{party}': {path} does not exist or is "
                    "not a file"
                )
            if not os.access(path, os.R_OK):
                raise ConfigurationError(
                    f"node-config '{name}' of party '{party}': {path} is not readable"
                )
        return settings


@dataclass
class StepRequest:
    """One message from the server, in protocol terms."""

    kind: str
    step: int
    session: SessionInfo | None
    job: JobRequest
    agreement_hash: str
    params: dict[str, Any] = field(default_factory=dict)
    inbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StepReply:
    """One party's answer: public (signed) facts, envelopes to relay, masked vectors to sum."""

    party: str
    public: dict[str, Any] = field(default_factory=dict)
    outbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    signature: bytes = b""


StepHandler = Callable[["PartyRuntime", StepRequest], StepReply]
STEP_HANDLERS: dict[str, StepHandler] = {}


def step_handler(kind: str) -> Callable[[StepHandler], StepHandler]:
    """Register a protocol step for a message kind (``"<category>.<name>"``)."""

    def register(func: StepHandler) -> StepHandler:
        STEP_HANDLERS[kind] = func
        return func

    return register


def payload_hash(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class PartyRuntime:
    """Everything one party needs to run a step: identity, agreement, state, audit log.

    Parameters
    ----------
    settings : PartySettings
        The partner's private settings.
    state : PartyState
        Per-run state kept between messages by the runtime adapter.
    """

    def __init__(self, settings: PartySettings, state: PartyState) -> None:
        self.settings = settings
        self.state = state
        self.identity = PartyIdentity.load(settings.key_path, expected_party=settings.party)
        self.signed = SignedAgreement.load(settings.agreement_path)
        self.agreement = self.signed.agreement
        self.terms = self.agreement.party(settings.party)
        listed = self.terms.public_identity
        if listed != self.identity.public:
            raise ConfigurationError(
                f"key file {settings.key_path} is not the key the agreement lists for "
                f"'{settings.party}'"
            )
        self.party = settings.party
        self.work_dir = settings.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._replay = ReplayGuard(self.state.tokens("replay_ids"))
        self._audit: AuditLog | None = None
        self.request: StepRequest | None = None

    # --- helpers for protocol steps -------------------------------------------------------
    @property
    def is_label_owner(self) -> bool:
        return self.party == self.agreement.label_owner

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog.open(
                audit_log_path(self.work_dir, self.agreement.terms_hash()),
                self.identity,
                self.agreement.terms_hash(),
            )
        return self._audit

    @property
    def run_key(self) -> str:
        key = self.state.get("run_key")
        if not key:
            raise ProtocolAbort("session", self.party, "no session yet: the hello phase must run")
        return str(key)

    def seal(
        self, recipient: str, topic: str, plaintext: bytes, *, phase: str, round: int
    ) -> bytes:
        """Encrypt and sign a payload for another party of the agreement."""
        peer = self.agreement.party(recipient).public_identity
        return seal_envelope(
            self.identity,
            peer,
            run_id=self.run_key,
            phase=phase,
            round=round,
            topic=topic,
            plaintext=plaintext,
        )

    def open(
        self, request: StepRequest, sender: str, topic: str, *, phase: str, round: int
    ) -> bytes:
        """Verify and decrypt the envelope ``sender`` sent on ``topic``; refuse anything else."""
        blob = request.inbox.get((sender, topic))
        if blob is None:
            raise ProtocolAbort(
                request.kind, self.party, f"expected an envelope '{topic}' from '{sender}'"
            )
        peer = self.agreement.party(sender).public_identity
        plaintext = open_envelope(
            blob,
            self.identity,
            peer,
            run_id=self.run_key,
            phase=phase,
            round=round,
            topic=topic,
            replay_guard=self._replay,
        )
        self.state.set_tokens("replay_ids", set(self._replay.export()))
        return plaintext

    def claim_mask_label(self, label: str) -> None:
        """Refuse to mask two vectors under one label (their difference would leak)."""
        labels = self.state.tokens("mask_labels")
        if label in labels:
            raise PolicyViolation(
                "session", f"mask label '{label}' was already used in this run (replayed step)"
            )
        self.state.set_tokens("mask_labels", labels | {label})

    # --- the one entry point ----------------------------------------------------------------
    def handle(self, request: StepRequest) -> StepReply:
        """Check the request against this party's agreement, run the step, sign the reply."""
        self.request = request
        handler = STEP_HANDLERS.get(request.kind)
        try:
            self._check_request(request)
            if handler is None:
                raise ProtocolAbort(request.kind, self.party, "unknown message kind")
            reply = handler(self, request)
        except PolicyViolation as exc:
            self.audit.record(request.kind, request.step, f"refused:{exc.rule}", detail=str(exc))
            raise
        except VfmError as exc:
            self.audit.record(request.kind, request.step, "abort", detail=type(exc).__name__)
            raise
        except Exception as exc:  # an unexpected failure still ends as a clean, named abort
            self.audit.record(request.kind, request.step, "abort", detail=type(exc).__name__)
            raise ProtocolAbort(
                request.kind, self.party, f"internal error ({type(exc).__name__}: {exc})"
            ) from exc
        reply.party = self.party
        reply.public.setdefault("step", request.step)
        reply.signature = self.identity.sign(
            reply_signing_bytes(
                run_ref=request.session.run_key if request.session else "hello",
                phase=request.kind,
                step=request.step,
                party=self.party,
                public=reply.public,
            )
        )
        if request.kind == "query.close":  # the log is sealed: the reply is signed, not logged
            return reply
        bytes_in = sum(len(b) for b in request.inbox.values()) + sum(
            a.nbytes for a in request.sums.values()
        )
        bytes_out = sum(len(b) for b in reply.outbox.values()) + sum(
            a.nbytes for a in reply.masked.values()
        )
        self.audit.record(
            request.kind,
            request.step,
            "ok",
            sizes={
                k: v
                for k, v in reply.public.items()
                if isinstance(v, int) and not isinstance(v, bool)
            },
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            payload_hashes=[payload_hash(b) for b in reply.outbox.values()],
        )
        return reply

    def _check_request(self, request: StepRequest) -> None:
        """The party's own enforcement, before it touches data, at every phase."""
        own_hash = self.agreement.terms_hash()
        if request.agreement_hash != own_hash:
            raise PolicyViolation(
                "agreement_hash",
                f"the server runs agreement {request.agreement_hash[:12]}..., party "
                f"'{self.party}' signed {own_hash[:12]}...",
            )
        check_job(self.signed, request.job)
        session = request.session
        if session is None:
            if request.kind != "query.hello":
                raise PolicyViolation("session", f"'{request.kind}' arrived without a session")
            return
        nonce = self.state.get("hello_nonce")
        if not nonce or session.party_nonces.get(self.party) != nonce:
            raise PolicyViolation(
                "session",
                "the session does not carry this party's hello nonce (replayed or forged run)",
            )
        if set(session.party_nonces) != set(self.agreement.party_names):
            raise PolicyViolation(
                "session", "the session does not list a nonce from every party of the agreement"
            )
        stored = self.state.get("run_key")
        key = session.run_key
        if stored and stored != key:
            raise PolicyViolation("session", "the session changed within one run")
        self.state.set("run_key", key)


def audit_log_path(work_dir: Path, agreement_hash: str) -> Path:
    """One audit log per agreement in a work dir."""
    return work_dir / f"audit-{agreement_hash[:16]}.jsonl"


def new_nonce() -> str:
    return secrets.token_hex(16)

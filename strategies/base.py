"""``VerticalStrategy``: drives the named phases of a vertical job over a Flower ``Grid``.

The server schedules phases, relays opaque envelopes between parties, sums masked vectors,
enforces the agreement and writes its own audit log. It never holds a key that opens a
party's payload. Every round sends each party its own message, collects the replies, verifies
each reply's signature against the agreement, and turns an error reply or a timeout into a
``ProtocolAbort`` that names the party and the phase. Sequential rounds, bytes and seconds are
counted per phase and logged.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from vfm_flower.agreement import (
    JobRequest,
    SignedAgreement,
    check_job,
    check_party_presence,
    check_same_agreement,
    check_set_size,
)
from vfm_flower.audit import AuditLog, sign_head
from vfm_flower.envelope import peek_header
from vfm_flower.errors import EnvelopeError, ProtocolAbort, SignatureError, VfmError
from vfm_flower.keys import PartyIdentity
from vfm_flower.party import StepReply, StepRequest, audit_log_path
from vfm_flower.runtime import wire
from vfm_flower.session import SessionInfo, reply_signing_bytes

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, dict[str, Any]], None]
progress_logger = logging.getLogger("vfm_flower.progress")


def log_progress(event: str, details: dict[str, Any]) -> None:
    """Default progress sink: a log record the CLI (or any log handler) can render."""
    progress_logger.info(
        "%s %s", event, details, extra={"vfm_event": event, "vfm_details": details}
    )


@dataclass
class PhaseStats:
    """What one phase cost: sequential message rounds, bytes each way, wall seconds."""

    rounds: int = 0
    bytes_to_parties: int = 0
    bytes_from_parties: int = 0
    seconds: float = 0.0


@dataclass
class JobResult:
    """What the server learned: sizes, timing, pass/fail, and the public facts parties sent."""

    phases: dict[str, PhaseStats] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    joint_rows: int | None = None
    public: dict[str, Any] = field(default_factory=dict)

    @property
    def total_rounds(self) -> int:
        return sum(p.rounds for p in self.phases.values())


def load_server_identity(workdir: Path) -> PartyIdentity:
    """The server's audit-signing identity (not a party of the agreement), made once."""
    key = workdir / "server.key"
    if key.exists():
        return PartyIdentity.load(key, expected_party="server")
    identity = PartyIdentity.generate("server")
    identity.save(workdir)
    return identity


class VerticalStrategy(ABC):
    """Base class of the vertical strategies.

    Parameters
    ----------
    agreement : SignedAgreement
        The operator's copy of the signed agreement; the server refuses to start any phase
        unless every party holds the same one.
    job : JobRequest
        What to run (operation, model, key size, iterations); checked against the agreement
        by the server and by every party.
    workdir : Path
        Where the server keeps its audit log and its audit-signing key.
    round_timeout : float
        Seconds to wait for the replies of one round before aborting.
    party_wait_timeout : float
        Seconds to wait for every party of the agreement to be online.
    progress : callable, optional
        Called with ``(event, details)`` at phase starts/ends and training iterations.
    """

    def __init__(
        self,
        agreement: SignedAgreement,
        job: JobRequest,
        *,
        workdir: Path,
        round_timeout: float = 600.0,
        party_wait_timeout: float = 120.0,
        poll_interval: float = 0.5,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.signed = agreement
        self.agreement = agreement.agreement
        self.job = job
        self.workdir = Path(workdir)
        self.round_timeout = float(round_timeout)
        self.party_wait_timeout = float(party_wait_timeout)
        self.poll_interval = float(poll_interval)
        self.progress = progress or log_progress
        self.agreement_hash = self.agreement.terms_hash()
        self.result = JobResult()
        self.session: SessionInfo | None = None
        self.node_of: dict[str, int] = {}
        self._grid: Grid | None = None
        self._audit: AuditLog | None = None
        self._phase: str = "setup"
        self.carry: dict[str, dict[tuple[str, str], bytes]] = {}
        # results the label owner sealed to another result owner, relayed with ``close``
        self.deliveries: list[dict[str, Any]] = []

    # --- hooks -------------------------------------------------------------------------------
    @abstractmethod
    def run_phases(self) -> None:
        """Run the job's phases after hello (alignment, training, scoring...)."""

    # --- the driver ------------------------------------------------------------------------
    def start(self, grid: Grid, flower_run_id: int) -> JobResult:
        """Run the whole job on ``grid``; raise ``ProtocolAbort`` naming who/what failed."""
        self._grid = grid
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._identity = load_server_identity(self.workdir)
        self._audit = AuditLog.open(
            audit_log_path(self.workdir, self.agreement_hash), self._identity, self.agreement_hash
        )
        try:
            check_job(self.signed, self.job)
            self.hello(flower_run_id)
            self.run_phases()
        except VfmError as exc:
            rule = getattr(exc, "rule", None)
            self._audit.record(
                self._phase, 0, f"refused:{rule}" if rule else "abort", detail=str(exc)[:200]
            )
            self._close_after_abort()
            raise
        self._audit.record("job", 0, "done", sizes={"rounds": self.result.total_rounds})
        self.close()
        return self.result

    def close(self) -> None:
        """Last round of every job: cross-sign audit heads with every party, seal all logs."""
        self._phase = "close"
        self.result.phases.setdefault("close", PhaseStats())
        seq, head = self.audit.head()
        public = self._identity.public
        params = {
            "server_seq": seq,
            "server_head": head,
            "server_head_sig": base64.b64encode(sign_head(self._identity, seq, head)).decode(),
            "server_signing_key": base64.b64encode(public.signing_key).decode(),
            "server_exchange_key": base64.b64encode(public.exchange_key).decode(),
        }
        params["deliveries"] = self.deliveries
        replies = self.exchange(
            "query.close",
            {
                p: self.request("query.close", 1, params=params, inbox=self.take_carry(p))
                for p in self.node_of
            },
        )
        heads = {}
        for party, reply in replies.items():
            pseq, phead = int(reply.public["audit_seq"]), str(reply.public["audit_head"])
            self.audit.attest_peer_head(
                party,
                pseq,
                phead,
                base64.b64decode(reply.public["audit_head_sig"]),
                peer_public=self.agreement.party(party).public_identity,
            )
            heads[party] = (pseq, phead)
        self.audit.seal(heads)

    def _close_after_abort(self) -> None:
        """Best effort after an abort: seal every reachable party's log, then the server's."""
        if self.session is not None and self.node_of:
            self.round_timeout = min(self.round_timeout, 30.0)
            try:
                self.close()
                return
            except VfmError as exc:
                logger.warning("could not close the parties' audit logs after the abort: %s", exc)
        self.audit.seal()

    @property
    def audit(self) -> AuditLog:
        assert self._audit is not None
        return self._audit

    @property
    def parties(self) -> list[str]:
        return list(self.agreement.party_names)

    def wait_for_nodes(self) -> list[int]:
        """Poll until as many nodes as parties are online, or the wait times out."""
        assert self._grid is not None
        need = len(self.parties)
        deadline = time.monotonic() + self.party_wait_timeout
        nodes = list(self._grid.get_node_ids())
        while len(nodes) < need and time.monotonic() < deadline:
            time.sleep(self.poll_interval)
            nodes = list(self._grid.get_node_ids())
        return nodes

    def hello(self, flower_run_id: int) -> None:
        """Phase 1: identify every party, check its agreement and signature, fix the session."""
        self._phase = "hello"
        nodes = self.wait_for_nodes()
        server_nonce = secrets.token_hex(16)
        base = StepRequest(
            kind="query.hello",
            step=1,
            session=None,
            job=self.job,
            agreement_hash=self.agreement_hash,
            params={"server_nonce": server_nonce},
        )
        replies = self._round("query.hello", {node: base for node in nodes}, by_node=True)
        by_party: dict[str, StepReply] = {}
        for node, reply in replies.items():
            if reply.party not in self.parties:
                raise ProtocolAbort(
                    "hello", reply.party, "this party is not named in the agreement"
                )
            if reply.party in by_party:
                raise ProtocolAbort("hello", reply.party, "two SuperNodes claim this party")
            self._verify_reply("query.hello", 1, reply, run_ref="hello")
            if reply.public.get("server_nonce") != server_nonce:
                raise ProtocolAbort("hello", reply.party, "hello reply is not for this run")
            by_party[reply.party] = reply
            self.node_of[reply.party] = node
        missing = [p for p in self.parties if p not in by_party]
        if missing:
            raise ProtocolAbort(
                "hello",
                missing[0],
                f"party(ies) {', '.join(missing)} did not connect within "
                f"{self.party_wait_timeout:.0f}s (is each partner's SuperNode running with the "
                "right --superlink address?)",
            )
        check_party_presence(self.agreement, by_party)
        check_same_agreement(
            self.agreement_hash,
            {p: str(r.public.get("agreement_hash")) for p, r in by_party.items()},
        )
        for party, reply in by_party.items():
            rows = int(reply.public.get("rows", 0))
            check_set_size(self.agreement, party, rows)
            self.result.rows[party] = rows
        self.session = SessionInfo(
            flower_run_id=int(flower_run_id),
            server_nonce=server_nonce,
            party_nonces={p: str(r.public["nonce"]) for p, r in sorted(by_party.items())},
        )
        self.audit.record("hello", 1, "ok", sizes=dict(self.result.rows))
        self.progress("hello", {"parties": sorted(by_party), "rows": dict(self.result.rows)})

    # --- one round ---------------------------------------------------------------------------
    def request(
        self,
        kind: str,
        step: int,
        *,
        params: Mapping[str, Any] | None = None,
        inbox: Mapping[tuple[str, str], bytes] | None = None,
        sums: Mapping[str, Any] | None = None,
    ) -> StepRequest:
        """A request for one party in the current session."""
        return StepRequest(
            kind=kind,
            step=step,
            session=self.session,
            job=self.job,
            agreement_hash=self.agreement_hash,
            params=dict(params or {}),
            inbox=dict(inbox or {}),
            sums=dict(sums or {}),
        )

    def exchange(self, kind: str, requests: Mapping[str, StepRequest]) -> dict[str, StepReply]:
        """Send each named party its request in one round; verify and return the replies."""
        replies = self._round(kind, {self.node_of[p]: r for p, r in requests.items()})
        run_ref = self.session.run_key if self.session else "hello"
        out: dict[str, StepReply] = {}
        for party, request in requests.items():
            reply = replies[party]
            if reply.party != party:
                raise ProtocolAbort(kind, party, f"reply claims to come from '{reply.party}'")
            self._verify_reply(kind, request.step, reply, run_ref=run_ref)
            out[party] = reply
        return out

    def _verify_reply(self, kind: str, step: int, reply: StepReply, *, run_ref: str) -> None:
        public = self.agreement.party(reply.party).public_identity
        try:
            public.verify(
                reply.signature,
                reply_signing_bytes(
                    run_ref=run_ref, phase=kind, step=step, party=reply.party, public=reply.public
                ),
            )
        except SignatureError as exc:
            raise ProtocolAbort(kind, reply.party, "reply signature does not verify") from exc

    def _round(
        self, kind: str, requests: Mapping[int, StepRequest], *, by_node: bool = False
    ) -> dict[Any, StepReply]:
        assert self._grid is not None
        party_of = {node: party for party, node in self.node_of.items()}
        stats = self.result.phases.setdefault(self._phase, PhaseStats())
        started = time.monotonic()
        messages = []
        for node, request in requests.items():
            content = wire.encode_request(request)
            stats.bytes_to_parties += recorddict_to_proto(content).ByteSize()
            messages.append(
                Message(content, dst_node_id=node, message_type=kind, group_id=self._phase)
            )
        replies = list(self._grid.send_and_receive(messages, timeout=self.round_timeout))
        stats.rounds += 1
        got: dict[Any, StepReply] = {}
        for message in replies:
            node = message.metadata.src_node_id
            who = party_of.get(node, f"node {node}")
            if message.has_error():
                named, reason = wire.parse_error_reason(_error_reason(message))
                raise ProtocolAbort(self._phase, named or who, reason)
            stats.bytes_from_parties += recorddict_to_proto(message.content).ByteSize()
            reply = wire.decode_reply(kind, message.content)
            got[node if by_node else party_of.get(node, reply.party)] = reply
        if not by_node:
            late = [party_of[n] for n in requests if party_of[n] not in got]
            if late:
                raise ProtocolAbort(
                    self._phase,
                    late[0],
                    f"no reply to '{kind}' within {self.round_timeout:.0f}s "
                    f"(waiting for: {', '.join(late)})",
                )
        stats.seconds += time.monotonic() - started
        logger.info(
            "%s: round %d of phase %s, %d bytes out, %d bytes in",
            kind,
            stats.rounds,
            self._phase,
            stats.bytes_to_parties,
            stats.bytes_from_parties,
        )
        return got

    # --- relaying ------------------------------------------------------------------------------
    def relay(self, replies: Iterable[StepReply]) -> dict[str, dict[tuple[str, str], bytes]]:
        """Sort the envelopes of a round by recipient (the server reads only their headers)."""
        inboxes: dict[str, dict[tuple[str, str], bytes]] = {p: {} for p in self.parties}
        for reply in replies:
            for (recipient, topic), blob in reply.outbox.items():
                try:
                    header = peek_header(blob)
                except EnvelopeError as exc:
                    raise ProtocolAbort(self._phase, reply.party, str(exc)) from exc
                if (
                    recipient not in inboxes
                    or header.recipient != recipient
                    or header.sender != reply.party
                    or header.topic != topic
                ):
                    raise ProtocolAbort(
                        self._phase, reply.party, "envelope addressed inconsistently"
                    )
                inboxes[recipient][(reply.party, topic)] = blob
        return inboxes

    # --- phase 2: alignment --------------------------------------------------------------------
    def align(self) -> int:
        """Run the three PSI rounds; returns the joint row count.

        The label owner's last envelopes (each passive party's positions) are kept in
        ``self.carry`` and delivered with the first message of the next phase.
        """
        self.begin_phase("align")
        lo = self.agreement.label_owner
        first = self.exchange(
            "query.align", {p: self.request("query.align", 1) for p in self.parties}
        )
        inboxes = self.relay(first.values())
        second = self.exchange(
            "query.align",
            {p: self.request("query.align", 2, inbox=inboxes[p]) for p in self.parties},
        )
        inboxes = self.relay(second.values())
        third = self.exchange(
            "query.align", {lo: self.request("query.align", 3, inbox=inboxes[lo])}
        )
        self.carry = self.relay(third.values())
        joint = int(third[lo].public.get("joint_rows", 0))
        self.result.joint_rows = joint
        self.end_phase("align", joint_rows=joint)
        return joint

    def take_carry(self, party: str) -> dict[tuple[str, str], bytes]:
        """Envelopes held over from the previous phase for ``party`` (delivered once)."""
        return self.carry.pop(party, {}) if self.carry else {}

    def begin_phase(self, name: str) -> None:
        self._phase = name
        self.result.phases.setdefault(name, PhaseStats())
        self.progress("phase", {"phase": name})

    def end_phase(self, name: str, **sizes: int) -> None:
        stats = self.result.phases[name]
        self.audit.record(
            name,
            stats.rounds,
            "ok",
            sizes={"rounds": stats.rounds, **sizes},
            bytes_in=stats.bytes_from_parties,
            bytes_out=stats.bytes_to_parties,
        )
        logger.info(
            "phase %s done: %d rounds, %.1fs, %d bytes to parties, %d bytes from parties",
            name,
            stats.rounds,
            stats.seconds,
            stats.bytes_to_parties,
            stats.bytes_from_parties,
        )
        self.progress("phase-done", {"phase": name, "rounds": stats.rounds, **sizes})


def _error_reason(message: Message) -> str:
    reason = message.error.reason or f"error code {message.error.code}"
    # Flower wraps ClientApp exceptions as "<class 'X'>:<'text'>"; keep the text.
    if reason.startswith("<class") and ":<'" in reason:
        reason = reason.split(":<'", 1)[1].rstrip("'>")
    return reason

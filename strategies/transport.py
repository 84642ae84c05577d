"""The server's transport: one message round over a Flower ``Grid``, and the relay mailbox.

``Transport`` knows nothing of phases or jobs. It sends each party its own ``StepRequest`` in
one round, verifies every reply's Ed25519 signature against the agreement, names the party
behind every error reply or timeout (Flower reports node ids; the signed hello maps them to
party names), counts rounds, bytes and seconds per phase, and keeps a mailbox: every envelope
a reply carries for another party is relayed with the next message that party gets, after a
check of its header (sender, recipient, topic) that reads nothing else. The server never holds
a key that opens an envelope.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from vfm_flower.agreement import Agreement
from vfm_flower.envelope import peek_header
from vfm_flower.errors import EnvelopeError, ProtocolAbort, SignatureError
from vfm_flower.keys import PartyIdentity
from vfm_flower.party import StepReply, StepRequest
from vfm_flower.runtime import wire
from vfm_flower.session import reply_signing_bytes, request_signing_bytes

logger = logging.getLogger(__name__)


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


Mailbox = dict[tuple[str, str], bytes]


class Transport:
    """Rounds, signatures, party names and the relay mailbox over one ``Grid``.

    Parameters
    ----------
    grid : Grid
        Flower's grid (the Deployment Engine's, the simulation's, or the in-process one).
    agreement : Agreement
        The terms: the parties and their public keys.
    round_timeout : float
        Seconds to wait for the replies of one round.
    """

    def __init__(self, grid: Grid, agreement: Agreement, *, round_timeout: float) -> None:
        self.grid = grid
        self.agreement = agreement
        self.round_timeout = float(round_timeout)
        self.node_of: dict[str, int] = {}
        self.phase = "setup"
        self.result = JobResult()
        self.run_ref = "hello"
        self._mailbox: dict[str, Mailbox] = {}
        #: the operator's identity: it signs every request after hello
        self.signer: PartyIdentity | None = None
        self.sequence = 0

    # --- one round ---------------------------------------------------------------------------
    def round(
        self, kind: str, requests: Mapping[int, StepRequest], *, by_node: bool = False
    ) -> dict[Any, StepReply]:
        """Send ``requests`` (by node id) in one round; replies by party (or by node).

        Each message carries its own request's step kind (``kind`` names the round in errors
        and logs): parties that run different steps of one round get them in one round.
        """
        party_of = {node: party for party, node in self.node_of.items()}
        stats = self.result.phases.setdefault(self.phase, PhaseStats())
        started = time.monotonic()
        messages = []
        for node, request in requests.items():
            content = wire.encode_request(request)
            stats.bytes_to_parties += recorddict_to_proto(content).ByteSize()
            messages.append(
                Message(content, dst_node_id=node, message_type=request.kind, group_id=self.phase)
            )
        kind_of = {node: request.kind for node, request in requests.items()}
        replies = list(self.grid.send_and_receive(messages, timeout=self.round_timeout))
        # The grid gives each message its id when it pushes it. An error Flower makes itself
        # (a node that stopped: "Node Unavailable") comes from the SuperLink's node id, so
        # the party is found through the message it replies to.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        stats.rounds += 1
        got: dict[Any, StepReply] = {}
        for message in replies:
            node = message.metadata.src_node_id
            if node not in party_of and not by_node:
                node = sent_to.get(message.metadata.reply_to_message_id, node)
            who = party_of.get(node, f"node {node}")
            if message.has_error():
                named, reason = wire.parse_error_reason(_error_reason(message))
                raise ProtocolAbort(self.phase, named or who, reason)
            stats.bytes_from_parties += recorddict_to_proto(message.content).ByteSize()
            reply = wire.decode_reply(kind_of.get(node, kind), message.content)
            got[node if by_node else party_of.get(node, reply.party)] = reply
        if not by_node:
            late = [party_of[n] for n in requests if party_of[n] not in got]
            if late:
                raise ProtocolAbort(
                    self.phase,
                    late[0],
                    f"no reply to '{kind}' within {self.round_timeout:.0f}s "
                    f"(waiting for: {', '.join(late)})",
                )
        stats.seconds += time.monotonic() - started
        logger.debug(
            "%s: round %d of phase %s, %d bytes out, %d bytes in",
            kind,
            stats.rounds,
            self.phase,
            stats.bytes_to_parties,
            stats.bytes_from_parties,
        )
        return got

    def exchange(self, kind: str, requests: Mapping[str, StepRequest]) -> dict[str, StepReply]:
        """Send each named party its request (with its pending envelopes) in one round.

        Replies are verified; the envelopes they carry go to the mailbox for the recipients'
        next messages.
        """
        if self.signer is None:
            raise ProtocolAbort(kind, None, "the operator's key is not loaded: nothing is sent")
        self.sequence += 1
        for party, request in requests.items():
            pending = self._mailbox.pop(party, {})
            request.inbox = {**pending, **request.inbox}
            request.sequence = self.sequence
            request.operator_signature = self.signer.sign(
                request_signing_bytes(
                    run_ref=self.run_ref,
                    kind=request.kind,
                    step=request.step,
                    sequence=self.sequence,
                    party=party,
                    params=request.params,
                    sums=request.sums,
                )
            )
        replies = self.round(kind, {self.node_of[p]: r for p, r in requests.items()})
        out: dict[str, StepReply] = {}
        for party, request in requests.items():
            reply = replies[party]
            if reply.party != party:
                raise ProtocolAbort(
                    request.kind, party, f"reply claims to come from '{reply.party}'"
                )
            self.verify_reply(request.kind, request.step, reply, run_ref=self.run_ref)
            out[party] = reply
        self.post(out.values())
        return out

    def verify_reply(self, kind: str, step: int, reply: StepReply, *, run_ref: str) -> None:
        """Refuse a reply whose public part is not signed by the party it names."""
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

    # --- relaying ----------------------------------------------------------------------------
    def post(self, replies: Iterable[StepReply]) -> None:
        """Queue the envelopes of a round for their recipients (headers checked, nothing read)."""
        parties = set(self.agreement.party_names)
        for reply in replies:
            for (recipient, topic), blob in reply.outbox.items():
                try:
                    header = peek_header(blob)
                except EnvelopeError as exc:
                    raise ProtocolAbort(self.phase, reply.party, str(exc)) from exc
                if (
                    recipient not in parties
                    or header.recipient != recipient
                    or header.sender != reply.party
                    or header.topic != topic
                ):
                    raise ProtocolAbort(
                        self.phase, reply.party, "envelope addressed inconsistently"
                    )
                self._mailbox.setdefault(recipient, {})[(reply.party, topic)] = blob


def _error_reason(message: Message) -> str:
    reason = message.error.reason or f"error code {message.error.code}"
    # Flower wraps ClientApp exceptions as "<class 'X'>:<'text'>"; keep the text.
    if reason.startswith("<class") and ":<'" in reason:
        reason = reason.split(":<'", 1)[1].rstrip("'>")
    return reason

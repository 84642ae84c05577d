"""``vertical_mod``: the plugin's checks, sealing, signing and audit around a plain handler.

For teams that keep their own ``ClientApp`` and handlers::

    mod = vertical_mod(jobs=[SEGMENT_STATS], topics=[LABELS, SUMS])
    app = ClientApp(mods=[mod])
    mod.add_protocol_routes(app)       # hello, alignment, close: answered by the Mod

    @app.query("segment_sums")
    def segment_sums(message: Message, context: Context) -> Message:
        step = message.content["vfm.step"]          # party, job (JSON), round, roles
        opened = message.content["vfm.opened"]      # "sender|topic" -> plaintext bytes
        rows = message.content["vfm.aligned"]["rows"].numpy()  # joint rows, common order
        # (a passive party gets them only for a kind with membership="revealed"; otherwise it
        # gets "vfm.slots": a slot for each of its rows, see vfm_flower.hidden_membership)
        ...
        return Message(RecordDict({
            "vfm.send": ArrayRecord({"lo|stats.sums": raw_array(payload)}),  # sealed for you
            "vfm.publish": ConfigRecord({"cells": 12}),                      # release-checked
        }), reply_to=message)

The Mod answers the plugin's protocol messages (hello, alignment, close) itself; Flower routes
a message only to a registered handler, so ``add_protocol_routes(app)`` registers theirs. For every
other message it decodes the request, checks the agreement, the job (kind, operation, every
parameter, the same job as at hello) and the session, opens the envelopes addressed to this
party on the declared topics, each bound to the step that seals it and to this round (anything
tampered, misdirected, replayed, held back from another round or on an undeclared topic is
refused), hands the plaintexts to the handler, then seals what the handler sends (only on
topics this step seals),
checks what it publishes against the release list, signs the reply and audits the step.
Secure sums, Paillier and artifacts need the step API (``VerticalClientApp.step``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from vfm_flower.clients.vertical_party import VerticalParty
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import ProtocolAbort
from vfm_flower.jobs import JobKind, JobRegistry
from vfm_flower.party import DataLoader, StepRegistry, StepSpec
from vfm_flower.steps.alignment import JOINT_ROWS, TOPIC_POSITIONS, TOPIC_SLOTS


def raw_array(blob: bytes) -> Array:
    """Bytes as a Flower ``Array`` (for ``vfm.send`` / ``vfm.opened`` records)."""
    return Array(dtype="bytes", shape=(len(blob),), stype="raw", data=blob)


class VerticalMod:
    """A Flower Mod (``mod(message, context, call_next)``) for the handlers of ``jobs``.

    Parameters
    ----------
    jobs : iterable of JobKind
        The job kinds the wrapped handlers belong to.
    topics : iterable of Topic
        Every topic the handlers send or receive, each with the message kind that seals it.
    operations : iterable of str, optional
        The operations they serve (required when a kind has several).
    data_loader : callable, optional
        As for ``VerticalClientApp`` (used by the protocol steps: hello and alignment).
    """

    def __init__(
        self,
        jobs: Iterable[JobKind],
        *,
        topics: Iterable[Topic],
        operations: Iterable[str] | None = None,
        data_loader: DataLoader | None = None,
    ) -> None:
        from vfm_flower.clients.app import _operations_of
        from vfm_flower.steps import protocol_steps

        self.jobs = JobRegistry(jobs)
        self.operations = _operations_of("vertical_mod", list(self.jobs), operations)
        self.data_loader = data_loader
        self.protocol = protocol_steps()
        self.topics = {topic.name: topic for topic in topics}

    def add_protocol_routes(self, app: ClientApp) -> None:
        """Register the protocol message kinds on ``app`` (the Mod answers them)."""

        def answered_by_the_mod(message: Message, context: Context) -> Message:
            raise ProtocolAbort(message.metadata.message_type, None, "vertical_mod is not applied")

        for kind in self.protocol.kinds():
            category, _, action = kind.partition(".")
            getattr(app, category)(action)(answered_by_the_mod)

    def __call__(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        kind = message.metadata.message_type
        if kind in self.protocol:
            return VerticalParty(self.protocol, self.jobs, self.data_loader)(message, context)

        def around(ctx: PartyContext) -> None:
            _run_plain_handler(ctx, message, context, call_next, self.topics)

        steps = StepRegistry(self.protocol)
        steps.add(
            StepSpec(kind=kind, handler=around, jobs=self.jobs.names(), operations=self.operations)
        )
        return VerticalParty(steps, self.jobs, self.data_loader)(message, context)


def vertical_mod(
    jobs: Iterable[JobKind],
    *,
    topics: Iterable[Topic],
    operations: Iterable[str] | None = None,
    data_loader: DataLoader | None = None,
) -> VerticalMod:
    """A Flower Mod that makes every handler of a ``ClientApp`` a governed step of ``jobs``
    (see :class:`VerticalMod`; call ``add_protocol_routes(app)`` on the app it wraps)."""
    return VerticalMod(jobs, topics=topics, operations=operations, data_loader=data_loader)


def _run_plain_handler(
    ctx: PartyContext,
    message: Message,
    context: Context,
    call_next: ClientAppCallable,
    topics: dict[str, Topic],
) -> None:
    opened = {}
    for sender, name in sorted(ctx.request.inbox):
        if name in (TOPIC_POSITIONS, TOPIC_SLOTS):  # alignment's, consumed by the runtime
            continue
        topic = topics.get(name)
        if topic is None:
            raise ProtocolAbort(ctx.kind, ctx.party, f"an envelope on undeclared topic '{name}'")
        opened[f"{sender}|{name}"] = raw_array(ctx.receive(sender, topic))
    step = ConfigRecord(
        {
            "party": ctx.party,
            "job": ctx.job.to_json(),
            "round": int(ctx.round),
            "label_owner": ctx.label_owner,
            "result_owner": ctx.result_owner,
            "server_params": json.dumps(dict(ctx.server_params), sort_keys=True),
        }
    )
    content = RecordDict({"vfm.step": step, "vfm.opened": ArrayRecord(opened)})
    if JOINT_ROWS in ctx.state:  # this party's rows of the joint customers, in common order
        content["vfm.aligned"] = ArrayRecord({"rows": Array(ctx.aligned_rows())})
    elif "hm.slot_of_row" in ctx.state:  # hidden membership: a slot for each of its rows
        layout = ctx.passive_layout()
        content["vfm.slots"] = ArrayRecord({"slot_of_row": Array(layout.slot_of_row)})
    message.content = content
    reply = call_next(message, context)
    if reply.has_error():
        raise ProtocolAbort(ctx.kind, ctx.party, f"the handler failed: {reply.error.reason}")
    content = reply.content
    sends = content.get("vfm.send")
    for key, array in (sends or {}).items():
        recipient, _, name = key.partition("|")
        if recipient not in ctx.agreement.party_names or name not in topics:
            raise ProtocolAbort(ctx.kind, ctx.party, f"the handler sends to unknown '{key}'")
        ctx.send(recipient, topics[name], bytes(array.data))
    facts = content.get("vfm.publish")
    if facts is not None:
        ctx.publish(**dict(facts))

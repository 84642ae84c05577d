"""``vertical_mod``: the plugin's checks, sealing, signing and audit around a plain handler.

For teams that keep their own ``ClientApp`` and handlers::

    app = ClientApp(mods=[vertical_mod(jobs=[SEGMENT_STATS])])

    @app.query("segment_sums")
    def segment_sums(message: Message, context: Context) -> Message:
        step = message.content["vfm.step"]          # party, job (JSON), round, roles
        opened = message.content["vfm.opened"]      # "sender|topic" -> plaintext bytes
        ...
        return Message(RecordDict({
            "vfm.send": ArrayRecord({"lo|stats.sums": raw_array(payload)}),  # sealed for you
            "vfm.publish": ConfigRecord({"cells": 12}),                      # release-checked
        }), reply_to=message)

The Mod answers the plugin's protocol messages (hello, alignment, close) itself. For every
other message it decodes the request, checks the agreement, the job (kind, operation, every
parameter, the same job as at hello) and the session, opens every envelope addressed to this
party (refusing anything tampered, misdirected or replayed), hands the plaintexts to the
handler, then seals what the handler sends (bound to this step's message kind and round),
checks what it publishes against the release list, signs the reply and audits the step.
Secure sums, Paillier and artifacts need the step API (``VerticalClientApp.step``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from vfm_flower.clients.vertical_party import VerticalParty
from vfm_flower.context import PartyContext
from vfm_flower.envelope import peek_header
from vfm_flower.errors import EnvelopeError, ProtocolAbort
from vfm_flower.jobs import JobKind, JobRegistry
from vfm_flower.party import DataLoader, StepRegistry, StepSpec


def raw_array(blob: bytes) -> Array:
    """Bytes as a Flower ``Array`` (for ``vfm.send`` / ``vfm.opened`` records)."""
    return Array(dtype="bytes", shape=(len(blob),), stype="raw", data=blob)


def vertical_mod(
    jobs: Iterable[JobKind],
    *,
    operations: Iterable[str] | None = None,
    data_loader: DataLoader | None = None,
) -> Mod:
    """A Flower Mod that makes every handler of a ``ClientApp`` a governed step of ``jobs``.

    Parameters
    ----------
    jobs : iterable of JobKind
        The job kinds the wrapped handlers belong to.
    operations : iterable of str, optional
        The operations they serve (default: every operation of the kinds).
    data_loader : callable, optional
        As for ``VerticalClientApp`` (used by the protocol steps: hello and alignment).
    """
    from vfm_flower.steps import protocol_steps

    registry = JobRegistry(jobs)
    kinds = registry.names()
    ops = tuple(operations) if operations is not None else None
    protocol = protocol_steps()

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        kind = message.metadata.message_type
        if kind in protocol:
            return VerticalParty(protocol, registry, data_loader)(message, context)

        def around(ctx: PartyContext) -> None:
            _run_plain_handler(ctx, message, context, call_next)

        steps = StepRegistry(protocol)
        steps.add(StepSpec(kind=kind, handler=around, jobs=kinds, operations=ops))
        return VerticalParty(steps, registry, data_loader)(message, context)

    return mod


def _run_plain_handler(
    ctx: PartyContext, message: Message, context: Context, call_next: ClientAppCallable
) -> None:
    opened = {}
    for (sender, topic), blob in sorted(ctx.request.inbox.items()):
        try:
            header = peek_header(blob)
        except EnvelopeError as exc:
            raise ProtocolAbort(ctx.kind, ctx.party, f"envelope '{topic}': {exc}") from exc
        plaintext = ctx.runtime.open(
            ctx.request, sender, topic, phase=header.phase, round=header.round
        )
        opened[f"{sender}|{topic}"] = raw_array(plaintext)
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
    message.content = RecordDict({"vfm.step": step, "vfm.opened": ArrayRecord(opened)})
    reply = call_next(message, context)
    if reply.has_error():
        raise ProtocolAbort(ctx.kind, ctx.party, f"the handler failed: {reply.error.reason}")
    content = reply.content
    sends = content.get("vfm.send")
    for key, array in (sends or {}).items():
        recipient, _, topic = key.partition("|")
        if recipient not in ctx.agreement.party_names or not topic:
            raise ProtocolAbort(ctx.kind, ctx.party, f"the handler sends to unknown '{key}'")
        ctx.reply.outbox[(recipient, topic)] = ctx.runtime.seal(
            recipient, topic, bytes(array.data), phase=ctx.kind, round=ctx.round
        )
    facts = content.get("vfm.publish")
    if facts is not None:
        ctx.publish(**dict(facts))

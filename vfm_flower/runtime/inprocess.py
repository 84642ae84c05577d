"""An in-process runner on Flower's own ``Grid``, ``Message`` and serialization.

No Ray and no subprocesses: ``InProcessGrid`` implements Flower's abstract ``Grid`` by calling
each node's ``ClientApp`` directly, keeps one ``Context`` per node, and round-trips every
message and every context through Flower's protobuf serialization, so content that could not
travel in the Deployment Engine fails here too. Tests and the CLI's local mode use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run, RunStatus
from flwr.supercore.task_identity import TaskIdentity

logger = logging.getLogger(__name__)

_FIRST_NODE_ID = 1001


def _roundtrip_message(message: Message) -> Message:
    blob = message_to_proto(message).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(blob)
    return message_from_proto(proto)


def _roundtrip_context(context: Context) -> Context:
    blob = context_to_proto(context).SerializeToString()
    proto = ProtoContext()
    proto.ParseFromString(blob)
    return context_from_proto(proto)


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ``ClientApp`` calls in this process.

    Parameters
    ----------
    client_app : ClientApp
        The ClientApp every node runs.
    node_configs : sequence of mappings
        One node-config per node (what a partner passes with ``--node-config``).
    run_config : mapping
        The run-config, identical on every node.
    run_id : int
        Flower's run id.
    offline : iterable of int
        Indices of nodes that never come online (to test a party that never connects).
    record : bool
        Keep every serialized message, both ways, in ``transcript``: what the SuperLink and
        the ServerApp see (privacy tests search it for plaintext).
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, Any]],
        run_config: Mapping[str, Any],
        run_id: int,
        offline: Iterable[int] = (),
        record: bool = False,
    ) -> None:
        self._client_app = client_app
        self.transcript: list[tuple[str, str, bytes]] | None = [] if record else None
        self._run_id = run_id
        skip = set(offline)
        self._contexts: dict[int, Context] = {}
        for index, node_config in enumerate(node_configs):
            if index in skip:
                continue
            node_id = _FIRST_NODE_ID + index
            self._contexts[node_id] = Context(
                run_id=run_id,
                node_id=node_id,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def contexts(self) -> dict[int, Context]:
        """Each node's current ``Context`` (state included), by node id."""
        return self._contexts

    def _record(self, direction: str, message: Message) -> bytes:
        blob = message_to_proto(message).SerializeToString()
        if self.transcript is not None:
            self.transcript.append((direction, message.metadata.message_type, blob))
        return blob

    # --- Grid interface ----------------------------------------------------------------
    def set_run(self, run: Run) -> None:  # pragma: no cover - nothing to do in-process
        self._run_id = run.run_id

    @property
    def run(self) -> Run:
        return Run(
            run_id=self._run_id,
            fab_id="vfm-flower",
            fab_version="inprocess",
            fab_hash="",
            override_config={},
            pending_at="",
            starting_at="",
            running_at="",
            finished_at="",
            status=RunStatus(status="running", sub_status="", details=""),
            flwr_aid="",
            federation_id="",
            primary_task_id=1,
            bytes_sent=self.bytes_sent,
            bytes_recv=self.bytes_received,
            clientapp_runtime=0.0,
        )

    def create_message(  # noqa: PLR0913 - Grid's signature
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            if message.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"no node {message.metadata.dst_node_id} in this grid")
            wire_message = _roundtrip_message(message)
            self.bytes_sent += len(self._record("to-party", message))
            self._pending[message.metadata.message_id] = wire_message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for message_id in message_ids:
            if message_id in self._pending:
                self._deliver(self._pending.pop(message_id))
            if message_id in self._replies:
                out.append(self._replies.pop(message_id))
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))

    # --- running a node -------------------------------------------------------------------
    def _deliver(self, message: Message) -> None:
        node_id = message.metadata.dst_node_id
        context = _roundtrip_context(self._contexts[node_id])
        server_identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id = 2
        TaskIdentity.run_id = self._run_id
        TaskIdentity.node_id = node_id
        try:
            try:
                reply = self._client_app(message, context)
            except Exception as exc:  # the same error reply the SuperNode would send
                logger.exception("ClientApp raised on node %s", node_id)
                reason = f"{type(exc)}:<'{exc}'>"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self.bytes_received += len(self._record("to-server", reply))
            self._replies[message.metadata.message_id] = _roundtrip_message(reply)
            self._contexts[node_id] = _roundtrip_context(context)
        finally:
            (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) = server_identity


def run_inprocess(
    server_app: ServerApp,
    client_app: ClientApp,
    node_configs: Sequence[Mapping[str, Any]],
    run_config: Mapping[str, Any],
    *,
    run_id: int | None = None,
    offline: Iterable[int] = (),
    record: bool = False,
) -> InProcessGrid:
    """Run ``server_app`` against one ``client_app`` node per node-config, in this process.

    Returns the grid (for its byte counters). Exceptions of the ServerApp propagate.
    """
    run_id = run_id if run_id is not None else int(time.time_ns() % (2**62))
    grid = InProcessGrid(
        client_app, node_configs, run_config, run_id, offline=offline, record=record
    )
    context = Context(
        run_id=run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        server_app(grid, context)
    finally:
        (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) = saved
    return grid

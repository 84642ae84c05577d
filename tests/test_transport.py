"""The server's transport: every failure is named by party, even Flower's own error replies."""

from __future__ import annotations

import pytest
from flwr.app import Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from tests.conftest import governed_collab
from vfm_flower.errors import ProtocolAbort
from vfm_flower.runtime.inprocess import InProcessGrid


def test_a_node_that_stopped_is_named_by_its_party(tmp_path, monkeypatch):
    """Flower answers for a dead SuperNode from the SuperLink's node id ("Node Unavailable"):
    the transport maps the reply back to the party it asked."""
    original = InProcessGrid._deliver

    def deliver(self, message):
        if message.metadata.message_type == "train.passive":
            party = self.contexts[message.metadata.dst_node_id].node_config["party"]
            if party == "p2":
                reply = Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable"),
                    reply_to=message,
                )
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                reply.metadata.__dict__["_message_id"] = "unavailable"
                self._replies[message.metadata.message_id] = reply
                return
        original(self, message)

    monkeypatch.setattr(InProcessGrid, "_deliver", deliver)
    collab = governed_collab(tmp_path, 41)
    with pytest.raises(
        ProtocolAbort, match=r"phase 'train' aborted by party 'p2'.*Node Unavailable"
    ):
        collab.run(job="train", **{"max-iterations": 2})

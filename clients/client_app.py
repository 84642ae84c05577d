"""The vfm-flower ClientApp (``clients.client_app:app``).

Imports stay lean here: in the Deployment Engine every message starts a fresh process, so the
protocol modules are imported only when a message arrives.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.vertical_party import VerticalParty

app = ClientApp()
_party = VerticalParty()

# Every message kind of the protocol, by Flower category.
QUERY_KINDS = ("hello", "align", "score", "combine", "close")
TRAIN_KINDS = ("prepare", "forward", "residual", "backward", "decrypt", "finish")


def _route(message: Message, context: Context) -> Message:
    return _party(message, context)


for _kind in QUERY_KINDS:
    app.query(_kind)(_route)
for _kind in TRAIN_KINDS:
    app.train(_kind)(_route)

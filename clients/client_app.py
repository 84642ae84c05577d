"""The vfm-flower ClientApp for the built-in jobs (``vfm_flower.clients.client_app:app``).

Routes come from the step registry (one table of message kinds), so a message kind no step
serves is refused by Flower itself. Imports stay lean: in the Deployment Engine every message
starts a fresh process.
"""

from __future__ import annotations

from vfm_flower.clients.app import VerticalClientApp

app = VerticalClientApp(builtin_jobs=True)

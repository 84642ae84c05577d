"""The vfm-flower ServerApp for the built-in jobs (``vfm_flower.strategies.server_app:app``).

Reads the job from run-config, picks the vertical strategy for the job kind and runs it; the
session writes ``result.json`` (sizes, rounds, timing and the public facts the parties
released) and ``result-<operation>.json`` atomically into the server work dir.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from vfm_flower.agreement import SignedAgreement
from vfm_flower.strategies.regression import build_strategy
from vfm_flower.strategies.settings import ServerSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = ServerSettings.from_run_config(context.run_config)
    strategy = build_strategy(SignedAgreement.load(settings.agreement_path), settings)
    strategy.start(grid, context.run_id)

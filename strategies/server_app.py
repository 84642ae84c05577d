"""The vfm-flower ServerApp (``strategies.server_app:app``).

Reads the job from run-config, picks the vertical strategy for the model, runs it, and writes
``result.json`` (sizes, rounds, timing and the public facts the parties released) atomically
into the server work dir.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from strategies.regression import build_strategy
from strategies.settings import ServerSettings
from vfm_flower.agreement import SignedAgreement

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = ServerSettings.from_run_config(context.run_config)
    strategy = build_strategy(
        SignedAgreement.load(settings.agreement_path),
        settings,
    )
    # A failed job must not leave an earlier job's result looking like its own.
    for name in ("result.json", f"result-{settings.job.operation}.json"):
        (settings.workdir / name).unlink(missing_ok=True)
    result = strategy.start(grid, context.run_id)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    summary = {
        "job": settings.job.operation,
        "phases": {name: asdict(stats) for name, stats in result.phases.items()},
        "rows": result.rows,
        "joint_rows": result.joint_rows,
        "total_rounds": result.total_rounds,
        "public": result.public,
    }
    text = json.dumps(summary, indent=2, sort_keys=True)
    # result-<job>.json per job kind, and result.json for the latest job of any kind
    for name in (f"result-{settings.job.operation}.json", "result.json"):
        out = settings.workdir / name
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    logger.info("job done: %s", settings.workdir / "result.json")

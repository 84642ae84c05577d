"""Run a vertical job locally: the real ServerApp and one ClientApp per party, in-process.

The CLI's ``vfm demo`` and ``vfm local ...`` use this; each party gets the node-config a
partner would give its SuperNode, and the server the run-config an operator would pass to
``flwr run``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfm_flower.errors import ConfigurationError


@dataclass(frozen=True)
class PartyFiles:
    """One party's private inputs for a local run."""

    data_path: Path
    key_path: Path


def party_node_config(
    party: str, files: PartyFiles, agreement_path: Path, workdir: Path
) -> dict[str, str]:
    return {
        "party": party,
        "data-path": str(files.data_path.resolve()),
        "key-path": str(files.key_path.resolve()),
        "agreement-path": str(agreement_path.resolve()),
        "work-dir": str((workdir / "parties" / party).resolve()),
    }


def run_local_job(
    agreement_path: Path,
    parties: Mapping[str, PartyFiles],
    workdir: Path,
    run_config: Mapping[str, Any],
    *,
    offline: tuple[str, ...] = (),
    grid_out: list[Any] | None = None,
    party_agreements: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Run one job in-process; returns the server's ``result.json`` content.

    With ``grid_out`` (a list), the in-process grid is appended to it, recording the server's
    view of every message (tests inspect it). ``party_agreements`` gives some parties their own
    copy of the agreement file (by default every party uses ``agreement_path``).
    """
    from clients.client_app import app as client_app
    from strategies.server_app import app as server_app
    from vfm_flower.runtime.inprocess import run_inprocess

    workdir = Path(workdir)
    names = list(parties)
    own = dict(party_agreements or {})
    node_configs = [
        party_node_config(p, parties[p], own.get(p, agreement_path), workdir) for p in names
    ]
    config = {
        "agreement-path": str(Path(agreement_path).resolve()),
        "server-workdir": str((workdir / "server").resolve()),
        **dict(run_config),
    }
    unknown_offline = [p for p in offline if p not in parties]
    if unknown_offline:
        raise ConfigurationError(f"unknown party(ies) {unknown_offline}")
    grid = run_inprocess(
        server_app,
        client_app,
        node_configs,
        config,
        offline=[names.index(p) for p in offline],
        record=grid_out is not None,
    )
    if grid_out is not None:
        grid_out.append(grid)
    return json.loads((workdir / "server" / "result.json").read_text(encoding="utf-8"))

"""Run a vertical job locally: the real ServerApp and one ClientApp per party, in-process.

The CLI's ``vfm demo`` and ``vfm local ...`` use this; each party gets the node-config a
partner would give its SuperNode, and the server the run-config an operator would pass to
``flwr run``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfm_flower.errors import ConfigurationError


@dataclass(frozen=True)
class PartyFiles:
    """One party's private inputs for a local run."""

    data_path: Path
    key_path: Path
    #: more data sets by name, and a directory of them (node-config data-sets, data-dir)
    data_sets: Mapping[str, Path] = field(default_factory=dict)
    data_dir: Path | None = None


def party_node_config(
    party: str, files: PartyFiles, agreement_path: Path, workdir: Path
) -> dict[str, str]:
    config = {
        "party": party,
        "data-path": str(files.data_path.resolve()),
        "key-path": str(files.key_path.resolve()),
        "agreement-path": str(agreement_path.resolve()),
        "work-dir": str((workdir / "parties" / party).resolve()),
    }
    if files.data_sets:
        config["data-sets"] = ",".join(f"{n}={p.resolve()}" for n, p in files.data_sets.items())
    if files.data_dir is not None:
        config["data-dir"] = str(files.data_dir.resolve())
    return config


def run_local_app(
    server_app: Any,
    client_app: Any,
    agreement_path: Path,
    parties: Mapping[str, PartyFiles],
    workdir: Path,
    run_config: Mapping[str, Any],
    *,
    offline: tuple[str, ...] = (),
    grid_out: list[Any] | None = None,
    party_agreements: Mapping[str, Path] | None = None,
    operator_key: Path | None = None,
) -> dict[str, Any]:
    """Run any vertical Flower app in-process; returns the server's ``result.json`` content.

    Each party gets the node-config a partner would give its SuperNode, the server the
    run-config an operator would pass to ``flwr run`` (``agreement-path`` and
    ``server-workdir`` are filled in). With ``grid_out`` (a list), the in-process grid is
    appended to it, recording the server's view of every message (tests inspect it).
    ``party_agreements`` gives some parties their own copy of the agreement file.
    ``operator_key`` is the operator's ``NAME.key``: installed in the server work dir (where
    the ServerApp looks for it) unless that dir already holds the operator's key.
    """
    from vfm_flower.runtime.inprocess import run_inprocess

    workdir = Path(workdir)
    names = list(parties)
    own = dict(party_agreements or {})
    node_configs = [
        party_node_config(p, parties[p], own.get(p, agreement_path), workdir) for p in names
    ]
    config = dict(run_config)
    for key, value in (
        ("agreement-path", str(Path(agreement_path).resolve())),
        ("server-workdir", str((workdir / "server").resolve())),
    ):
        if not str(config.get(key, "")).strip():
            config[key] = value
    if operator_key is not None:
        from vfm_flower.keys import install_private_key

        install_private_key(Path(operator_key), Path(config["server-workdir"]))
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
    result = workdir / "server" / "result.json"
    if not result.is_file():
        raise ConfigurationError(
            f"the app finished without writing {result}: does its ServerApp run a vertical_session?"
        )
    return json.loads(result.read_text(encoding="utf-8"))


def run_local_job(
    agreement_path: Path,
    parties: Mapping[str, PartyFiles],
    workdir: Path,
    run_config: Mapping[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """Run one built-in job in-process (:func:`run_local_app` with the built-in apps)."""
    from vfm_flower.clients.client_app import app as client_app
    from vfm_flower.strategies.server_app import app as server_app

    return run_local_app(
        server_app, client_app, agreement_path, parties, workdir, run_config, **options
    )


def load_flower_app(directory: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The ServerApp, the ClientApp and the run-config defaults of a Flower App directory.

    Reads ``[tool.flwr.app.components]`` and ``[tool.flwr.app.config]`` of its
    ``pyproject.toml`` and imports the components with the directory on ``sys.path`` (as
    ``flwr run`` does).
    """
    import importlib
    import sys
    import tomllib

    directory = Path(directory).resolve()
    pyproject = directory / "pyproject.toml"
    try:
        app = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]
        components = app["components"]
        refs = (str(components["serverapp"]), str(components["clientapp"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"{pyproject} is not a Flower App (needs [tool.flwr.app.components] serverapp and "
            "clientapp)"
        ) from exc
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    loaded = []
    for ref in refs:
        module, _, attr = ref.partition(":")
        try:
            loaded.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"cannot load component '{ref}' of {pyproject}: {exc}"
            ) from exc
    return loaded[0], loaded[1], dict(app.get("config", {}))

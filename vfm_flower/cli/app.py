"""``vfm app init DIR``: write the Flower App that runs the built-in vertical jobs.

The app is one ``pyproject.toml`` whose components point at the installed package
(``vfm_flower.strategies.server_app:app`` and ``vfm_flower.clients.client_app:app``). It holds
no code, so ``flwr run DIR`` never ships a second copy of vfm-flower that could shadow the
installed one on the SuperLink or a SuperNode.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vfm_flower.errors import ConfigurationError

_HEADER = """\
# A Flower App that runs the vfm-flower built-in vertical jobs. Written by `vfm app init DIR`.
# It holds no code of its own: the ServerApp and ClientApp come from the installed vfm-flower
# package (installed on the SuperLink's and every SuperNode's machine), so `flwr run DIR` ships
# only this file. To run jobs of your own, point the components at your own ServerApp and
# ClientApp (see "Write your own vertical job" in the vfm-flower README).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "vfm-app"
version = "1.0.0"
description = "Vertical jobs of a vfm-flower collaboration"
license = "Apache-2.0"
dependencies = ["vfm-flower"]

[tool.flwr.app]
publisher = "vfm-flower"

[tool.flwr.app.components]
serverapp = "vfm_flower.strategies.server_app:app"
clientapp = "vfm_flower.clients.client_app:app"

[tool.flwr.app.config]
# Shared, non-secret job settings (identical on the server and every node). Party-private
# settings (data path, key path, work dir) belong in each SuperNode's --node-config, never
# here. Flower accepts a --run-config key only if it is declared below. Job parameters are
# checked against the bounds of the signed agreement by every party.
"""


def app_config() -> dict[str, Any]:
    """The run-config an app declares: the ServerApp's keys and every built-in job parameter,
    with their defaults (the job kinds' declarations are the one source of defaults)."""
    from vfm_flower.jobs_builtin import builtin_registry
    from vfm_flower.strategies.settings import RUN_CONFIG_DEFAULTS

    config: dict[str, Any] = dict(RUN_CONFIG_DEFAULTS)
    for kind in builtin_registry():
        for param in kind.params:
            config.setdefault(param.name, param.default)
    return config


def app_template() -> str:
    """The text of the Flower App's ``pyproject.toml``."""
    import tomli_w

    return _HEADER + tomli_w.dumps(app_config())


def write_app(directory: Path, *, force: bool = False) -> Path:
    """Write ``directory/pyproject.toml``; refuse to overwrite one without ``force``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(f"{directory} exists and is not a directory")
    target = directory / "pyproject.toml"
    if target.exists() and not force:
        raise ConfigurationError(f"{target} exists: choose another directory or pass --force")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".pyproject.toml.partial"
    tmp.write_text(app_template(), encoding="utf-8")
    os.replace(tmp, target)
    return target


def cmd_app_init(args: argparse.Namespace) -> int:
    target = write_app(Path(args.directory).expanduser(), force=args.force)
    print(f"wrote {target}: run it with `flwr run {target.parent} CONNECTION`")  # noqa: T201
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    app = subparsers.add_parser("app", help="the Flower App that runs the built-in jobs")
    app_sub = app.add_subparsers(dest="app_command", metavar="COMMAND")
    app_sub.required = True
    init = app_sub.add_parser("init", help="write DIR/pyproject.toml for `flwr run DIR`")
    init.add_argument("directory", help="directory of the Flower App (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite an existing pyproject.toml")
    init.set_defaults(func=cmd_app_init)

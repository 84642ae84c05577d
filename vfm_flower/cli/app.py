"""``vfm app init DIR`` and ``vfm app run DIR CONNECTION``: the Flower App of the built-in jobs.

``init`` writes the app: one ``pyproject.toml`` whose components point at the installed
package (``vfm_flower.strategies.server_app:app`` and ``vfm_flower.clients.client_app:app``).
It holds no code, so ``flwr run DIR`` never ships a second copy of vfm-flower that could
shadow the installed one on the SuperLink or a SuperNode.

``run`` is the operator's ``flwr run DIR CONNECTION --stream``, with an exit code: Flower's
``flwr run`` exits 0 whether or not the ServerApp succeeded, so the wrapper passes the stream
through and exits 0 only when the built-in ServerApp printed its ``[vfm] job done`` line
(:mod:`vfm_flower.strategies.operator_log`), 1 when it printed ``[vfm] error:`` or ended
without either (the reason repeated on stderr), so a script or a scheduler sees the outcome.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
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


#: The built-in ServerApp's outcome lines in the operator's stream.
JOB_DONE_MARK = "[vfm] job done"
JOB_ERROR_MARK = "[vfm] error:"


def job_outcome(lines: list[str]) -> tuple[bool, str]:
    """``(succeeded, line)`` from the operator's stream: the job-done line, else the first
    error line, else a sentence saying neither came."""
    for line in lines:
        if JOB_DONE_MARK in line:
            return True, line[line.index(JOB_DONE_MARK) :].strip()
    for line in lines:
        if JOB_ERROR_MARK in line:
            return False, line[line.index(JOB_ERROR_MARK) + len("[vfm] ") :].strip()
    return False, "error: the run ended without the ServerApp's job-done line (see the log above)"


def cmd_app_run(args: argparse.Namespace) -> int:
    directory = Path(args.directory).expanduser()
    if not (directory / "pyproject.toml").is_file():
        raise ConfigurationError(
            f"{directory} holds no Flower App (no pyproject.toml): write it with "
            f"`vfm app init {args.directory}`"
        )
    flwr = shutil.which("flwr")
    if flwr is None:
        raise ConfigurationError("the flwr command is not on PATH: pip install 'flwr==1.42.*'")
    command = [flwr, "run", str(directory)]
    if args.connection:
        command.append(args.connection)
    command.append("--stream")
    if args.run_config:
        command += ["--run-config", args.run_config]
    lines: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the stream line by line, not in blocks
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                lines.append(line)
        except KeyboardInterrupt:
            proc.terminate()
            print(  # noqa: T201
                "interrupted: the run goes on on the SuperLink (`flwr ls`, `flwr stop RUN_ID`)",
                file=sys.stderr,
            )
            return 130
    succeeded, outcome = job_outcome(lines)
    if succeeded:
        return 0
    if proc.returncode not in (0, None):
        outcome += f" (flwr run exited {proc.returncode})"
    print(outcome, file=sys.stderr)  # noqa: T201
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    app = subparsers.add_parser("app", help="the Flower App that runs the built-in jobs")
    app_sub = app.add_subparsers(dest="app_command", metavar="COMMAND")
    app_sub.required = True
    init = app_sub.add_parser("init", help="write DIR/pyproject.toml for `flwr run DIR`")
    init.add_argument("directory", help="directory of the Flower App (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite an existing pyproject.toml")
    init.set_defaults(func=cmd_app_init)
    run = app_sub.add_parser(
        "run",
        help="flwr run DIR CONNECTION --stream, exiting non-zero when the job failed",
        description=(
            "Run a job of the Flower App in DIR on a SuperLink (Flower's `flwr run --stream`), "
            "showing its stream. Exit 0 when the job succeeded, 1 when it failed (the reason "
            "on stderr), 2 for a usage error."
        ),
    )
    run.add_argument("directory", help="the Flower App (from `vfm app init DIR`)")
    run.add_argument(
        "connection", nargs="?", help="a [superlink.NAME] connection of $FLWR_HOME/config.toml"
    )
    run.add_argument("--run-config", default="", help="'KEY=VALUE ...', as for flwr run")
    run.set_defaults(func=cmd_app_run)

"""Local commands: ``vfm demo``, ``vfm local train``, ``vfm local score``.

They run the real ServerApp and one ClientApp per party in this process (the in-process
runner on Flower's own Grid and serialization). Outputs go to a staging directory that
replaces the work dir only when the job succeeded: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from pathlib import Path

from vfm_flower.errors import ConfigurationError


def _staging_for(workdir: Path, force: bool) -> Path:
    if workdir.exists() and any(workdir.iterdir()) and not force:
        raise ConfigurationError(
            f"work dir {workdir} exists and is not empty: choose another --workdir or pass --force"
        )
    workdir.parent.mkdir(parents=True, exist_ok=True)
    staging = workdir.parent / f".{workdir.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _commit_staging(staging: Path, workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    os.replace(staging, workdir)


def cmd_demo(args: argparse.Namespace) -> int:
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.demo_data import prepare_demo_collaboration
    from vfm_flower.runtime.local_job import PartyFiles, run_local_job

    console = attach_progress(args.quiet)
    workdir = Path(args.workdir).resolve()
    staging = _staging_for(workdir, args.force)
    try:
        console.print(f"[bold]setup[/] keys, party data and a signed agreement in {workdir}")
        demo = prepare_demo_collaboration(staging / "setup")
        if args.prepare_only:
            _commit_staging(staging, workdir)
            console.print(f"prepared demo collaboration in {workdir}")
            return 0
        files = {
            p: PartyFiles(data_path=demo.party_data[p], key_path=demo.party_keys[p])
            for p in demo.party_data
        }
        result = run_local_job(
            demo.agreement_path,
            files,
            staging,
            {"job": "train", "model": "logistic", "max-iterations": args.iterations},
        )
        _commit_staging(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    console.print(f"[bold]aligned rows[/] {result['joint_rows']:,} customers shared by all parties")
    console.print(f"rounds: {result['total_rounds']} in total; results in {workdir}")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))  # noqa: T201
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the whole vertical job on the embedded Caravan demo (three parties)",
        description=(
            "Create three demo parties (data broker, bank, insurer) with keys, data and a signed "
            "agreement, then align, train, evaluate and score them in-process."
        ),
    )
    demo.add_argument("--workdir", default="vfm-demo", help="output directory (default: vfm-demo)")
    demo.add_argument("--force", action="store_true", help="replace an existing work dir")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.add_argument("--iterations", type=int, default=30, help="training iterations at most")
    demo.add_argument(
        "--prepare-only",
        action="store_true",
        help="only create the demo collaboration (for `flwr run` and the deployment example)",
    )
    demo.add_argument("--json", action="store_true", help="print the server's result as JSON")
    demo.set_defaults(func=cmd_demo)

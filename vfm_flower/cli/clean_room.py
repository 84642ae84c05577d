"""``vfm local overlap``: the clean-room questions before a model, on this machine.

It runs the real ServerApp and one ClientApp per party in-process, like ``vfm local train``,
with the same ``--agreement --data NAME=CSV --workdir`` options, and prints what the result
owner's report says (the report itself: ``overlap.json`` and ``overlap.html`` in the result
owner's work dir).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vfm_flower.errors import ConfigurationError


def _segment_option(value: str | None) -> dict[str, str]:
    """``PARTY:COLUMN`` as the overlap job's ``segment-party`` and ``segment-column``."""
    if not value:
        return {}
    party, sep, column = value.partition(":")
    if not sep or not party.strip() or not column.strip():
        raise ConfigurationError(
            f"--segment {value!r}: write PARTY:COLUMN (e.g. --segment bank:region)"
        )
    return {"segment-party": party.strip(), "segment-column": column.strip()}


def cmd_local_overlap(args: argparse.Namespace) -> int:
    from rich.table import Table

    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.cli.local import _party_files
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.report_overlap import OVERLAP_HTML, OVERLAP_JSON
    from vfm_flower.runtime.local_job import run_local_job

    console = attach_progress(args.quiet)
    config: dict[str, Any] = {"model": "overlap", **_segment_option(args.segment)}
    if args.max_segments is not None:
        config["max-segments"] = args.max_segments
    agreement_path, files, operator_key = _party_files(args)
    workdir = Path(args.workdir).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigurationError(f"--workdir {workdir} is a file, not a directory")
    run_local_job(agreement_path, files, workdir, config, operator_key=operator_key)
    owner = SignedAgreement.load(agreement_path).agreement.result_owner
    out = workdir / "parties" / owner
    report = json.loads((out / OVERLAP_JSON).read_text(encoding="utf-8"))
    print_overlap(console, report, Table)
    console.print(f"[bold]report[/] {out / OVERLAP_HTML} (and {OVERLAP_JSON})")
    return 0


def print_overlap(console: Any, report: dict[str, Any], table_class: Any) -> None:
    """The overlap report's figures as terminal tables (``vfm local overlap``, ``vfm demo``)."""

    def count(n: Any) -> str:
        return "withheld" if n is None else f"{n:,}"

    def share(r: Any) -> str:
        return "withheld" if r is None else f"{100 * r:.1f}%"

    lo = report["label_owner"]
    table = table_class(
        "shared by", "customers", f"share of {lo}'s", title="customer overlap (counts only)"
    )
    for party, entry in report["with_label_owner"].items():
        table.add_row(f"{party} and {lo}", count(entry["customers"]), share(entry["match_rate"]))
    everyone = report["all_parties"]
    table.add_row("all parties", count(everyone["customers"]), share(everyone["match_rate"]))
    console.print(table)
    segment = report.get("segment")
    if segment:
        cells = table_class(
            "value",
            "customers",
            "share",
            title=f"overlap by {segment['party']}'s '{segment['column']}'",
        )
        for cell in segment["cells"]:
            if cell["suppressed"]:
                cells.add_row(cell["segment"], "withheld", "")
            else:
                cells.add_row(cell["segment"], f"{cell['customers']:,}", share(cell["share"]))
        console.print(cells)
    for line in report.get("summary", []):
        console.print(f"  - {line}")


def register_local(local_sub: argparse._SubParsersAction, add_job_options: Any) -> None:
    """Add ``vfm local overlap`` to the ``vfm local`` commands."""
    overlap = local_sub.add_parser(
        "overlap",
        help="how many customers the parties share (counts only; nobody learns which)",
    )
    add_job_options(overlap, model=False)
    overlap.add_argument(
        "--segment",
        metavar="PARTY:COLUMN",
        help="also count the customers all parties share per value of one party's own column",
    )
    overlap.add_argument(
        "--max-segments", type=int, help="the most values that column may have (default 10)"
    )
    overlap.set_defaults(func=cmd_local_overlap)

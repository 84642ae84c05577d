"""``vfm local overlap``, ``vfm local segments``, ``vfm budget``: the clean-room questions
before a model.

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

    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.report_overlap import OVERLAP_HTML, OVERLAP_JSON

    console = attach_progress(args.quiet)
    config: dict[str, Any] = {"model": "overlap", **_segment_option(args.segment)}
    if args.max_segments is not None:
        config["max-segments"] = args.max_segments
    report, out = run_and_read(args, config, OVERLAP_JSON)
    print_overlap(console, report, Table)
    console.print(f"[bold]report[/] {out / OVERLAP_HTML} (and {OVERLAP_JSON})")
    return 0


def run_and_read(
    args: argparse.Namespace, config: dict[str, Any], report_name: str
) -> tuple[dict[str, Any], Path]:
    """Run one job in-process with the CLI's party files; the result owner's report and its
    folder."""
    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.cli.local import _party_files
    from vfm_flower.runtime.local_job import run_local_job

    agreement_path, files, operator_key = _party_files(args)
    workdir = Path(args.workdir).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigurationError(f"--workdir {workdir} is a file, not a directory")
    run_local_job(agreement_path, files, workdir, config, operator_key=operator_key)
    owner = SignedAgreement.load(agreement_path).agreement.result_owner
    out = workdir / "parties" / owner
    return json.loads((out / report_name).read_text(encoding="utf-8")), out


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


def _target_option(value: str | None) -> dict[str, str]:
    """``PARTY:COLUMN`` as ``target-party`` / ``target-column`` (empty: the label)."""
    if not value:
        return {}
    party, sep, column = value.partition(":")
    if not sep or not party.strip() or not column.strip():
        raise ConfigurationError(f"--target {value!r}: write PARTY:COLUMN (e.g. bank:spend)")
    return {"target-party": party.strip(), "target-column": column.strip()}


def cmd_local_segments(args: argparse.Namespace) -> int:
    from rich.table import Table

    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.report_segments import SEGMENTS_HTML, SEGMENTS_JSON

    if not args.segment:
        raise ConfigurationError("--segment PARTY:COLUMN is required (the column to group by)")
    console = attach_progress(args.quiet)
    config: dict[str, Any] = {
        "model": "segments",
        **_segment_option(args.segment),
        **_target_option(args.target),
    }
    if args.cross:
        cross = _segment_option(args.cross)
        config["cross-party"], config["cross-column"] = (
            cross["segment-party"],
            cross["segment-column"],
        )
    for option, key in (
        ("target_min", "target-min"),
        ("target_max", "target-max"),
        ("epsilon", "epsilon"),
        ("delta", "delta"),
        ("noise", "noise"),
        ("max_segments", "max-segments"),
    ):
        if getattr(args, option) is not None:
            config[key] = getattr(args, option)
    report, out = run_and_read(args, config, SEGMENTS_JSON)
    print_segments(console, report, Table)
    console.print(f"[bold]report[/] {out / SEGMENTS_HTML} (and {SEGMENTS_JSON})")
    return 0


def print_segments(console: Any, report: dict[str, Any], table_class: Any) -> None:
    """The segment table as a terminal table (``vfm local segments``, ``vfm demo``)."""
    target, statistic = report["target"], report["target"]["statistic"]
    table = table_class(
        "value",
        "customers",
        statistic,
        title=f"{statistic} of {target['party']}'s '{target['column']}' by "
        f"{report['segment']['party']}'s '{report['segment']['column']}'",
    )
    for cell in report["cells"]:
        if cell["suppressed"]:
            table.add_row(cell["segment"], "withheld", "")
        else:
            value = cell[statistic]
            shown = f"{100 * value:.1f}%" if statistic == "rate" else f"{value:,.2f}"
            table.add_row(cell["segment"], f"{cell['customers']:,}", shown)
    console.print(table)
    noise = report.get("noise")
    if noise:
        console.print(
            f"  noised: {noise['mechanism']}, epsilon {noise['epsilon']:g} charged to the budget"
        )


def cmd_budget(args: argparse.Namespace) -> int:
    """What remains of an agreement's privacy budget, from one party's (or the operator's)
    own audit log."""
    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.audit import PRIVACY_PHASE, event_details_of
    from vfm_flower.audit_verify import verify_audit_log
    from vfm_flower.party import audit_log_path
    from vfm_flower.privacy import total_spent

    agreement = SignedAgreement.load(args.agreement).agreement
    log = audit_log_path(Path(args.workdir).expanduser(), agreement.terms_hash())
    if agreement.privacy_epsilon is None:
        print(f"agreement {agreement.agreement_id} sets no privacy budget")  # noqa: T201
        return 0
    details: list[str] = []
    if log.is_file():
        result = verify_audit_log(log)
        if not result.ok:
            raise ConfigurationError(f"{log} does not verify: {result.reason}")
        details = event_details_of(log.read_bytes(), phase=PRIVACY_PHASE, decision="charged")
    spent = total_spent(details)
    print(  # noqa: T201
        f"privacy budget of agreement {agreement.agreement_id}: epsilon "
        f"{agreement.privacy_epsilon:g}, delta {agreement.privacy_delta:g}\n"
        f"spent ({len(details)} release(s), from {log}): epsilon {spent.epsilon:g}, "
        f"delta {spent.delta:g}\n"
        f"remaining: epsilon {max(agreement.privacy_epsilon - spent.epsilon, 0):g}, delta "
        f"{max(agreement.privacy_delta - spent.delta, 0):g}"
    )
    return 0


def register_budget(subparsers: argparse._SubParsersAction) -> None:
    budget = subparsers.add_parser(
        "budget", help="what remains of an agreement's privacy budget (from a work dir's log)"
    )
    budget.add_argument("--agreement", required=True, help="the signed agreement TOML")
    budget.add_argument(
        "--workdir", required=True, help="a party's (or the server's) work dir with its audit log"
    )
    budget.set_defaults(func=cmd_budget)


def register_local(local_sub: argparse._SubParsersAction, add_job_options: Any) -> None:
    """Add ``vfm local overlap`` and ``vfm local segments`` to the ``vfm local`` commands."""
    segments = local_sub.add_parser(
        "segments",
        help="customers and conversion rate (or a column's mean) per value of one column",
    )
    add_job_options(segments, model=False)
    segments.add_argument("--segment", metavar="PARTY:COLUMN", help="the column to group by")
    segments.add_argument(
        "--cross", metavar="PARTY:COLUMN", help="a second column to cross with the first"
    )
    segments.add_argument(
        "--target", metavar="PARTY:COLUMN", help="a numeric target (default: the label's rate)"
    )
    segments.add_argument("--target-min", type=float, help="clip the target below (agreement)")
    segments.add_argument("--target-max", type=float, help="clip the target above (agreement)")
    segments.add_argument("--epsilon", type=float, help="noise: epsilon charged to the budget")
    segments.add_argument("--delta", type=float, help="noise: delta (gaussian)")
    segments.add_argument("--noise", choices=("laplace", "gaussian"), help="noise mechanism")
    segments.add_argument("--max-segments", type=int, help="the most values (default 10)")
    segments.set_defaults(func=cmd_local_segments)
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

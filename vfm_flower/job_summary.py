"""The line a partner's own log gets at the end of every job: what ran, how it ended, what left.

A partner runs a SuperNode and rarely watches it; what it needs after each job is one line it
can grep: the job (its number in the collaboration, kind, operation, data set), the outcome
(done, or aborted: in which phase, under which rule, by whom), what this party released (the
names of the facts it sent the server in the clear, and the bytes of sealed payloads it sent
the other parties), what it received (the figures the job released to the server, which the
operator relays to every party at close, and results sealed to this party) and where its
outputs are (files the job wrote in its work dir).

The line is appended to ``WORK_DIR/vfm-party.log`` (:data:`PARTNER_LOG`, the partner's own
log, kept across jobs; the tamper-evident record is the audit log beside it) and logged at
INFO on the ``vfm_flower.partner`` logger, which a SuperNode's ClientApp process prints to its
standard error (:func:`vfm_flower.clients.vertical_party.VerticalParty`), so it appears in the
SuperNode's own output as well.

Who learns what: nothing here leaves the party. The outcome and the released figures come
from the operator's signed close request; the rest is this party's own state.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The partner's own log of job outcomes, one line per job, in its work dir.
PARTNER_LOG = "vfm-party.log"

logger = logging.getLogger("vfm_flower.partner")

#: Public reply fields that are protocol plumbing (nonces, hashes, heads), not releases.
PLUMBING_FACTS = frozenset(
    {
        "step",
        "nonce",
        "server_nonce",
        "agreement_hash",
        "job_digest",
        "audit_seq",
        "audit_head",
        "audit_head_sig",
    }
)

#: The figures the operator relays to every party at close (and every party keeps): the
#: job's headline outcome and row counts, the same for every party; the label owner's
#: own-data figures and anything else a kind releases to the server stay with the server.
RELAYED_FIGURES = frozenset(
    {
        "auc",
        "macro_auc",
        "accuracy",
        "r2",
        "rmse",
        "log_loss",
        "top_decile_lift",
        "joint_rows",
        "scored_rows",
    }
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: At most this many output files are named in the line (the rest are counted).
_MAX_OUTPUTS = 8


@dataclass(frozen=True)
class JobSummary:
    """One job, as the partner's log records it.

    Attributes
    ----------
    party : str
        This party.
    job : str
        ``"KIND OPERATION"`` (for example ``"logistic train"``).
    job_counter : int
        The job's number in the collaboration (as in every audit entry).
    outcome : str
        ``"done"``, or ``"aborted in phase P ..."`` / ``"refused by this party ..."``.
    data_set : str or None
        The data set the job named (``None``: the party's ``data-path``).
    released : tuple of str
        Names of the facts this party sent the server in the clear.
    sent_bytes, received_bytes : int
        Bytes of sealed payloads this party sent to, and received from, the other parties.
    received : Mapping[str, Any]
        The figures the job released (relayed by the operator at close).
    outputs : tuple of str
        Files this job wrote in the party's work dir, relative to it.
    work_dir : str
        The party's work dir.
    """

    party: str
    job: str
    job_counter: int
    outcome: str
    data_set: str | None = None
    released: tuple[str, ...] = ()
    sent_bytes: int = 0
    received_bytes: int = 0
    received: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    work_dir: str = ""

    def line(self) -> str:
        """The one line (no newline)."""
        data_set = f", data set '{self.data_set}'" if self.data_set else ""
        parts = [f"job {self.job_counter} ({self.job}{data_set}): {self.outcome}"]
        parts.append(
            "released to the server: " + (", ".join(self.released) if self.released else "nothing")
        )
        parts.append(
            f"sealed to parties: {_size(self.sent_bytes)} sent, {_size(self.received_bytes)} "
            "received"
        )
        if self.received:
            parts.append(
                "job released: " + ", ".join(_figure(k, v) for k, v in self.received.items())
            )
        if self.outputs:
            shown = list(self.outputs[:_MAX_OUTPUTS])
            more = len(self.outputs) - len(shown)
            listed = ", ".join(shown) + (f" and {more} more" if more else "")
            parts.append(f"outputs in {self.work_dir}: {listed}")
        else:
            parts.append("outputs: none")
        # one line, whatever the texts hold (an outcome comes from the operator)
        return _CONTROL.sub(" ", f"party '{self.party}' " + "; ".join(parts))


def released_facts(public: Iterable[str]) -> set[str]:
    """The names of the facts a reply releases in the clear (protocol plumbing left out)."""
    return {str(k) for k in public} - PLUMBING_FACTS


def outputs_since(work_dir: Path, since: float) -> tuple[str, ...]:
    """Files under ``work_dir`` written at or after ``since`` (a ``time.time()``), relative to
    it, sorted; audit logs, their certificates, the partner log and hidden files left out."""
    found: list[str] = []
    root = Path(work_dir)
    if not root.is_dir():
        return ()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.name == PARTNER_LOG or rel.name.startswith("audit-"):
            continue
        try:
            if path.stat().st_mtime >= since:
                found.append(rel.as_posix())
        except OSError:
            continue
    return tuple(found)


def record_job_summary(work_dir: Path, summary: JobSummary) -> Path:
    """Append the summary's line, with a UTC time stamp, to ``work_dir/vfm-party.log`` and log
    it (INFO, ``vfm_flower.partner``). A log that cannot be written is a warning, never a
    failure of the job: the audit log is the record."""
    line = summary.line()
    logger.info("%s", line)
    target = Path(work_dir) / PARTNER_LOG
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        with target.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {line}\n")
    except OSError as exc:
        logger.warning("could not append the job summary to %s: %s", target, exc)
    return target


def decode_released(value: Any) -> dict[str, int | float | str]:
    """The released figures of a close request (only :data:`RELAYED_FIGURES`), or
    ``{}`` when absent or malformed: the line is informational, the audit log is the record.
    At most 50 figures; texts cut at 200 characters."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, int | float | str] = {}
    for key, item in list(value.items())[:50]:
        if key not in RELAYED_FIGURES:
            continue
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            continue
        out[str(key)[:64]] = item[:200] if isinstance(item, str) else item
    return out


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} kB"
    return f"{n / 1024**2:.1f} MB"


def _figure(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key} {value:.3f}"
    return f"{key} {value}"

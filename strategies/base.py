"""``VerticalStrategy``: a built-in vertical job as one object, on top of ``VerticalSession``.

A strategy holds what to run (agreement, job, work dir, timeouts); ``start(grid, run_id)``
opens a :class:`~vfm_flower.strategies.session.VerticalSession` (hello and the agreement
checks on entry, the cross-signed close on exit, also on error) and calls ``run(session)``,
where the job drives its steps with the session's public API only (``align``, ``send``,
``secure_sum``, ``phase``, ``publish``). The built-in regressions are subclasses; a team's own
job can be one too, or just call ``vertical_session`` in its own ``@app.main()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from vfm_flower.agreement import SignedAgreement
from vfm_flower.jobs import Job, JobKind
from vfm_flower.strategies.session import VerticalSession
from vfm_flower.strategies.transport import JobResult


class VerticalStrategy(ABC):
    """Base class of the built-in vertical jobs (server side).

    Parameters
    ----------
    agreement : SignedAgreement
        The operator's copy of the signed agreement.
    job : Job
        What to run (kind, operation, every parameter); checked against the agreement by the
        server and by every party, and bound into the run key.
    workdir : Path
        Where the server keeps its audit log and its audit-signing key.
    **session_options
        Passed to :class:`VerticalSession` (``job_kind``, ``round_timeout``,
        ``party_wait_timeout``, ``poll_interval``, ``progress``).
    """

    def __init__(
        self, agreement: SignedAgreement, job: Job, *, workdir: Path, **session_options: Any
    ) -> None:
        self.signed = agreement
        self.agreement = agreement.agreement
        self.job = job
        self.workdir = Path(workdir)
        self.job_kind: JobKind | None = session_options.get("job_kind")
        self.session_options = session_options
        self.session: VerticalSession | None = None

    @abstractmethod
    def run(self, session: VerticalSession) -> None:
        """The job's steps, after hello (alignment, training, scoring...)."""

    def start(self, grid: Grid, flower_run_id: int) -> JobResult:
        """Run the whole job on ``grid``; raise ``ProtocolAbort`` naming who/what failed."""
        session = VerticalSession(
            grid,
            self.signed,
            self.job,
            run_id=flower_run_id,
            workdir=self.workdir,
            **self.session_options,
        )
        self.session = session
        with session:
            self.run(session)
        return session.result

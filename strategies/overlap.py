"""The overlap job (server side): three rounds, then the label owner's released counts.

Round 1 and 2 go to every party, round 3 to the label owner only
(:mod:`vfm_flower.steps.overlap`). The server relays envelopes and learns what the label owner
publishes: the overlap with each partner and across all parties (withheld below the minimum
intersection), the verdict and the number of released segment cells.
"""

from __future__ import annotations

from typing import Any

from vfm_flower.errors import ConfigurationError
from vfm_flower.jobs_builtin import OverlapParams
from vfm_flower.strategies.base import VerticalStrategy
from vfm_flower.strategies.session import VerticalSession


class VerticalOverlap(VerticalStrategy):
    """Overlap analysis: how many customers the parties share (counts only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.job.kind != "overlap":
            raise ConfigurationError(
                f"VerticalOverlap runs job kind 'overlap', not '{self.job.kind}'"
            )
        params = OverlapParams.from_job(self.job)
        params.check_holder(self.agreement.label_owner)
        if params.segment_party and params.segment_party not in self.agreement.party_names:
            raise ConfigurationError(
                f"segment-party '{params.segment_party}' is not a party of the agreement "
                f"(parties: {', '.join(self.agreement.party_names)})"
            )

    def run(self, session: VerticalSession) -> None:
        lo = session.label_owner
        with session.phase("overlap") as sizes:
            session.send("query.overlap", step=1)
            session.send("query.overlap", step=2)
            counted = session.send("query.overlap", to=[lo], step=3)[lo].public
            session.publish(**{k: v for k, v in counted.items() if k != "step"})
            joint = counted.get("joint_rows")
            if isinstance(joint, int) and not isinstance(joint, bool):
                session.result.joint_rows = sizes["joint_rows"] = joint

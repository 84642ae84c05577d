"""The segment statistics job (server side): alignment, then the rounds the roles need.

``H`` holds the segment column, ``G`` the target (:mod:`vfm_flower.steps.segments`): the label
owner encrypts; a passive target holder other than ``H`` forwards; ``H`` (or, for a segment
the label owner holds, ``G``) sums; then, for a passive ``H``, the label owner decides, asks
``H`` to test a larger withheld group while the withheld cells would reveal a small count,
and takes the masks of the released cells. The server follows the label owner's published
``segment_next`` and learns how many cells were released, never a value.
"""

from __future__ import annotations

from typing import Any

from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs_builtin import SegmentParams
from vfm_flower.strategies.base import VerticalStrategy
from vfm_flower.strategies.session import VerticalSession


class VerticalSegments(VerticalStrategy):
    """Segment statistics: customers and target mean per value of one party's column."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.job.kind != "segments":
            raise ConfigurationError(
                f"VerticalSegments runs job kind 'segments', not '{self.job.kind}'"
            )
        self.params = SegmentParams.from_job(self.job, self.agreement.label_owner)
        for what, party in (
            ("cross", self.params.cross_party or self.agreement.label_owner),
            ("segment", self.params.segment_party),
            ("target", self.params.target_party),
        ):
            if party not in self.agreement.party_names:
                raise ConfigurationError(
                    f"{what}-party '{party}' is not a party of the agreement "
                    f"(parties: {', '.join(self.agreement.party_names)})"
                )

    def run(self, session: VerticalSession) -> None:
        lo = session.label_owner
        holder, target = self.params.aggregator(lo), self.params.target_party
        session.align()
        with session.phase("segments") as sizes:
            reply = session.send("query.segment_encrypt", to=[lo])[lo].public
            if reply.get("segment_next") == "done":
                return self._done(session, reply, sizes)
            if holder is None:  # the label owner holds every column
                session.send("query.segment_sums", to=[target])
                reply = session.send("query.segment_table", to=[lo])[lo].public
                return self._done(session, reply, sizes)
            splitter = self.params.splitter(lo)
            if target not in (lo, holder, splitter):
                session.send("query.segment_forward", to=[target])
            if splitter is not None:  # a cross of two partners' columns
                session.send("query.segment_split", to=[splitter])
            session.send("query.segment_sums", to=[holder])
            step = 1
            reply = session.send("query.segment_decide", to=[lo], step=step)[lo].public
            while reply.get("segment_next") == "merge":
                step += 1
                if step > self.params.max_segments + 1:
                    raise ProtocolAbort("segments", lo, "the withheld cells did not settle")
                session.send("query.segment_merge", to=[holder], step=step)
                reply = session.send("query.segment_decide", to=[lo], step=step)[lo].public
            if reply.get("segment_next") == "reveal":
                params = {"decided": step}
                session.send("query.segment_reveal", to=[holder], step=step + 1, params=params)
                reply = session.send("query.segment_table", to=[lo], step=step + 1)[lo].public
            self._done(session, reply, sizes)

    @staticmethod
    def _done(session: VerticalSession, reply: dict, sizes: dict) -> None:
        if reply.get("segment_next") != "done":
            raise ProtocolAbort("segments", session.label_owner, "the table was not written")
        session.publish(segment_cells=reply.get("segment_cells"))
        sizes["segment_cells"] = int(reply.get("segment_cells") or 0)

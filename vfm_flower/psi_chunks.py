"""The alignment's chunk schedule: which message round carries which block of blinded ids.

A set of ten million ids is 320 MB of blinded points. The Flower alignment
(:mod:`vfm_flower.steps.alignment`) never puts a whole set into one message: each party
keeps its blinded set in its spool (:mod:`vfm_flower.psi_stream`) and sends it one chunk of
``chunk_ids`` points per round, so a message, the SuperNode holding it and the party opening
it each hold one chunk at a time. The rounds are pipelined, each party doing its part of a
chunk as soon as it arrives:

========  ==========================================================================
round s   label owner (LO)                     passive party P_k
========  ==========================================================================
1         blinds its set; sends X^a chunk 0    blinds and shuffles its set; sends Y^b chunk 0
s         sends X^a chunk s-1;                 sends Y^b chunk s-1;
          re-blinds Y^b chunk s-2 (kept);      re-blinds X^a chunk s-2 and sends it back
          keeps X^ab chunk s-3
last      matches (the minimum-intersection gate, the common order)
========  ==========================================================================

Who learns what: the schedule is a function of the set sizes and ``chunk_ids`` alone, and
the set sizes are public already (the signed hellos), so the chunking tells the server and
the parties nothing new. Each party computes the schedule from the signed hellos itself and
refuses a chunk whose size or round differs from it (:meth:`ChunkSchedule.chunk_rows`); the
envelopes bind every chunk to its round and topic, so a chunk replayed, moved to another
round or left out is refused.

Why ``2**20`` ids per chunk by default: 32 MiB of points, the size the Deployment Engine was
measured to carry to three nodes each way (FLOWER_NOTES), and 10 rounds for ten million ids,
where one round costs about 6 s of Flower latency against about 40 s of blinding per chunk.
With one chunk per set (sets up to ``chunk_ids``), the schedule is the three rounds of the
unchunked protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfm_flower.errors import DataError, PolicyViolation
from vfm_flower.psi_group import POINT_BYTES

__all__ = [
    "DEFAULT_CHUNK_IDS",
    "MAX_CHUNK_IDS",
    "MIN_CHUNK_IDS",
    "ChunkSchedule",
    "check_chunk_ids",
    "join_chunk_files",
    "read_chunk",
]

#: Ids per alignment message: 32 MiB of blinded points.
DEFAULT_CHUNK_IDS = 1 << 20
#: Bounds of the run-config ``align-chunk-ids``: below 256 ids a round costs more than its
#: work; above 2**22 (128 MiB of points) a message no longer fits the memory bound.
MIN_CHUNK_IDS = 1 << 8
MAX_CHUNK_IDS = 1 << 22


def check_chunk_ids(value: object) -> int:
    """The chunk size, validated (an integer in ``[MIN_CHUNK_IDS, MAX_CHUNK_IDS]``).

    Raises
    ------
    PolicyViolation
        Rule ``"align_chunk_ids"``: not an integer, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise PolicyViolation(
            "align_chunk_ids", f"must be an integer number of ids, got {type(value).__name__}"
        )
    if not MIN_CHUNK_IDS <= int(value) <= MAX_CHUNK_IDS:
        raise PolicyViolation(
            "align_chunk_ids",
            f"{int(value)} ids per message is outside [{MIN_CHUNK_IDS}, {MAX_CHUNK_IDS}]",
        )
    return int(value)


@dataclass(frozen=True)
class ChunkSchedule:
    """The rounds of a chunked alignment, from the public set sizes.

    Parameters
    ----------
    rows : mapping of str to int
        Every party's number of ids (from the signed hellos).
    label_owner : str
        The LO's name (it must be in ``rows``).
    chunk_ids : int
        Ids per message (:func:`check_chunk_ids`).
    """

    rows: Mapping[str, int]
    label_owner: str
    chunk_ids: int = DEFAULT_CHUNK_IDS

    def __post_init__(self) -> None:
        check_chunk_ids(self.chunk_ids)
        if self.label_owner not in self.rows or len(self.rows) < 2:
            raise DataError("an alignment needs the label owner and at least one passive party")
        for party, count in self.rows.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise DataError(f"party '{party}' declared no ids to align")

    @property
    def passive_parties(self) -> list[str]:
        return sorted(p for p in self.rows if p != self.label_owner)

    def chunks(self, party: str) -> int:
        """How many chunks ``party``'s blinded set takes."""
        return math.ceil(self.rows[party] / self.chunk_ids)

    def chunk_rows(self, party: str, index: int) -> tuple[int, int]:
        """``(first row, row count)`` of chunk ``index`` of ``party``'s set."""
        if not 0 <= index < self.chunks(party):
            raise DataError(f"party '{party}' has no alignment chunk {index}")
        start = index * self.chunk_ids
        return start, min(self.chunk_ids, self.rows[party] - start)

    @property
    def passive_last_round(self) -> int:
        """A passive party's last round: its last chunk sent, the LO's last one re-blinded."""
        most = max(self.chunks(p) for p in self.passive_parties)
        return max(self.chunks(self.label_owner) + 1, most)

    def rounds_of(self, party: str) -> int:
        """``party``'s last round with work: the match for the LO; for a passive party its
        last chunk sent or the LO's last one returned."""
        if party == self.label_owner:
            return self.match_round
        return max(self.chunks(self.label_owner) + 1, self.chunks(party))

    @property
    def match_round(self) -> int:
        """The LO's last round: every chunk of both directions is in, it matches."""
        most = max(self.chunks(p) for p in self.passive_parties)
        return max(self.chunks(self.label_owner) + 2, most + 1)

    def parties_in_round(self, round: int) -> list[str]:
        """Who gets a message in ``round`` (every party, in the order of ``rows``, then the LO
        alone)."""
        if not 1 <= round <= self.match_round:
            raise DataError(f"the alignment has no round {round}")
        if round <= self.passive_last_round:
            return list(self.rows)
        return [self.label_owner]

    # --- what each round carries (``None``: nothing) ------------------------------------------
    def label_owner_chunk_sent(self, round: int) -> int | None:
        """Chunk of ``X^a`` the LO sends in ``round``."""
        return round - 1 if round - 1 < self.chunks(self.label_owner) else None

    def passive_chunk_sent(self, party: str, round: int) -> int | None:
        """Chunk of ``Y_k^b`` passive party ``party`` sends in ``round``."""
        return round - 1 if round - 1 < self.chunks(party) else None

    def label_owner_chunk_returned(self, round: int) -> int | None:
        """Chunk of ``X^a`` a passive party receives, re-blinds and returns in ``round``
        (sent by the LO in the round before)."""
        index = round - 2
        return index if 0 <= index < self.chunks(self.label_owner) else None

    def passive_chunk_received(self, party: str, round: int) -> int | None:
        """Chunk of ``Y_k^b`` the LO receives (and re-blinds) in ``round``."""
        index = round - 2
        return index if 0 <= index < self.chunks(party) else None

    def double_chunk_received(self, round: int) -> int | None:
        """Chunk of ``X^{ab_k}`` the LO receives from every passive party in ``round``."""
        index = round - 3
        return index if 0 <= index < self.chunks(self.label_owner) else None


def read_chunk(path: Path, first_row: int, count: int) -> np.ndarray:
    """Records ``first_row .. first_row + count`` of a points file, as ``(count, 32)`` uint8."""
    with path.open("rb") as handle:
        handle.seek(first_row * POINT_BYTES)
        data = handle.read(count * POINT_BYTES)
    if len(data) != count * POINT_BYTES:
        raise DataError(f"{path.name} holds fewer than {first_row + count} points: truncated")
    return np.frombuffer(data, dtype=np.uint8).reshape(count, POINT_BYTES)


def join_chunk_files(parts: list[Path], out: Path) -> int:
    """Concatenate chunk files into ``out`` (written as ``.partial``, then renamed), removing
    the parts; returns the record count. A missing part is an error naming it."""
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise DataError(f"alignment chunk file(s) {', '.join(missing[:3])} missing")
    partial = out.with_name(out.name + ".partial")
    size = 0
    try:
        with partial.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 24):
                        sink.write(block)
                        size += len(block)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    if size % POINT_BYTES:
        raise DataError(f"{out.name}: {size} bytes is not a whole number of points")
    return size // POINT_BYTES

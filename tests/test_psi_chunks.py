"""The alignment's chunk schedule (vfm_flower.psi_chunks): rounds from the set sizes."""

from __future__ import annotations

import numpy as np
import pytest

from vfm_flower.errors import DataError, PolicyViolation
from vfm_flower.psi_chunks import ChunkSchedule, check_chunk_ids, join_chunk_files, read_chunk


def test_one_chunk_per_set_is_the_three_rounds_of_the_unchunked_protocol():
    schedule = ChunkSchedule({"lo": 1000, "p1": 900, "p2": 1024}, "lo", 1024)
    assert schedule.match_round == 3 and schedule.passive_last_round == 2
    assert schedule.parties_in_round(1) == ["lo", "p1", "p2"]
    assert schedule.parties_in_round(3) == ["lo"]


def test_every_chunk_is_sent_received_and_returned_exactly_once():
    rows = {"lo": 2_600, "p1": 700, "p2": 5_000}
    schedule = ChunkSchedule(rows, "lo", 256)
    rounds = range(1, schedule.match_round + 1)
    sent = [schedule.label_owner_chunk_sent(r) for r in rounds]
    returned = [schedule.label_owner_chunk_returned(r) for r in rounds]
    kept = [schedule.double_chunk_received(r) for r in rounds]
    lo_chunks = list(range(schedule.chunks("lo")))
    for seq in (sent, returned, kept):
        assert [c for c in seq if c is not None] == lo_chunks
    for party in ("p1", "p2"):
        out = [schedule.passive_chunk_sent(party, r) for r in rounds]
        into = [schedule.passive_chunk_received(party, r) for r in rounds]
        assert [c for c in out if c is not None] == list(range(schedule.chunks(party)))
        assert [c for c in into if c is not None] == list(range(schedule.chunks(party)))
        # a passive party's work ends by its last round; the LO's gets everything by the match
        assert all(
            r <= schedule.passive_last_round
            for r in rounds
            if schedule.passive_chunk_sent(party, r) is not None
            or schedule.label_owner_chunk_returned(r) is not None
        )
    assert sum(schedule.chunk_rows("p2", j)[1] for j in range(schedule.chunks("p2"))) == 5_000
    assert schedule.match_round == max(11 + 2, 20 + 1)


def test_bad_chunk_sizes_and_sets_refused():
    for bad in (100, 1 << 23, 2.5, True, "1024"):
        with pytest.raises(PolicyViolation, match="align_chunk_ids"):
            check_chunk_ids(bad)
    with pytest.raises(DataError, match="label owner"):
        ChunkSchedule({"lo": 10}, "lo", 256)
    with pytest.raises(DataError, match="p1"):
        ChunkSchedule({"lo": 10, "p1": 0}, "lo", 256)
    with pytest.raises(DataError, match="no alignment chunk"):
        ChunkSchedule({"lo": 10, "p1": 10}, "lo", 256).chunk_rows("lo", 1)


def test_chunk_files_read_and_joined(tmp_path):
    points = np.arange(32 * 10, dtype=np.uint8).reshape(10, 32)
    source = tmp_path / "first.pts"
    source.write_bytes(points.tobytes())
    assert np.array_equal(read_chunk(source, 4, 3), points[4:7])
    with pytest.raises(DataError, match="truncated"):
        read_chunk(source, 8, 3)
    parts = [tmp_path / f"part.{j}" for j in range(3)]
    for j, part in enumerate(parts):
        part.write_bytes(points[j * 4 : j * 4 + 4].tobytes())
    assert join_chunk_files(parts, tmp_path / "all.pts") == 10
    assert (tmp_path / "all.pts").read_bytes() == points.tobytes()
    assert not any(p.exists() for p in parts)
    with pytest.raises(DataError, match="missing"):
        join_chunk_files([tmp_path / "nope.0"], tmp_path / "x.pts")

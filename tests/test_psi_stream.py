"""The streamed alignment (vfm_flower.psi_stream): the in-memory protocol's result, through
files, with many blocks and buckets; its refusals; its shuffle is a uniform permutation."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from vfm_flower import psi_stream
from vfm_flower.errors import DataError, PolicyViolation
from vfm_flower.psi import PsiSecret, psi_domain
from vfm_flower.psi_stream import (
    AlignmentSpool,
    align_streaming,
    shuffle_records,
    stream_first_blind,
    stream_second_blind,
)

DOMAIN = psi_domain("a" * 32, "run-1")


def _blocks(ids, size):
    return lambda: (ids[i : i + size] for i in range(0, len(ids), size))


@pytest.fixture
def small_buckets(monkeypatch):
    """Many buckets on small sets: 64 records per bucket, reads of 100 records."""
    monkeypatch.setattr(psi_stream, "BUCKET_RECORDS", 64)
    monkeypatch.setattr(psi_stream, "DEFAULT_BLOCK_IDS", 100)


@pytest.mark.parametrize("passives", [1, 2])
def test_the_streamed_alignment_is_the_set_intersection_in_one_order(
    tmp_path, small_buckets, passives
):
    rng = np.random.default_rng(passives)
    universe = [f"user{i}@example.com" for i in range(3000)]
    sets = {"lo": rng.choice(universe, 1500, replace=False).tolist()}
    for k in range(passives):
        sets[f"p{k}"] = rng.choice(universe, 1700, replace=False).tolist()
    rows = align_streaming(
        {p: _blocks(ids, 333) for p, ids in sets.items()},
        "lo",
        domain=DOMAIN,
        workdir=tmp_path,
    )
    joint = set(sets["lo"]).intersection(*(set(v) for p, v in sets.items() if p != "lo"))
    ordered = [sets["lo"][r] for r in rows["lo"]]
    assert set(ordered) == joint and len(ordered) == len(joint)
    for party, ids in sets.items():
        assert [ids[r] for r in rows[party]] == ordered  # same customer, same position
    assert list(tmp_path.iterdir()) == []  # every spool is removed


def test_a_duplicate_across_blocks_is_refused_with_its_rows(tmp_path):
    ids = [f"u{i}" for i in range(500)]
    ids[420] = ids[7]
    with AlignmentSpool(tmp_path) as spool:
        assert stat.S_IMODE(os.stat(spool.root).st_mode) == 0o700
        with pytest.raises(DataError, match=r"party 'p1' has duplicate ids.*rows 8, 421"):
            stream_first_blind(
                _blocks(ids, 100)(), DOMAIN, PsiSecret.generate(), spool,
                party="p1", label_owner=False,
            )  # fmt: skip


def test_the_gate_the_set_size_and_malformed_files_are_refused(tmp_path, small_buckets):
    a = [f"a{i}" for i in range(300)]
    b = [f"a{i}" for i in range(290, 600)]
    with pytest.raises(PolicyViolation, match="min_intersection"):
        align_streaming(
            {"lo": _blocks(a, 100), "p": _blocks(b, 100)}, "lo", domain=DOMAIN,
            min_intersection=11, workdir=tmp_path,
        )  # fmt: skip
    with pytest.raises(PolicyViolation, match="max_set_size"):
        align_streaming(
            {"lo": _blocks(a, 100), "p": _blocks(b, 100)}, "lo", domain=DOMAIN,
            max_set_size=299, workdir=tmp_path,
        )  # fmt: skip
    with AlignmentSpool(tmp_path) as spool:
        bad = spool.path("in.pts")
        bad.write_bytes(b"\x00" * 33)
        with pytest.raises(DataError, match="not a multiple of 32"):
            stream_second_blind(
                bad, PsiSecret.generate(), spool.path("o"), sender="lo", max_set_size=10
            )
        bad.write_bytes(b"\x09" * 31 + b"\x80")
        with pytest.raises(DataError, match="not canonical"):
            stream_second_blind(
                bad, PsiSecret.generate(), spool.path("o"), sender="lo", max_set_size=10
            )
        bad.write_bytes(b"\x09" * 32 * 11)
        with pytest.raises(PolicyViolation, match="max_set_size"):
            stream_second_blind(
                bad, PsiSecret.generate(), spool.path("o"), sender="lo", max_set_size=10
            )


def test_a_passive_reply_is_checked_against_the_label_owner_set(tmp_path, small_buckets):
    """P_k's X^ab must hold exactly the LO's number of records, each canonical; a refused
    input leaves no half-written output, and the first blind leaves nothing on failure."""
    secret = PsiSecret.generate()
    with AlignmentSpool(tmp_path) as spool:
        lo = stream_first_blind(
            _blocks([f"a{i}" for i in range(150)], 50)(), DOMAIN, secret, spool,
            party="lo", label_owner=True,
        )  # fmt: skip
        double = spool.path("double.pts")
        stream_second_blind(lo.message, secret, double, sender="lo", max_set_size=1000)
        inflated = spool.path("inflated.pts")
        inflated.write_bytes(double.read_bytes() * 2)
        with pytest.raises(DataError, match="returned 300 doubly blinded label-owner ids"):
            psi_stream.match_streamed(
                {"p": inflated}, {"p": double}, min_intersection=0, label_owner_rows=150,
                spool=spool,
            )  # fmt: skip
        tampered = bytearray(double.read_bytes())
        tampered[32 * 120 + 31] |= 0x80
        inflated.write_bytes(bytes(tampered))
        with pytest.raises(DataError, match=r"not canonical.*first row: 121"):
            psi_stream.match_streamed(
                {"p": inflated}, {"p": double}, min_intersection=0, label_owner_rows=150,
                spool=spool,
            )  # fmt: skip
        out = spool.path("out.pts")
        with pytest.raises(DataError, match=r"first row: 121"):
            stream_second_blind(inflated, secret, out, sender="p", max_set_size=1000)
        assert not out.exists() and not list(spool.root.glob("*.partial"))
    with AlignmentSpool(tmp_path) as spool:
        ids = [f"b{i}" for i in range(150)]
        ids[130] = 7  # not a string: refused with its row in the whole set, not in the block
        with pytest.raises(DataError, match="row 131 "):
            stream_first_blind(
                _blocks(ids, 50)(), DOMAIN, secret, spool, party="p", label_owner=False
            )
        assert list(spool.root.iterdir()) == []  # own.pts (row order) is gone


def test_a_fixed_spool_is_made_private(tmp_path):
    root = tmp_path / "spool"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    AlignmentSpool.at(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_the_bucketed_shuffle_is_a_uniform_permutation(tmp_path, monkeypatch):
    """8 records in 4 buckets: every record lands at every position about equally often."""
    monkeypatch.setattr(psi_stream, "BUCKET_RECORDS", 2)
    records = np.repeat(np.arange(8, dtype=np.uint8)[:, None], 32, axis=1)
    counts = np.zeros((8, 8))
    runs = 1600
    with AlignmentSpool(tmp_path) as spool:
        source = spool.path("src")
        source.write_bytes(records.tobytes())
        for _ in range(runs):
            shuffle_records(source, spool.path("msg"), spool.path("perm.npy"), spool, block=3)
            perm = np.load(spool.path("perm.npy"))
            out = np.fromfile(spool.path("msg"), dtype=np.uint8).reshape(-1, 32)
            assert sorted(perm.tolist()) == list(range(8))
            assert np.array_equal(out, records[perm])
            counts[perm, np.arange(8)] += 1
    expected = runs / 8
    # each cell is Binomial(1600, 1/8): sd 13.2; 5 sd over 64 cells
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(runs * (1 / 8) * (7 / 8)))

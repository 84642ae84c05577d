"""Large per-run state arrays live in the party's work directory, not in ``context.state``
(vfm_flower.state.StateFiles): round trip, refusals, crash safety, clean-up, and a whole job
with every array in files giving the same result as with every array in the record."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

from vfm_flower import state as state_module
from vfm_flower.errors import ProtocolAbort
from vfm_flower.state import StateFiles


def test_large_arrays_go_to_checked_files_and_small_ones_stay(tmp_path):
    files = StateFiles(tmp_path / "run-1", min_bytes=1000)
    big = np.arange(500, dtype=np.int64)  # 4,000 bytes
    small = np.arange(10, dtype=np.float64)
    kept, refs = files.store({"big": big, "small": small})
    assert list(kept) == ["small"] and list(refs) == ["big"]
    assert stat.S_IMODE(os.stat(tmp_path / "run-1").st_mode) == 0o700
    path = refs["big"].split("|")[0]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert np.array_equal(files.load(refs)["big"], big)
    # a changed file is refused, a missing one too
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ProtocolAbort, match="changed on disk"):
        files.load(refs)
    os.unlink(path)
    with pytest.raises(ProtocolAbort, match="cannot be read"):
        files.load(refs)


def test_a_reference_outside_the_run_directory_is_refused(tmp_path):
    other = StateFiles(tmp_path / "run-3", min_bytes=8)
    _, refs = other.store({"a": np.arange(100)})
    mine = StateFiles(tmp_path / "run-4", min_bytes=8)
    with pytest.raises(ProtocolAbort, match="not a file of this run"):
        mine.load(refs)  # another run's (valid) file
    path, _, digest = refs["a"].rpartition("|")
    with pytest.raises(ProtocolAbort, match="not a file of this run"):
        other.load({"a": f"{path}|{'0' * 64}"})  # name and digest disagree


def test_an_existing_directory_is_made_private(tmp_path):
    (tmp_path / "run-5").mkdir(mode=0o755)
    os.chmod(tmp_path / "run-5", 0o755)
    StateFiles(tmp_path / "run-5", min_bytes=8).store({"a": np.arange(100)})
    assert stat.S_IMODE(os.stat(tmp_path / "run-5").st_mode) == 0o700


def test_an_unchanged_array_is_not_rewritten_but_a_damaged_file_is(tmp_path):
    files = StateFiles(tmp_path / "run-2", min_bytes=8)
    _, first = files.store({"a": np.arange(100)})
    path = first["a"].split("|")[0]
    os.utime(path, ns=(1, 1))
    _, again = files.store({"a": np.arange(100)})
    assert again == first and os.stat(path).st_mtime_ns == 1
    with open(path, "r+b") as handle:  # truncated (e.g. a rename not flushed before a crash)
        handle.truncate(10)
    _, repaired = files.store({"a": np.arange(100)})
    assert np.array_equal(files.load(repaired)["a"], np.arange(100))


def test_a_save_that_never_committed_leaves_the_state_readable(tmp_path):
    files = StateFiles(tmp_path / "run-6", min_bytes=8)
    _, committed = files.store({"a": np.arange(100), "b": np.arange(200)})
    files.collect(committed)
    _, lost = files.store({"a": np.arange(100) + 1})  # its record never reached the node
    assert np.array_equal(files.load(committed)["b"], np.arange(200))
    files.collect(committed)  # the next message's load: the lost save's file goes
    names = sorted(p.name for p in (tmp_path / "run-6").iterdir())
    assert names == sorted(r.split("|")[0].rsplit("/", 1)[1] for r in committed.values())
    assert lost["a"].split("|")[0].rsplit("/", 1)[1] not in names
    files.collect({})  # nothing referenced any more: the directory goes
    assert not (tmp_path / "run-6").exists()


def test_stale_runs_are_swept_and_the_current_one_kept(tmp_path):
    old = StateFiles(tmp_path / "run-7", min_bytes=8)
    old.store({"a": np.arange(100)})
    week_ago = time.time() - state_module.STATE_RETENTION_SECONDS - 60
    os.utime(tmp_path / "run-7", (week_ago, week_ago))
    (tmp_path / "notes").mkdir()
    os.utime(tmp_path / "notes", (week_ago, week_ago))
    current = StateFiles(tmp_path / "run-8", min_bytes=8)
    current.store({"a": np.arange(100)})
    assert current.sweep_stale_runs() == [tmp_path / "run-7"]
    assert (tmp_path / "run-8").is_dir() and (tmp_path / "notes").is_dir()


def test_a_job_with_every_array_in_files_gives_the_same_result(tmp_path, monkeypatch):
    from tests.conftest import make_collaboration, synthetic_frames
    from vfm_flower.clients import vertical_party

    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=3)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    config = {"job": "train", "max-iterations": 4, "holdout-seed": 5}
    reference = collab.run(workdir=tmp_path / "w0", **config)
    monkeypatch.setattr(state_module, "STATE_FILE_MIN_BYTES", 0)
    seen: dict[str, int] = {}
    real_save = vertical_party.save_state

    def save_state(context, state, files=None):  # every message's record, as saved
        real_save(context, state, files)
        party = context.node_config["party"]
        assert len(context.state["vfm.arrays"]) == 0  # nothing set-sized in the record
        work = (tmp_path / "w1" / "parties" / party / "state").resolve()
        refs = context.state["vfm.files"].values()
        assert all(str(v).startswith(str(work)) for v in refs)
        seen[party] = max(seen.get(party, 0), len(refs))

    monkeypatch.setattr(vertical_party, "save_state", save_state)
    grids: list = []
    result = collab.run(workdir=tmp_path / "w1", grid_out=grids, **config)
    assert result["public"] == reference["public"]  # same AUC, loss, iterations, headline
    assert set(seen) == {"lo", "p1", "p2"} and min(seen.values()) > 0
    for party in seen:  # after the seal, the run's state files are gone
        assert not list((tmp_path / "w1" / "parties" / party / "state").glob("run-*"))
    for context in grids[0].contexts.values():
        assert len(context.state["vfm.files"]) == 0


def test_a_file_is_read_only_when_a_step_asks_for_its_array(tmp_path, monkeypatch):
    """Lazy state: an array no step reads keeps its reference unread at the next save; the
    first read checks the digest (a damaged file is refused then); a read array is writable
    and is the array stored."""
    files = StateFiles(tmp_path / "run-1", min_bytes=1000)
    tokens = np.arange(4000, dtype=np.uint8)
    joint = np.arange(600, dtype=np.int64)
    _, refs = files.store({"tokens": tokens, "joint": joint})
    reads = []
    original = StateFiles._read
    monkeypatch.setattr(
        StateFiles, "_read", lambda self, key, ref: reads.append(key) or original(self, key, ref)
    )
    arrays = files.load_lazily(refs, {"small": np.zeros(3)})
    state = state_module.PartyState(arrays=arrays)
    assert "tokens" in state and "joint" in state and reads == []
    assert sorted(state.array_keys()) == ["joint", "small", "tokens"]
    got = state.array("joint")
    assert np.array_equal(got, joint) and reads == ["joint"]
    got[0] = 7  # writable, over the one buffer read
    state.set_array("new", np.ones(200, dtype=np.int64))
    kept, refs2 = files.store(state.arrays)
    assert reads == ["joint"]  # tokens was never read, and keeps its reference
    assert refs2["tokens"] == refs["tokens"] and refs2["joint"] != refs["joint"]
    assert set(kept) == {"small"} and set(refs2) == {"tokens", "joint", "new"}
    # a damaged file is refused when first read
    path = refs["tokens"].split("|")[0]
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    later = state_module.PartyState(arrays=files.load_lazily(refs2))
    with pytest.raises(ProtocolAbort, match="changed on disk"):
        later.array("tokens")
    # a reference outside the run's directory is refused at once, before any step
    with pytest.raises(ProtocolAbort, match="not a file of this run"):
        files.load_lazily({"x": f"/etc/passwd|{'0' * 64}"})


def test_lazy_state_refusals_and_reads(tmp_path):
    """A missing or non-regular referenced file is refused at load (never carried forward);
    a refused read keeps its key; a dropped array is not read; a malformed header is refused."""
    files = StateFiles(tmp_path / "run-1", min_bytes=1000)
    _, refs = files.store({"a": np.arange(600, dtype=np.int64), "b": np.ones(600)})
    os.unlink(refs["a"].split("|")[0])
    with pytest.raises(ProtocolAbort, match="'a' cannot be read"):
        files.load_lazily(refs)
    _, refs = files.store({"a": np.arange(600, dtype=np.int64)})
    arrays = files.load_lazily({**refs})
    path = refs["a"].split("|")[0]
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ProtocolAbort, match="changed on disk"):
        arrays["a"]
    assert "a" in arrays and arrays.unread_references() == refs  # not lost by the refusal
    state = state_module.PartyState(arrays=arrays)
    state.drop_array("a")  # a damaged file is not read to be dropped
    assert "a" not in state and files.store(state.arrays) == ({}, {})
    # a file whose header promises more than it holds (named by its own digest)
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.arange(600, dtype=np.int64))
    short = buffer.getvalue()[:-8]
    digest = hashlib.sha256(short).hexdigest()
    (tmp_path / "run-1" / f"{digest}.npy").write_bytes(short)
    ref = f"{(tmp_path / 'run-1' / f'{digest}.npy').resolve()}|{digest}"
    with pytest.raises(ProtocolAbort, match="not a whole array"):
        files.load_lazily({"c": ref})["c"]

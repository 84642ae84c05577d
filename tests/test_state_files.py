"""Large per-run state arrays live in the party's work directory, not in ``context.state``
(vfm_flower.state.StateFiles): round trip, refusals, clean-up, and a whole job with every
array in files giving the same model as with every array in the record."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from vfm_flower import state as state_module
from vfm_flower.clients.vertical_party import load_state
from vfm_flower.errors import ProtocolAbort
from vfm_flower.state import StateFiles


def test_large_arrays_go_to_checked_files_and_small_ones_stay(tmp_path):
    files = StateFiles(tmp_path / "run-1", min_bytes=1000)
    big = np.arange(500, dtype=np.int64)  # 4,000 bytes
    small = np.arange(10, dtype=np.float64)
    kept, refs = files.store({"big": big, "small": small})
    assert list(kept) == ["small"] and list(refs) == ["big"]
    assert stat.S_IMODE(os.stat(tmp_path / "run-1").st_mode) == 0o700
    assert np.array_equal(StateFiles.load(refs)["big"], big)
    # a changed file is refused, a missing one too
    path = refs["big"].split("|")[0]
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ProtocolAbort, match="changed on disk"):
        StateFiles.load(refs)
    os.unlink(path)
    with pytest.raises(ProtocolAbort, match="cannot be read"):
        StateFiles.load(refs)


def test_unreferenced_files_and_an_empty_directory_are_removed(tmp_path):
    files = StateFiles(tmp_path / "run-2", min_bytes=8)
    _, first = files.store({"a": np.arange(100), "b": np.arange(200)})
    _, second = files.store({"a": np.arange(100)})  # b gone: its file goes
    assert second["a"] == first["a"]
    assert sorted(p.name for p in (tmp_path / "run-2").iterdir()) == [
        first["a"].split("|")[0].rsplit("/", 1)[1]
    ]
    files.store({"small": np.arange(0)})
    assert not (tmp_path / "run-2").exists()


def test_a_job_with_every_array_in_files_trains_the_same_model(tmp_path, monkeypatch):
    from tests.conftest import make_collaboration, synthetic_frames

    frames, _ = synthetic_frames(n_shared=150, n_only=10, seed=3)
    collab = make_collaboration(tmp_path / "c", frames, label_owner="lo", min_intersection=50)
    config = {"job": "train", "max-iterations": 4, "holdout-seed": 5}
    in_record: list = []
    reference = collab.run(workdir=tmp_path / "w0", grid_out=in_record, **config)
    monkeypatch.setattr(state_module, "STATE_FILE_MIN_BYTES", 0)
    in_files: list = []
    result = collab.run(workdir=tmp_path / "w1", grid_out=in_files, **config)
    assert result["public"] == reference["public"]  # same AUC, loss, iterations, headline
    for context in in_files[0].contexts.values():
        assert len(context.state["vfm.arrays"]) == 0  # nothing set-sized in the record
        assert len(context.state["vfm.files"]) > 0
        work = tmp_path / "w1" / "parties" / context.node_config["party"]
        assert all(
            str(v).startswith(str(work.resolve())) for v in context.state["vfm.files"].values()
        )
    states = {c.node_config["party"]: load_state(c) for c in in_files[0].contexts.values()}
    before = {c.node_config["party"]: load_state(c) for c in in_record[0].contexts.values()}
    for party, restored in states.items():
        assert sorted(restored.array_keys()) == sorted(before[party].array_keys())

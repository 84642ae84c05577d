"""A party's own input checks: one clear error (or warning) that names what to fix, early."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from tests.conftest import governed_collab
from vfm_flower.errors import DataError, ProtocolAbort
from vfm_flower.preparation import fit_preparation
from vfm_flower.tables import MAX_ID_LENGTH, read_party_table

FAST = {"max-iterations": 2}


def test_an_over_long_id_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "bank.csv"
    ids = [f"u{i}@example.com" for i in range(6)]
    ids[3] = "x" * (MAX_ID_LENGTH + 1)
    pd.DataFrame({"email": ids, "x": range(6)}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"longer than 256 characters.*lines 5\)") as info:
        read_party_table(path, party="bank", id_columns=["email"])
    assert "x" * 20 not in str(info.value)  # the value itself is never shown


def test_an_over_long_id_ends_the_job_at_hello(tmp_path):
    collab = governed_collab(tmp_path, 91)
    frame = pd.read_csv(collab.data["p1"], dtype=str, keep_default_na=False)
    id_column = frame.columns[0]
    frame.loc[0, id_column] = "a" * 1_000_000
    frame.to_csv(collab.data["p1"], index=False)
    with pytest.raises(ProtocolAbort, match=r"'hello'.*'p1'.*longer than 256"):
        collab.run(job="train", **FAST)


def _dirty(share_junk: float, share_missing: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    values = rng.normal(size=400).round(3).astype(str).astype(object)
    values[: int(share_junk * 400)] = "n/a?"
    values[int(share_junk * 400) : int((share_junk + share_missing) * 400)] = None
    return pd.DataFrame({"spend": values})


def test_the_junk_threshold_is_a_named_job_parameter(tmp_path):
    from vfm_flower.jobs_builtin import LOGISTIC

    with pytest.raises(DataError, match="junk-threshold"):
        fit_preparation(_dirty(0.10), ["spend"], party="bank")
    plan = fit_preparation(_dirty(0.10), ["spend"], party="bank", junk_threshold=0.15)
    assert plan.feature_names == ["spend"]
    spec = {p.name: p for p in LOGISTIC.params}["junk-threshold"]
    assert spec.default == 0.05 and spec.agreement_bound == {"min": 0.0, "max": 0.2}
    # through a job: the parameter reaches every party's preparation
    collab = governed_collab(tmp_path, 92)
    frame = pd.read_csv(collab.data["p1"], dtype=str, keep_default_na=False)
    column = next(c for c in frame.columns[1:])
    frame.loc[: int(0.1 * len(frame)), column] = "n/a?"
    frame.to_csv(collab.data["p1"], index=False)
    with pytest.raises(ProtocolAbort, match=rf"'p1'.*column '{column}'.*junk-threshold"):
        collab.run(job="train", **FAST)
    collab.run(workdir=tmp_path / "w2", job="train", **{**FAST, "junk-threshold": 0.2})


def test_heavy_imputation_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="vfm_flower.preparation"):
        fit_preparation(_dirty(0.0, share_missing=0.3), ["spend"], party="bank")
    assert "30%) are missing or not numbers, imputed with the median" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vfm_flower.preparation"):
        fit_preparation(_dirty(0.0, share_missing=0.1), ["spend"], party="bank")
    assert "imputed" not in caplog.text

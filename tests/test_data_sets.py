"""Named data sets: a job names the data set every party uses (run-config ``data-set``), each
party maps the name to its own file (node-config ``data-sets`` or ``data-dir``), so scoring
new customers needs no restart of any SuperNode."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import governed_collab
from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs_builtin import LOGISTIC
from vfm_flower.party import PartySettings
from vfm_flower.runtime.local_job import PartyFiles, run_local_job

FAST = {"max-iterations": 2}


def _campaign(collab, tmp_path, rows: int):
    """A second file of each party's own: the label owner's first ``rows`` customers, the
    others' whole tables."""
    out = {}
    for party, path in collab.data.items():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        target = tmp_path / "campaign" / party / "campaign.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        (frame.head(rows) if party == "lo" else frame).to_csv(target, index=False)
        out[party] = target
    return out


def _files(collab, **extra):
    return {
        p: PartyFiles(collab.data[p], collab.keys[p], **{k: v[p] for k, v in extra.items()})
        for p in collab.data
    }


def _run(collab, files, **config):
    return run_local_job(
        collab.agreement_path,
        files,
        collab.root / "work",
        {"party-wait-timeout": 0.2, **config},
        operator_key=collab.operator_key,
    )


def test_a_score_job_uses_the_data_set_it_names(tmp_path):
    collab = governed_collab(tmp_path, 81)
    collab.run(job="train", **FAST)
    campaign = _campaign(collab, tmp_path, 90)
    files = _files(collab, data_sets={p: {"campaign": f} for p, f in campaign.items()})
    default = _run(collab, files, job="score")
    named = _run(collab, files, job="score", **{"data-set": "campaign"})
    assert named["public"]["scored_rows"] < default["public"]["scored_rows"]
    lo = collab.root / "work" / "parties" / "lo"
    scores = pd.read_csv(lo / "scores.csv", dtype={"id": str})
    assert len(scores) == named["public"]["scored_rows"]
    # every party's signed hello bound the same data set name (it is part of the job)
    result = json.loads((collab.root / "work" / "server" / "result-score.json").read_text())
    assert result["job"] == "score"


def test_a_data_dir_serves_any_file_put_in_it(tmp_path):
    collab = governed_collab(tmp_path, 82)
    collab.run(job="train", **FAST)
    campaign = _campaign(collab, tmp_path, 80)
    files = _files(collab, data_dir={p: f.parent for p, f in campaign.items()})
    named = _run(collab, files, job="score", **{"data-set": "campaign"})
    assert named["public"]["scored_rows"] <= 80


def test_a_party_without_the_data_set_is_named(tmp_path):
    collab = governed_collab(tmp_path, 83)
    campaign = _campaign(collab, tmp_path, 80)
    sets = {p: ({"campaign": f} if p != "p2" else {}) for p, f in campaign.items()}
    with pytest.raises(ProtocolAbort, match=r"party 'p2' has no data set 'campaign'"):
        _run(collab, _files(collab, data_sets=sets), job="train", **{"data-set": "campaign"})


def test_node_config_data_sets_are_checked_at_start(tmp_path):
    base = {
        "party": "bank",
        "data-path": str(tmp_path / "bank.csv"),
        "key-path": str(tmp_path / "bank.key"),
        "agreement-path": str(tmp_path / "a.toml"),
        "work-dir": str(tmp_path / "w"),
    }
    for name in ("bank.csv", "bank.key", "a.toml", "q3.csv"):
        (tmp_path / name).write_text("x")
    settings = PartySettings.from_node_config(
        {**base, "data-sets": f"q3={tmp_path / 'q3.csv'}", "data-dir": str(tmp_path)}
    )
    assert settings.data_path_for("q3") == tmp_path / "q3.csv"
    assert settings.data_path_for(None) == tmp_path / "bank.csv"
    assert settings.data_path_for("bank") == tmp_path / "bank.csv"  # NAME.csv in data-dir
    with pytest.raises(ConfigurationError, match=r"no data set 'q4' \(its own log lists"):
        settings.data_path_for("q4")
    bad = [
        ("data-sets", "q3", "is not NAME=CSV"),
        ("data-sets", f"q3={tmp_path}/none.csv", "does not exist"),
        ("data-sets", f"a={tmp_path}/q3.csv,a={tmp_path}/q3.csv", "names 'a' twice"),
        ("data-dir", str(tmp_path / "nowhere"), "is not a directory"),
    ]
    for key, value, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            PartySettings.from_node_config({**base, key: value})


def test_the_data_set_is_part_of_the_job():
    job = LOGISTIC.bind_config({"data-set": "q3"}, "score")
    assert job.data_set == "q3" and job.digest() != LOGISTIC.bind("score").digest()
    assert type(job).from_json(job.to_json()) == job
    with pytest.raises(ConfigurationError, match="not a valid name"):
        LOGISTIC.bind("score", data_set="../etc")


def test_a_missing_label_column_is_refused_at_hello_before_alignment(tmp_path):
    from vfm_flower.agreement import SignedAgreement

    collab = governed_collab(tmp_path, 84)
    label = SignedAgreement.load(collab.agreement_path).agreement.label_column
    frame = pd.read_csv(collab.data["lo"], dtype=str, keep_default_na=False)
    frame.drop(columns=[label]).to_csv(collab.data["lo"], index=False)
    with pytest.raises(ProtocolAbort, match=rf"'hello'.*'lo'.*label column '{label}' is missing"):
        collab.run(job="train", **FAST)
    # scoring needs no label: the same data scores (after a training on labelled data)
    assert LOGISTIC.label_operations == ("evaluate", "train")


def test_the_refusal_sent_to_the_server_names_no_other_data_set(tmp_path, caplog):
    """The names of a party's other files stay in its own log, not in the reason the server
    (and its audit log) receives."""
    collab = governed_collab(tmp_path, 85)
    campaign = _campaign(collab, tmp_path, 80)
    secret = campaign["p1"].parent / "secret-merger-targets.csv"
    secret.write_text(campaign["p1"].read_text())
    dirs = {p: f.parent for p, f in campaign.items()}
    with caplog.at_level("WARNING", logger="vfm_flower.party"):
        with pytest.raises(ProtocolAbort) as info:
            _run(collab, _files(collab, data_dir=dirs), job="train", **{"data-set": "q4"})
    assert "has no data set 'q4'" in str(info.value)
    assert "secret-merger-targets" not in str(info.value)
    server_log = next((collab.root / "work" / "server").glob("audit-*.jsonl"))
    assert "secret-merger-targets" not in server_log.read_text()
    assert "secret-merger-targets" in caplog.text  # the party's own log says what it has


def test_a_data_file_changed_during_a_job_is_refused(tmp_path, monkeypatch):
    from vfm_flower.strategies.session import VerticalSession

    collab = governed_collab(tmp_path, 86)
    original = VerticalSession.align

    def align(self):  # the passive party's file is replaced between hello and alignment
        path = collab.data["p1"]
        path.write_text(path.read_text() + "\n")
        return original(self)

    monkeypatch.setattr(VerticalSession, "align", align)
    with pytest.raises(ProtocolAbort, match=r"'p1'.*data file \(data-path\) changed during"):
        collab.run(job="train", **FAST)


def test_a_data_set_name_cannot_leave_the_data_dir(tmp_path):
    for name in ("bank.csv", "bank.key", "a.toml"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sets").mkdir()
    settings = PartySettings.from_node_config(
        {
            "party": "bank",
            "data-path": str(tmp_path / "bank.csv"),
            "key-path": str(tmp_path / "bank.key"),
            "agreement-path": str(tmp_path / "a.toml"),
            "work-dir": str(tmp_path / "w"),
            "data-dir": str(tmp_path / "sets"),
        }
    )
    (tmp_path / "sets" / "link.csv").symlink_to(tmp_path / "bank.csv")
    for name in ("../bank", "/etc/passwd", "link"):
        with pytest.raises(ConfigurationError):
            settings.data_path_for(name)

"""Jobs written as a Flower team would, from the docs only (examples/jobs/*), in-process.

Each runs through the real ServerApp/ClientApp code paths on Flower's Grid and serialization,
matches a plaintext computation on the joint rows, is refused by an agreement that does not
name its kind, refuses a denied column, and leaves audit logs that `vfm audit verify` accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_collaboration
from vfm_flower.agreement import JobTerms
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.runtime.local_job import load_flower_app, run_local_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "jobs"


def run_app(app, collab, config=None, **options):
    """Run an example app in-process on ``collab`` (its work dir), with the app's defaults."""
    server, client, defaults = app
    return run_local_app(
        server,
        client,
        collab.agreement_path,
        collab.files(),
        collab.root / "work",
        {**defaults, **(config or {})},
        operator_key=collab.operator_key,
        **options,
    )


def job_code_lines(path: Path) -> int:
    """Lines of job code: above the plain helpers, without docstring, imports, blanks, comments."""
    import ast

    text = path.read_text().split("# ----")[0]
    tree = ast.parse(text)
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            skip.update(range(node.lineno, node.end_lineno + 1))
    lines = text.splitlines()
    return sum(
        1
        for no, line in enumerate(lines, 1)
        if no not in skip and line.strip() and not line.strip().startswith("#")
    )


def segment_frames(n: int = 400, seed: int = 5) -> tuple[dict[str, pd.DataFrame], list[str]]:
    rng = np.random.default_rng(seed)
    ids = [f"c{i:04d}@example.com" for i in range(n)]
    segment = rng.choice(["gold", "silver", "bronze", "rare"], size=n, p=[0.3, 0.4, 0.27, 0.03])
    rate = {"gold": 0.5, "silver": 0.3, "bronze": 0.1, "rare": 0.9}
    y = (rng.random(n) < np.array([rate[s] for s in segment])).astype(int)
    lo = pd.DataFrame({"email": ids[: n - 30], "age": rng.normal(size=n - 30), "y": y[: n - 30]})
    bank = pd.DataFrame(
        {"email": ids[20:], "segment": segment[20:], "income": rng.normal(size=n - 20)}
    )
    broker = pd.DataFrame({"email": ids[::-1], "region": rng.choice(["n", "s"], size=n)})
    return {"lo": lo, "bank": bank, "broker": broker}, ids


@pytest.fixture(scope="module")
def segment_app():
    return load_flower_app(EXAMPLES / "segment_stats")


def _segment_kind():
    return sys.modules["segment_stats"].SEGMENT_STATS


def _collab(tmp_path, kinds, **terms):
    frames, ids = segment_frames()
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        min_cohort=20,
        jobs=kinds,
        **terms,
    )
    return collab, frames


def test_segment_stats_job_is_short(segment_app):
    assert job_code_lines(EXAMPLES / "segment_stats" / "segment_stats.py") <= 60


def test_segment_stats_equals_a_plaintext_group_by(tmp_path, segment_app):
    server, client, defaults = segment_app
    collab, frames = _collab(tmp_path, [JobTerms.default_for(_segment_kind())])
    result = run_app(segment_app, collab)
    table = json.loads(
        (collab.root / "work" / "parties" / "lo" / "results" / "segments").read_text()
    )
    joint = set(frames["lo"].email) & set(frames["bank"].email) & set(frames["broker"].email)
    merged = frames["lo"].merge(frames["bank"], on="email")
    merged = merged[merged.email.isin(joint)]
    expected = merged.groupby("segment")["y"].agg(["count", "mean"])
    expected = expected[expected["count"] >= 20]
    got = {c["value"]: (c["count"], c["rate"]) for c in table["cells"]}
    assert set(got) == set(expected.index) and "rare" not in got  # under the minimum cohort
    for value, row in expected.iterrows():
        assert got[value][0] == row["count"]
        assert got[value][1] == pytest.approx(row["mean"], abs=1e-12)
    assert table["withheld_rows"] == int((merged.segment == "rare").sum())
    assert result["public"]["cells"] == len(expected)
    assert all(v.ok and v.sealed for _, v in verify_audit_tree(collab.root / "work"))


def test_segment_stats_transcript_holds_no_plaintext(tmp_path, segment_app):
    server, client, defaults = segment_app
    collab, frames = _collab(tmp_path, [JobTerms.default_for(_segment_kind())])
    grids: list = []
    run_app(segment_app, collab, grid_out=grids)
    blob = b"".join(message for _, _, message in grids[0].transcript)
    for value in ("gold", "silver", "bronze"):
        assert value.encode() not in blob
    for email in frames["bank"].email[:50]:
        assert email.encode() not in blob


def test_an_agreement_without_the_kind_refuses_the_job(tmp_path, segment_app):
    server, client, defaults = segment_app
    collab, _ = _collab(tmp_path, None)  # the built-in kinds only
    with pytest.raises(PolicyViolation, match=r"\[job_kind\].*segment_stats"):
        run_app(segment_app, collab)


def test_the_holder_refuses_a_denied_column(tmp_path, segment_app):
    server, client, defaults = segment_app
    collab, _ = _collab(
        tmp_path, [JobTerms.default_for(_segment_kind())], denied_features={"bank": ["segment"]}
    )
    with pytest.raises(ProtocolAbort, match=r"bank.*\[features\].*segment \(denied\)"):
        run_app(segment_app, collab)
    assert all(v.ok for _, v in verify_audit_tree(collab.root / "work"))


def test_vfm_local_run_runs_the_app(tmp_path, segment_app, capsys):
    from vfm_flower.cli import main

    collab, _ = _collab(tmp_path, [JobTerms.default_for(_segment_kind())])
    data = [f"--data={p}={path}" for p, path in collab.data.items()]
    keys = [f"--key={p}={path}" for p, path in collab.keys.items()]
    code = main(
        [
            "local",
            "run",
            "--app",
            str(EXAMPLES / "segment_stats"),
            "--agreement",
            str(collab.agreement_path),
            "--workdir",
            str(tmp_path / "w"),
            "--quiet",
            *data,
            *keys,
            "--run-config",
            'column="segment"',
        ]
    )
    assert code == 0
    assert (tmp_path / "w" / "parties" / "lo" / "results" / "segments").is_file()
    assert main(["audit", "verify", str(tmp_path / "w")]) == 0


# --------------------------------------------------------------------------- the stump


@pytest.fixture(scope="module")
def stump_app():
    return load_flower_app(EXAMPLES / "stump")


def stump_frames(n: int = 500, seed: int = 9) -> dict[str, pd.DataFrame]:
    """The label depends mostly on the bank's 'balance': the best split is the bank's."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}@example.com" for i in range(n)]
    balance = rng.normal(size=n)
    age = rng.normal(size=n)
    y = (rng.random(n) < np.where(balance > 0.3, 0.8, 0.15)).astype(int)
    return {
        "lo": pd.DataFrame({"email": ids, "age": age, "y": y}),
        "bank": pd.DataFrame({"email": ids[::-1], "balance": balance[::-1]}),
        "broker": pd.DataFrame({"email": ids, "clicks": rng.poisson(3, size=n)}),
    }


def _plaintext_stump(frames, bins, min_leaf):
    stump = sys.modules["stump"]
    merged = frames["lo"].merge(frames["bank"], on="email").merge(frames["broker"], on="email")
    y = merged["y"].to_numpy(float)
    candidates = []
    for party, column in (("lo", "age"), ("bank", "balance"), ("broker", "clicks")):
        cuts, groups = stump.quantile_bins(merged[column], bins)
        sums = np.bincount(groups, y - y.mean(), len(cuts) + 1)
        candidates.append((party, column, sums, np.bincount(groups, minlength=len(cuts) + 1)))
    _, owner, column, cut, left, right = stump.best_split(candidates, min_leaf, y.mean())
    cuts, _ = stump.quantile_bins(merged[column], bins)
    return owner, column, cuts[cut], left, right


def test_stump_job_is_short(stump_app):
    assert job_code_lines(EXAMPLES / "stump" / "stump.py") <= 60


def test_stump_matches_the_plaintext_stump(tmp_path, stump_app):
    server, client, defaults = stump_app
    frames = stump_frames()
    kind = sys.modules["stump"].STUMP
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=[JobTerms.default_for(kind)],
    )
    result = run_app(stump_app, collab)
    owner, column, threshold, left, right = _plaintext_stump(frames, 16, 20)
    assert (owner, column) == ("bank", "balance")
    stump = json.loads((collab.root / "work" / "parties" / "lo" / "results" / "stump").read_text())
    assert stump["owner"] == "bank" and "column" not in stump and "threshold" not in stump
    assert stump["left"] == pytest.approx(left, abs=1e-6)
    assert stump["right"] == pytest.approx(right, abs=1e-6)
    split = collab.root / "work" / "parties" / "bank" / "artifacts" / "stump-split.vfa"
    from vfm_flower.codec import unpack_payload

    _, info = unpack_payload(split.read_bytes())
    assert info["meta"] == {"column": "balance", "threshold": pytest.approx(threshold)}
    assert not (collab.root / "work" / "parties" / "broker" / "artifacts").exists()
    assert result["public"]["splits"] == 1
    assert all(v.ok and v.sealed for _, v in verify_audit_tree(collab.root / "work"))


def test_stump_bins_outside_the_signed_bound_are_refused(tmp_path, stump_app, monkeypatch):
    server, client, defaults = stump_app
    kind = sys.modules["stump"].STUMP
    collab = make_collaboration(
        tmp_path / "c",
        stump_frames(),
        label_owner="lo",
        min_intersection=50,
        jobs=[JobTerms.default_for(kind, params={"bins": [4, 16]})],
    )
    with pytest.raises(PolicyViolation, match=r"\[params\].*'bins'"):
        run_app(stump_app, collab, {"bins": 32})


def test_an_agreement_without_the_stump_kind_refuses_it(tmp_path, stump_app):
    collab = make_collaboration(
        tmp_path / "c", stump_frames(), label_owner="lo", min_intersection=50
    )
    with pytest.raises(PolicyViolation, match=r"\[job_kind\].*stump"):
        run_app(stump_app, collab)


def test_the_stump_refuses_a_denied_column_and_never_uses_it(tmp_path, stump_app):
    kind = sys.modules["stump"].STUMP
    frames = stump_frames()
    collab = make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=[JobTerms.default_for(kind)],
        denied_features={"bank": ["balance"]},
    )
    run_app(stump_app, collab)  # the bank's only column is denied: it brings no histogram
    stump = json.loads((collab.root / "work" / "parties" / "lo" / "results" / "stump").read_text())
    assert stump["owner"] != "bank"
    assert all(v.ok and v.sealed for _, v in verify_audit_tree(collab.root / "work"))
    # asking for the denied column by name is refused by the bank itself
    import dataclasses

    from vfm_flower.strategies.session import VerticalSession

    original = VerticalSession.request

    def request(self, kind_name, step, **kwargs):
        req = original(self, kind_name, step, **kwargs)
        req.job = dataclasses.replace(req.job, features={"bank": ("balance",)})
        return req

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VerticalSession, "request", request)
        patch.setattr("vfm_flower.strategies.session.check_job", lambda *a, **k: None)
        with pytest.raises(ProtocolAbort, match=r"bank.*\[features\].*balance \(denied\)"):
            run_app(stump_app, collab)

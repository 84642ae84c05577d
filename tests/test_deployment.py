"""The real Deployment Engine: flower-superlink and one flower-supernode per party on loopback.

Runs ``examples/local-deployment/run.sh`` over TLS with SuperNode authentication (a short
training job), and the two jobs written on the public API (``examples/jobs``: segment
statistics and the vertical stump) as their own Flower Apps, and checks that each succeeds,
leaves audit logs that ``vfm audit verify`` accepts and no Flower process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "local-deployment" / "run.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flower_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        program = Path(args.split(" ", 1)[0]).name
        words = {Path(w).name for w in args.split()[:3]}  # "python .../flower-superlink ..."
        if any(
            w in ("flower-superlink", "flower-supernode") or w.startswith("flwr-")
            for w in {program, *words}
        ):
            pids.add(int(pid))
    return pids


def _run_script(workdir: Path, **extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VFM_PORT"] = str(_free_port())
    env["VFM_NODE_PORT"] = str(_free_port_block(3))
    env.update(extra)
    return subprocess.run(
        ["bash", str(SCRIPT), str(workdir)], env=env, capture_output=True, text=True, timeout=1200
    )


def result_rows(tmp_path: Path) -> int:
    """The joint rows of the training job (the score job's data set is a part of them)."""
    return json.loads((tmp_path / "deploy" / "server" / "result-train.json").read_text())[
        "joint_rows"
    ]


def _free_port_block(count: int) -> int:
    """A first port with ``count`` free ports from it (SuperNodes take consecutive ports)."""
    for _ in range(50):
        first = _free_port()
        try:
            socks = []
            for port in range(first, first + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


needs_flower = pytest.mark.skipif(
    shutil.which("flower-superlink") is None, reason="flwr CLI not installed"
)


@pytest.mark.deployment
@needs_flower
@pytest.mark.parametrize("example", ["segment_stats", "stump"])
def test_a_job_written_on_the_public_api_runs_in_the_deployment_engine(tmp_path, example):
    from tests.conftest import make_collaboration
    from tests.test_job_examples import EXAMPLES, segment_frames, stump_frames
    from vfm_flower.agreement import JobTerms
    from vfm_flower.runtime.local_job import load_flower_app

    load_flower_app(EXAMPLES / example)
    kind = {"segment_stats": "SEGMENT_STATS", "stump": "STUMP"}[example]
    frames = segment_frames()[0] if example == "segment_stats" else stump_frames()
    setup = tmp_path / "setup"
    make_collaboration(
        setup,
        frames,
        label_owner="lo",
        min_intersection=50,
        min_cohort=20,
        jobs=[JobTerms.default_for(getattr(sys.modules[example], kind))],
    )
    before = _flower_processes()
    # the stump's alignment runs in chunks of 256 ids (500 a party: 2 chunks, 4 rounds), each
    # round a fresh ClientApp process reading the spool the one before left
    config = (
        'party="bank" column="segment"'
        if example == "segment_stats"
        else "bins=16 align-chunk-ids=256"
    )
    proc = _run_script(
        tmp_path / "deploy",
        VFM_SETUP=str(setup),
        VFM_APP=str(EXAMPLES / example),
        VFM_RUN_CONFIG=config,
        VFM_MIN_JOINT="50",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[deploy] audit logs intact" in proc.stdout
    assert "[deploy] audit bundle verified" in proc.stdout
    result = json.loads((tmp_path / "deploy" / "server" / "result.json").read_text())
    released = {"segment_stats": ("cells", 3), "stump": ("splits", 1)}[example]
    assert result["public"][released[0]] == released[1]
    stream = (tmp_path / "deploy" / "logs" / "flwr-run.log").read_text()
    rounds = 3 if example == "segment_stats" else 4
    assert f"[vfm] phase align done: {rounds} rounds" in stream
    name = {"segment_stats": "segments", "stump": "stump"}[example]
    assert (tmp_path / "deploy" / "parties" / "lo" / "results" / name).is_file()
    assert _flower_processes() - before == set()


@pytest.mark.deployment
@needs_flower
def test_local_deployment_script(tmp_path):
    before = _flower_processes()
    # TLS (throw-away CA) and registered SuperNode keys, as in production
    # then a score job on a second data set, on the same running SuperNodes
    proc = _run_script(
        tmp_path / "deploy", VFM_ITERATIONS="2", VFM_AUTH="1", VFM_SCORE_SET="campaign"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[deploy] ok:" in proc.stdout
    assert "of data set 'campaign' without a restart" in proc.stdout
    scored = json.loads((tmp_path / "deploy" / "server" / "result-score.json").read_text())
    assert 0 < scored["public"]["scored_rows"] < result_rows(tmp_path)
    result = json.loads((tmp_path / "deploy" / "server" / "result-train.json").read_text())
    assert result["joint_rows"] > 4000
    assert result["public"]["rounds_per_iteration"] == 2
    assert result["public"]["auc"] > 0.6
    for party in ("broker", "bank", "insurer"):
        assert (tmp_path / "deploy" / "parties" / party / "model" / "slice.json").exists()
    # the operator's `flwr run --stream` shows the phases, the iterations and the end
    stream = (tmp_path / "deploy" / "logs" / "flwr-run.log").read_text()
    for line in (
        "[vfm] parties ready: ",
        "[vfm] phase align done: 3 rounds",
        "[vfm] iteration 1/2",
        "[vfm] phase train done",
        "[vfm] job done (logistic train)",
    ):
        assert line in stream, stream[-2000:]
    assert _flower_processes() - before == set()


@pytest.mark.deployment
@needs_flower
def test_a_partner_dropping_mid_job_is_named(tmp_path):
    """A SuperNode killed during training: the operator's output and the server's audit log
    name the party (not Flower's node id), and no Flower process is left behind."""
    before = _flower_processes()
    proc = _run_script(
        tmp_path / "deploy",
        VFM_DROP_PARTY="bank",
        VFM_RUN_CONFIG='job="train" model="logistic" max-iterations=3 round-timeout=120',
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "stopping bank's SuperNode mid-job" in proc.stdout
    stream = (tmp_path / "deploy" / "logs" / "flwr-run.log").read_text()
    assert "[vfm] error: job aborted in phase train" in stream, stream[-2000:]
    assert "party 'bank'" in stream.split("[vfm] error:", 1)[1], stream[-2000:]
    server_log = next((tmp_path / "deploy" / "server").glob("audit-*.jsonl"))
    aborts = [
        json.loads(line)
        for line in server_log.read_text().splitlines()
        if json.loads(line).get("decision") == "abort"
    ]
    assert aborts and "bank" in aborts[0]["detail"], aborts
    assert not (tmp_path / "deploy" / "server" / "result.json").exists()
    assert _flower_processes() - before == set()

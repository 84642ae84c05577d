"""The real Deployment Engine: flower-superlink and one flower-supernode per party on loopback.

Runs ``examples/local-deployment/run.sh`` over TLS with SuperNode authentication (a short
training job) and checks that it succeeds and leaves no Flower process behind.
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
        if any(name in args for name in ("flower-superlink", "flower-supernode", "flwr-")):
            pids.add(int(pid))
    return pids


@pytest.mark.deployment
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flwr CLI not installed")
def test_local_deployment_script(tmp_path):
    before = _flower_processes()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VFM_PORT"] = str(_free_port())
    env["VFM_ITERATIONS"] = "2"
    env["VFM_AUTH"] = "1"  # TLS (throw-away CA) and registered SuperNode keys, as in production
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "deploy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[deploy] ok:" in proc.stdout
    result = json.loads((tmp_path / "deploy" / "server" / "result.json").read_text())
    assert result["joint_rows"] > 4000
    assert result["public"]["rounds_per_iteration"] == 4
    assert result["public"]["auc"] > 0.6
    for party in ("broker", "bank", "insurer"):
        assert (tmp_path / "deploy" / "parties" / party / "model" / "slice.json").exists()
    assert _flower_processes() - before == set()

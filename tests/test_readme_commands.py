"""The README's deployment commands, run as written: docs that cannot drift.

Reads the fenced ``bash`` (and the ``toml`` connection) blocks of README.md's sections
"Governance", "For partners: launching your SuperNode" and "For operators: running the job",
substitutes only ports, paths and, in the network-namespace mode, the SuperLink's address,
and runs them on real Flower processes: keygen for every party and the operator, the
agreement drafted, signed and verified, ``flower-superlink`` and one ``flower-supernode`` per
party in the background (the commands the README shows in terminals of their own), the
connection written to ``$FLWR_HOME/config.toml``, ``vfm app init``, the train job, new
customers moved into every partner's data-dir, the score job on the same SuperNodes, and the
audit commands. Nothing of a command is repeated here: a block that changes is what runs.

Where the machine allows (root and ``ip netns``), every SuperNode runs in its own network
namespace, joined to the host by a veth pair, with the SuperLink bound to ``0.0.0.0`` and
each SuperNode dialling the host's end of its link: the SuperNodes reach it over a real
network interface, not loopback (and are checked unable to reach the host's loopback).
Elsewhere (CI without root) the same commands run on loopback and the output says why
(``-s``: ``[readme] network: ...``); ``VFM_README_NETWORK=loopback|netns`` forces a mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_deployment import _flower_processes, _free_port, needs_flower

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

GOVERNANCE = "Governance"
PARTNERS = "For partners: launching your SuperNode"
OTHER_MACHINES = "Partners on other machines"
OPERATORS = "For operators: running the job"

#: Blocks of the sections above that this test does not run, each with the reason.
NOT_RUN = {
    "--ssl-certfile": "TLS and SuperNode authentication: tests/test_deployment.py (VFM_AUTH=1)",
    "--federation-config": "the simulation engine needs Ray, not installed in CI",
}

#: The README's fixed ports: the SuperLink's, and one local port per SuperNode.
README_PORTS = (8000, 9094, 9095, 9096)
#: The long-running commands, which the README shows in terminals of their own.
BACKGROUND = ("flower-superlink", "flower-supernode")
JOB_TIMEOUT = 900


# ---------------------------------------------------------------------------- README parsing


def readme_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """Fenced blocks ``(language, body)`` per heading (``##`` and ``###``), in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    heading = ""
    fence: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if fence is None:
            if line.startswith("```"):
                fence, body = line[3:].strip(), []
            elif re.match(r"#{2,3} ", line):
                heading = line.lstrip("#").strip()
                sections.setdefault(heading, [])
        elif line.startswith("```"):
            sections.setdefault(heading, []).append((fence, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return sections


def block(sections: dict[str, list[tuple[str, str]]], heading: str, lang: str, has: str) -> str:
    """The one ``lang`` block of section ``heading`` that contains ``has``."""
    found = [text for kind, text in sections.get(heading, []) if kind == lang and has in text]
    assert len(found) == 1, f"README section {heading!r}: {len(found)} {lang} blocks with {has!r}"
    return found[0]


def commands(text: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comment lines dropped (bash
    itself drops a comment at the end of a line)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def success_prefixes(sections: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The stable start of every line of the README's sample stream (the part before the
    first number: ``[vfm] phase align done``, ``[vfm] job done (logistic train)``...)."""
    sample = block(sections, OPERATORS, "", "[vfm] job done")
    prefixes = [re.match(r"\[vfm\][a-z ()]+", line) for line in sample.splitlines()]
    assert all(prefixes), sample
    return [match.group(0) for match in prefixes if match]


#: The blocks run, in order: (section heading, language, a string the block contains).
STEPS = [
    (GOVERNANCE, "bash", "vfm agreement init"),  # keys, agreement drafted, signed, verified
    (PARTNERS, "bash", "cp /srv/agreement.toml"),  # each partner's copy and data-dir
    (OPERATORS, "bash", "flower-superlink"),  # the SuperLink (its own terminal)
    (PARTNERS, "bash", "flower-supernode"),  # one SuperNode per party (their terminals)
    (OPERATORS, "toml", "[superlink.my-superlink]"),  # the connection
    (OPERATORS, "bash", 'model="overlap"'),  # vfm app init, the overlap job
    (OPERATORS, "bash", 'job="train"'),  # the train job
    (OPERATORS, "bash", 'model="secureboost"'),  # gradient-boosted trees (evaluate)
    (PARTNERS, "bash", "sets/campaign.csv"),  # new customers into every data-dir
    (OPERATORS, "bash", 'job="score"'),  # the score job on the same SuperNodes
    (GOVERNANCE, "bash", "vfm audit export"),  # every audit log verified, exported
]


def selected_blocks(
    sections: dict[str, list[tuple[str, str]]],
) -> dict[tuple[str, str, str], str]:
    """The block of every step; every bash block of the partner and operator sections must
    be one of them or listed in :data:`NOT_RUN`."""
    texts = {step: block(sections, *step) for step in STEPS}
    for heading in (PARTNERS, OTHER_MACHINES, OPERATORS):
        for lang, text in sections[heading]:
            if lang == "bash" and text not in texts.values():
                assert any(mark in text for mark in NOT_RUN), f"{heading!r}: untested\n{text}"
    return texts


# ------------------------------------------------------------------------------- networking


@dataclass
class Network:
    """Where the SuperNodes run: loopback, or one network namespace per SuperNode."""

    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return bool(self.namespaces)

    def superlink_address(self, index: int) -> str:
        """The address SuperNode ``index`` dials: the host's end of its veth pair."""
        return f"10.200.{index + 1}.1" if self.isolated else "127.0.0.1"

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index]] if self.isolated else []

    def remove(self) -> None:
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def make_namespaces(count: int) -> Network:
    """``count`` namespaces, each joined to the host by a veth pair 10.200.N.1/30 (host) and
    10.200.N.2/30 (namespace), with its own loopback up (a SuperNode's local API)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise OSError("network namespaces need root and iproute2")
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    if "10.200." in routes:
        raise OSError("10.200.0.0/16 is already routed on this machine")
    network = Network()
    tag = os.getpid() % 100000
    try:
        for index in range(count):
            name, host, inner = f"vfm{tag}n{index}", f"vfh{tag}n{index}", f"vfi{tag}n{index}"
            _ip("netns", "add", name)
            network.namespaces.append(name)
            _ip("link", "add", host, "type", "veth", "peer", "name", inner)
            network.links.append(host)
            _ip("link", "set", inner, "netns", name)
            _ip("addr", "add", f"10.200.{index + 1}.1/30", "dev", host)
            _ip("link", "set", host, "up")
            inside = ("netns", "exec", name, "ip")
            _ip(*inside, "addr", "add", f"10.200.{index + 1}.2/30", "dev", inner)
            _ip(*inside, "link", "set", inner, "up")
            _ip(*inside, "link", "set", "lo", "up")
            # the namespace has no route to 127.0.0.1 of the host: only the veth reaches it
    except OSError:
        network.remove()
        raise
    return network


def _netns_unavailable() -> str | None:
    try:
        make_namespaces(1).remove()
    except OSError as exc:
        return f"network namespaces not available here ({exc}): SuperNodes on loopback"
    return None


# ------------------------------------------------------------------------------- the runner


class ReadmeRun:
    """Runs README commands with ports and paths substituted; remembers every process group
    it started, so :meth:`stop` ends exactly those."""

    def __init__(self, tmp: Path, network: Network) -> None:
        self.tmp = tmp
        self.network = network
        self.cwd = tmp / "home"  # the reader's shell: vfm-app/ and audit.tar.gz land here
        self.logs = tmp / "logs"
        for path in (self.cwd, self.logs, tmp / "data", tmp / "srv", tmp / "flwr-home"):
            path.mkdir(parents=True, exist_ok=True)
        used: set[int] = set()
        self.ports: dict[int, int] = {}
        for port in README_PORTS:
            free = _free_port()
            while free in used:
                free = _free_port()
            used.add(free)
            self.ports[port] = free
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["FLWR_HOME"] = str(tmp / "flwr-home")
        self.env["FLWR_TELEMETRY_ENABLED"] = "0"
        self.env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        self.groups: list[tuple[str, subprocess.Popen]] = []
        self.supernodes = 0

    def substitute(self, text: str) -> str:
        """Only ports and paths: the reader's /data and /srv become temporary directories,
        the README's ports free ones."""
        text = re.sub(
            r"(?<![\w./-])/(data|srv)(?=[/\s\"']|$)",
            lambda m: str(self.tmp / m.group(1)),
            text,
            flags=re.M,
        )
        return re.sub(
            r"(?<=[:\s])(8000|9094|9095|9096)\b", lambda m: str(self.ports[int(m.group(1))]), text
        )

    def run_block(self, text: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
        """Every command of a bash block: the long-running ones started in the background,
        the others run to the end, each of which must exit 0."""
        done = []
        for command in commands(self.substitute(text)):
            if command.startswith(BACKGROUND):
                self.start(command)
                continue
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            (self.logs / "commands.log").open("a").write(
                f"$ {command}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n"
            )
            assert proc.returncode == 0, f"$ {command}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            done.append(proc)
        return done

    def start(self, command: str) -> None:
        prefix: list[str] = []
        if command.startswith("flower-superlink"):
            name = "superlink"
            if self.network.isolated:  # reachable from the namespaces' veth ends, not loopback
                command = command.replace("--host 127.0.0.1", "--host 0.0.0.0")
                assert "--host 0.0.0.0" in command, command
        else:
            index, self.supernodes = self.supernodes, self.supernodes + 1
            name = f"supernode-{index}"
            address = self.network.superlink_address(index)
            command = command.replace("--superlink 127.0.0.1:", f"--superlink {address}:")
            prefix = self.network.prefix(index)
        log = (self.logs / f"{name}.log").open("w")
        log.write(f"$ {command}\n")
        log.flush()
        proc = subprocess.Popen(
            [*prefix, "bash", "-c", f"exec {command}"],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
        self.groups.append((name, proc))

    def wait_healthy(self, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{self.ports[8000]}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the SuperLink did not become healthy:\n{self.log('superlink')}")

    def reachable(self, index: int, host: str) -> bool:
        """Whether SuperNode ``index``'s network reaches the SuperLink's port at ``host``."""
        probe = f"import socket; socket.create_connection(({host!r}, {self.ports[8000]}), 3)"
        command = [*self.network.prefix(index), sys.executable, "-c", probe]
        return subprocess.run(command, capture_output=True).returncode == 0

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def check_running(self) -> None:
        for name, proc in self.groups:
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.log(name)}"

    def stop(self) -> None:
        for _, proc in self.groups:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for _, proc in self.groups:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group's children (ClientApp, ServerApp processes) too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def put_demo_data(tmp: Path, data: Path) -> list[str]:
    """The demo's party files where the README's partners keep theirs: ``/data/NAME/NAME.csv``
    and, for the score job, ``/data/NAME/new-customers.csv`` (the label owner's a part of its
    customers, as ``examples/local-deployment/run.sh`` does)."""
    import pandas as pd

    subprocess.run(
        [str(Path(sys.executable).parent / "vfm"), "demo", "--prepare-only", "--quiet"]
        + ["--workdir", str(tmp / "demo")],
        check=True,
        capture_output=True,
    )
    parties = []
    for source in sorted((tmp / "demo" / "setup" / "parties").glob("*/*.csv")):
        party = source.stem
        (data / party).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, data / party / f"{party}.csv")
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        if "Purchase" in frame.columns:  # the label owner's campaign list
            frame = frame.iloc[: int(len(frame) * 0.6)]
        frame.to_csv(data / party / "new-customers.csv", index=False)
        parties.append(party)
    return parties


# ------------------------------------------------------------------------------------ test


def test_the_readme_blocks_to_run_are_found() -> None:
    """Without Flower too: every step's block, the sample stream and the substitutions."""
    sections = readme_sections(README.read_text())
    texts = selected_blocks(sections)
    assert "[vfm] job done (logistic train)" in success_prefixes(sections)
    run = ReadmeRun.__new__(ReadmeRun)
    run.tmp, run.ports = Path("/tmp/x"), {port: port + 1 for port in README_PORTS}
    nodes = commands(run.substitute(texts[(PARTNERS, "bash", "flower-supernode")]))
    assert len(nodes) == 3 and all("/tmp/x/data/" in node for node in nodes), nodes
    assert not any(re.search(r"[\s\"]/(data|srv)/", node) for node in nodes), nodes
    assert "127.0.0.1:8001" in nodes[0] and "--port 9095" in nodes[0], nodes[0]


def network_mode() -> tuple[str, str]:
    """``(mode, why)``: ``netns`` where the machine allows it, else ``loopback``;
    ``VFM_README_NETWORK=loopback|netns`` forces one (``netns`` then fails if unavailable)."""
    forced = os.environ.get("VFM_README_NETWORK", "")
    if forced == "loopback":
        return "loopback", "VFM_README_NETWORK=loopback"
    unavailable = _netns_unavailable()
    if unavailable is None:
        return "netns", "one network namespace and veth pair per SuperNode"
    assert forced != "netns", unavailable
    return "loopback", unavailable


@pytest.mark.deployment
@needs_flower
# The whole README flow (six jobs on real processes) took 15 to 18 minutes on a slow day of the
# 2-core machine, over the suite's 900 s default; each block keeps its own JOB_TIMEOUT.
@pytest.mark.timeout(2700)
def test_the_readme_deployment_commands_run_as_written(tmp_path: Path) -> None:
    """One run (the file's budget is one job pair): SuperNodes in network namespaces where
    the machine allows, else on loopback, which the output says, with the reason."""
    mode, why = network_mode()
    sections = readme_sections(README.read_text())
    texts = selected_blocks(sections)
    steps = list(texts)
    expected = success_prefixes(sections)

    before = _flower_processes()
    network = Network()
    run = ReadmeRun(tmp_path, network)
    try:
        if mode == "netns":
            network = run.network = make_namespaces(3)
        parties = put_demo_data(tmp_path, tmp_path / "data")
        assert len(parties) == 3, parties
        print(f"[readme] network: {mode} ({why})")
        outputs: dict[tuple[str, str, str], str] = {}
        for step in steps:
            heading, lang, _ = step
            if lang == "toml":
                config = Path(run.env["FLWR_HOME"]) / "config.toml"
                config.write_text(run.substitute(texts[step]))
                continue
            started = time.monotonic()
            done = run.run_block(texts[step], timeout=JOB_TIMEOUT)
            outputs[step] = "".join(proc.stdout for proc in done)
            print(f"[readme] {heading} / {step[2]}: {time.monotonic() - started:.0f} s")
            if "flower-superlink" in step[2]:
                run.wait_healthy()
            if "flower-supernode" in step[2]:
                assert run.supernodes == len(parties), run.supernodes
            run.check_running()

        overlap = outputs[STEPS[5]]
        assert "[vfm] job done (overlap run)" in overlap, overlap[-3000:]
        insurer_dir = tmp_path / "data" / "insurer" / "work"
        report = json.loads((insurer_dir / "overlap.json").read_text())
        assert report["all_parties"]["customers"] > 4000, report["all_parties"]
        assert len(report["segment"]["cells"]) == 10
        assert "[vfm] job done (segments run)" in overlap, overlap[-3000:]
        segments = json.loads((insurer_dir / "segments.json").read_text())
        assert segments["released"] >= 5, segments["cells"]
        train = outputs[STEPS[6]]
        for prefix in expected:
            assert prefix in train, f"{prefix!r} missing from the train job's stream:\n{train}"
        server = tmp_path / "srv" / "vfm-server"
        assert (server / "result-train.json").is_file()
        trees = outputs[STEPS[7]]
        assert "[vfm] job done (secureboost evaluate)" in trees, trees[-3000:]
        score = outputs[STEPS[9]]
        assert "[vfm] job done (logistic score)" in score, score[-3000:]
        assert (server / "result-score.json").is_file()
        node_output = "".join(
            (run.logs / f"supernode-{i}.log").read_text() for i in range(len(parties))
        )
        for party in parties:
            # each partner's own log ends each job with its line, in its work dir and in
            # the SuperNode's output
            lines = (tmp_path / "data" / party / "work" / "vfm-party.log").read_text()
            assert f"party '{party}' job 1 (overlap run): done" in lines, lines
            assert f"party '{party}' job 2 (segments run): done" in lines, lines
            assert f"party '{party}' job 3 (logistic train): done" in lines, lines
            assert f"party '{party}' job 4 (secureboost evaluate): done" in lines, lines
            assert "(logistic score, data set 'campaign'): done" in lines, lines
            assert f"[vfm] party '{party}' job 3 (logistic train): done" in node_output
        if network.isolated:  # the SuperNodes could reach the SuperLink over their veth only
            for index in range(len(parties)):
                assert run.reachable(index, network.superlink_address(index))
                assert not run.reachable(index, "127.0.0.1")
    finally:
        run.stop()
        network.remove()
    assert _flower_processes() - before == set()

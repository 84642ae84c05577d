"""``vertical_mod`` around a team's own ClientApp and plain Flower handlers.

The Mod answers the protocol messages itself and wraps each handler in the agreement and job
checks, the opening of envelopes addressed to the party, the sealing of what it sends, the
release list and the audit.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from tests.conftest import make_collaboration
from vfm_flower import JobKind, JobTerms, ParamSpec, Topic, vertical_session
from vfm_flower.audit_verify import verify_audit_tree
from vfm_flower.clients.mod import raw_array, vertical_mod
from vfm_flower.errors import ProtocolAbort
from vfm_flower.runtime.local_job import run_local_app

REGIONS = Topic("counts.regions", phase="query.count_regions")
COUNTS = JobKind(
    "region_counts",
    ("run",),
    (ParamSpec("column", str, "region"),),
    releases={"server": ("regions",), "result-owner": ()},
    membership="revealed",  # the passive party counts its rows of the joint customers
)


def _apps(publish: str = "regions"):
    mod = vertical_mod(jobs=[COUNTS], topics=[REGIONS])
    client = ClientApp(mods=[mod])
    mod.add_protocol_routes(client)

    @client.query("count_regions")
    def count_regions(message: Message, context: Context) -> Message:
        step = message.content["vfm.step"]
        job = json.loads(str(step["job"]))
        table = pd.read_csv(context.node_config["data-path"])
        rows = message.content["vfm.aligned"]["rows"].numpy()  # the joint customers
        counts = table.iloc[rows][job["params"]["column"]].value_counts().to_dict()
        payload = json.dumps({str(k): int(v) for k, v in counts.items()}).encode()
        send = ArrayRecord({f"{step['label_owner']}|counts.regions": raw_array(payload)})
        return Message(RecordDict({"vfm.send": send}), reply_to=message)

    @client.query("read_counts")
    def read_counts(message: Message, context: Context) -> Message:
        opened = message.content["vfm.opened"]
        counts = {}
        for array in opened.values():
            counts.update(json.loads(bytes(array.data)))
        facts = ConfigRecord({publish: len(counts)})
        return Message(RecordDict({"vfm.publish": facts}), reply_to=message)

    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        job = COUNTS.bind("run", {})
        with vertical_session(grid, context, job, job_kind=COUNTS) as session:
            session.align()
            session.send("query.count_regions", to=session.passive_parties)
            done = session.send("query.read_counts", to=[session.label_owner])
            session.publish(**done[session.label_owner].public)

    return server, client


def _collab(tmp_path):
    rng = np.random.default_rng(2)
    ids = [f"r{i}@example.com" for i in range(200)]
    frames = {
        "lo": pd.DataFrame({"email": ids, "y": rng.integers(0, 2, 200)}),
        "p1": pd.DataFrame({"email": ids, "region": rng.choice(["n", "s", "e"], 200)}),
    }
    return make_collaboration(
        tmp_path / "c",
        frames,
        label_owner="lo",
        min_intersection=50,
        jobs=[JobTerms.default_for(COUNTS)],
    )


def test_a_plain_handler_runs_governed_and_sealed(tmp_path):
    server, client = _apps()
    collab = _collab(tmp_path)
    grids: list = []
    result = run_local_app(
        server,
        client,
        collab.agreement_path,
        collab.files(),
        collab.root / "work",
        {},
        grid_out=grids,
        operator_key=collab.operator_key,
    )
    assert result["public"]["regions"] == 3
    blob = b"".join(message for _, _, message in grids[0].transcript)
    assert b'"n":' not in blob and b"counts.regions" in blob  # sealed: topic visible, not data
    assert all(v.ok and v.sealed for _, v in verify_audit_tree(collab.root / "work"))


def test_a_publish_off_the_release_list_is_refused(tmp_path):
    server, client = _apps(publish="region_names")
    collab = _collab(tmp_path)
    with pytest.raises(ProtocolAbort, match=r"lo.*\[release\].*region_names"):
        run_local_app(
            server,
            client,
            collab.agreement_path,
            collab.files(),
            collab.root / "work",
            {},
            operator_key=collab.operator_key,
        )
    assert all(v.ok and v.sealed for _, v in verify_audit_tree(collab.root / "work"))

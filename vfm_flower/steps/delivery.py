"""Results for a result owner that is not the label owner.

The label owner computes the report (it holds the labels) and the scores (it combines the
masked partial scores), so it sees them; when the agreement names another party as result
owner, the label owner seals them to that party instead of keeping them. The server relays the
envelopes with the job's closing message, and the result owner writes them in its own work
dir: the report from the released JSON, the scores under its own ids (it holds the joint rows
in the common order).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd

from vfm_flower import report as reporting
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.errors import ProtocolAbort
from vfm_flower.party import PartyRuntime, StepReply, StepRequest
from vfm_flower.tables import read_party_table

TOPIC_REPORT = "result.report"
TOPIC_SCORES = "result.scores"
SCORES_FILE = "scores.csv"


def is_result_owner(runtime: PartyRuntime) -> bool:
    return runtime.party == runtime.agreement.result_owner


def send_report(
    runtime: PartyRuntime, reply: StepReply, report: dict[str, Any], *, phase: str, round: int
) -> None:
    """Label owner: seal the released report to the result owner."""
    owner = runtime.agreement.result_owner
    blob = json.dumps(report, sort_keys=True).encode()
    reply.outbox[(owner, TOPIC_REPORT)] = runtime.seal(
        owner, TOPIC_REPORT, blob, phase=phase, round=round
    )


def send_scores(
    runtime: PartyRuntime, reply: StepReply, scores: np.ndarray, *, phase: str, round: int
) -> None:
    """Label owner: seal the scores (joint-row order) to the result owner."""
    owner = runtime.agreement.result_owner
    payload = pack_payload({"scores": np.asarray(scores, dtype=np.float64)})
    reply.outbox[(owner, TOPIC_SCORES)] = runtime.seal(
        owner, TOPIC_SCORES, payload, phase=phase, round=round
    )


def write_scores(runtime: PartyRuntime, scores: np.ndarray) -> int:
    """Write ``scores.csv`` (this party's own ids as in its file, score) atomically."""
    frame = read_party_table(
        runtime.settings.data_path, party=runtime.party, id_columns=runtime.terms.id_columns
    )
    rows = runtime.state.array("joint_rows")
    if len(rows) != len(scores):
        raise ProtocolAbort("score", runtime.party, "scores do not match the aligned rows")
    ids = frame.iloc[rows][list(runtime.terms.id_columns)].reset_index(drop=True)
    id_values = ids.iloc[:, 0] if ids.shape[1] == 1 else ids.astype(str).agg("|".join, axis=1)
    out = pd.DataFrame({"id": id_values.to_numpy(), "score": np.asarray(scores)})
    target = runtime.work_dir / SCORES_FILE
    tmp = runtime.work_dir / f".{SCORES_FILE}.partial"
    out.to_csv(tmp, index=False)
    os.replace(tmp, target)
    return int(len(out))


def receive_results(runtime: PartyRuntime, request: StepRequest) -> None:
    """Result owner, at the job's close: write what the label owner sealed to it."""
    lo = runtime.agreement.label_owner
    for item in request.params.get("deliveries", []):
        topic, phase, round_ = str(item["topic"]), str(item["phase"]), int(item["round"])
        if not is_result_owner(runtime) or runtime.is_label_owner:
            continue
        blob = runtime.open(request, lo, topic, phase=phase, round=round_)
        if topic == TOPIC_REPORT:
            reporting.write_released_report(json.loads(blob), runtime.work_dir)
        elif topic == TOPIC_SCORES:
            arrays, _ = unpack_payload(blob)
            write_scores(runtime, arrays["scores"])
        else:
            raise ProtocolAbort(request.kind, runtime.party, f"unknown delivery '{topic}'")

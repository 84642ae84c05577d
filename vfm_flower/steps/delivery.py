"""Results for a result owner that is not the label owner.

The label owner computes the report (it holds the labels) and the scores (it combines the
masked partial scores), so it sees them; when the agreement names another party as result
owner, the label owner seals them to that party instead of keeping them. The server relays the
envelopes with the job's closing message, and the result owner writes them in its own work
dir: the report from the released JSON, the scores under its own ids (it holds the joint rows
in the common order).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.context import RESULT_PREFIX, PartyContext
from vfm_flower.envelope import peek_header
from vfm_flower.errors import EnvelopeError, ProtocolAbort

SCORES_FILE = "scores.csv"


def scores_payload(
    ctx: PartyContext, scores: np.ndarray, *, classes: list[str] | None = None
) -> bytes:
    """The payload of delivered scores (joint-row order; one column per class with
    ``classes``). A passive result owner of a kind that hides membership also gets its
    positions of the joint customers: receiving their scores, it learns which customers are
    joint anyway (the one party that does)."""
    arrays = {"scores": np.asarray(scores, dtype=np.float64)}
    owner = ctx.result_owner
    if owner != ctx.label_owner and ctx.hides_membership:
        arrays["positions"] = ctx.label_owner_layout().positions[owner]
    return pack_payload(arrays, {"classes": list(classes)} if classes else None)


def receive_scores(ctx: PartyContext, payload: bytes) -> None:
    arrays, meta = unpack_payload(payload)
    rows = None
    if "positions" in arrays:
        layout = ctx.passive_layout()
        positions = np.asarray(arrays["positions"], dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= layout.rows):
            raise ProtocolAbort("score", ctx.party, "delivered positions are out of range")
        rows = layout.row_of_position[positions]
    write_scores(ctx, arrays["scores"], rows=rows, classes=meta.get("classes"))


def write_scores(
    ctx: PartyContext,
    scores: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    classes: list[str] | None = None,
) -> int:
    """Write ``scores.csv`` (this party's own ids as in its file, score) atomically; with
    ``classes``, the predicted class and one ``score_CLASS`` column per class."""
    rows = ctx.aligned_rows() if rows is None else rows
    if len(rows) != len(scores):
        raise ProtocolAbort("score", ctx.party, "scores do not match the aligned rows")
    id_columns = list(ctx.terms.id_columns)
    ids = ctx.table().iloc[rows][id_columns].reset_index(drop=True)
    id_values = ids.iloc[:, 0] if ids.shape[1] == 1 else ids.astype(str).agg("|".join, axis=1)
    scores = np.asarray(scores)
    if classes:
        if scores.ndim != 2 or scores.shape[1] != len(classes):
            raise ProtocolAbort("score", ctx.party, "scores do not match the classes")
        out = pd.DataFrame({"id": id_values.to_numpy()})
        out["predicted"] = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        for j, name in enumerate(classes):
            out[f"score_{name}"] = scores[:, j]
    else:
        out = pd.DataFrame({"id": id_values.to_numpy(), "score": scores})
    target = ctx.work_dir / SCORES_FILE
    tmp = ctx.work_dir / f".{SCORES_FILE}.partial"
    out.to_csv(tmp, index=False)
    os.replace(tmp, target)
    return int(len(out))


def receive_results(ctx: PartyContext) -> None:
    """Result owner, at the job's close: take what the label owner delivered to it.

    Every ``result.NAME`` envelope from the label owner is opened (its own header says the
    phase and round it was sealed in; the AEAD binds them, the replay guard refuses a second
    delivery) and handed to the receiver the job registered for ``NAME``
    (``PartyContext.take_result``).
    """
    if not ctx.is_result_owner or ctx.is_label_owner:
        return
    lo = ctx.label_owner
    for (sender, topic), blob in sorted(ctx.request.inbox.items()):
        if not topic.startswith(RESULT_PREFIX) or sender != lo:
            continue
        try:
            header = peek_header(blob)
        except EnvelopeError as exc:
            raise ProtocolAbort(ctx.kind, ctx.party, f"result '{topic}': {exc}") from exc
        name = topic[len(RESULT_PREFIX) :]
        ctx.check_release("result-owner", name)  # the result owner checks on its side too
        payload = ctx.runtime.open(ctx.request, lo, topic, phase=header.phase, round=header.round)
        ctx.take_result(name, payload)

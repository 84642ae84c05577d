"""How protocol requests and replies travel in Flower records.

Request content (server -> party)::

    "vfm":   ConfigRecord  step, session (JSON), job (JSON), agreement_hash, params (JSON),
                           sequence, operator_signature (bytes)
    "inbox": ArrayRecord   "<sender>|<topic>" -> raw bytes (an envelope the server relays)
    "sums":  ArrayRecord   name -> uint64 array (masked sums computed by the server)

Reply content (party -> server)::

    "vfm":    ConfigRecord party, public (JSON), signature (bytes)
    "outbox": ArrayRecord  "<recipient>|<topic>" -> raw bytes (envelopes to relay)
    "masked": ArrayRecord  name -> uint64 array (masked vectors for the server to sum)

Big integers never go into ConfigRecords (they overflow Flower's serialization): ciphertexts
travel as fixed-width bytes inside envelopes.
"""

from __future__ import annotations

import json
import re

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs import Job
from vfm_flower.party import StepReply, StepRequest
from vfm_flower.session import SessionInfo

# Error codes of vfm refusals in Flower error replies (Flower uses small codes itself).
ERROR_CODE_POLICY = 4201
ERROR_CODE_CONFIG = 4202
ERROR_CODE_DATA = 4203
ERROR_CODE_PROTOCOL = 4204


_REFUSAL = re.compile(r"^party '([^']+)' refused: (.*)$", re.DOTALL)


def error_reason(party: str | None, reason: str) -> str:
    """The reason of an error reply: names the party, whose node id the server may not know."""
    return f"party '{party}' refused: {reason}" if party else reason


def parse_error_reason(reason: str) -> tuple[str | None, str]:
    """Inverse of ``error_reason``: ``(party or None, reason)``."""
    match = _REFUSAL.match(reason)
    return (match.group(1), match.group(2)) if match else (None, reason)


def _raw(blob: bytes) -> Array:
    return Array(dtype="bytes", shape=(len(blob),), stype="raw", data=blob)


def _pack_mailbox(items: dict[tuple[str, str], bytes]) -> ArrayRecord:
    return ArrayRecord({f"{who}|{topic}": _raw(blob) for (who, topic), blob in items.items()})


def _unpack_mailbox(record: ArrayRecord | None) -> dict[tuple[str, str], bytes]:
    out: dict[tuple[str, str], bytes] = {}
    for key, arr in (record or {}).items():
        who, _, topic = key.partition("|")
        out[(who, topic)] = bytes(arr.data)
    return out


def _pack_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _unpack_arrays(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in (record or {}).items()}


def encode_request(request: StepRequest) -> RecordDict:
    return RecordDict(
        {
            "vfm": ConfigRecord(
                {
                    "step": int(request.step),
                    "session": request.session.to_json() if request.session else "",
                    "job": request.job.to_json(),
                    "agreement_hash": request.agreement_hash,
                    "params": json.dumps(request.params, sort_keys=True),
                    "sequence": int(request.sequence),
                    "operator_signature": bytes(request.operator_signature),
                }
            ),
            "inbox": _pack_mailbox(request.inbox),
            "sums": _pack_arrays(request.sums),
        }
    )


def decode_request(kind: str, content: RecordDict) -> StepRequest:
    try:
        cfg = content["vfm"]
        session_text = str(cfg["session"])
        params = json.loads(str(cfg["params"]))
        if not isinstance(params, dict):
            raise TypeError("params must be a JSON object")
        return StepRequest(
            kind=kind,
            step=int(cfg["step"]),
            session=SessionInfo.from_json(session_text) if session_text else None,
            job=Job.from_json(str(cfg["job"])),
            agreement_hash=str(cfg["agreement_hash"]),
            params=params,
            inbox=_unpack_mailbox(content.get("inbox")),  # type: ignore[arg-type]
            sums=_unpack_arrays(content.get("sums")),  # type: ignore[arg-type]
            sequence=int(cfg["sequence"]),
            operator_signature=bytes(cfg["operator_signature"]),  # type: ignore[arg-type]
        )
    except (KeyError, ValueError, TypeError, RecursionError, ConfigurationError) as exc:
        reason = str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deep"
        raise ProtocolAbort(kind, None, f"malformed request from the server: {reason}") from exc


def _object(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a JSON object")
    return value


def encode_reply(reply: StepReply) -> RecordDict:
    return RecordDict(
        {
            "vfm": ConfigRecord(
                {
                    "party": reply.party,
                    "public": json.dumps(reply.public, sort_keys=True),
                    "signature": reply.signature,
                }
            ),
            "outbox": _pack_mailbox(reply.outbox),
            "masked": _pack_arrays(reply.masked),
        }
    )


def decode_reply(kind: str, content: RecordDict) -> StepReply:
    try:
        cfg = content["vfm"]
        return StepReply(
            party=str(cfg["party"]),
            public=_object(json.loads(str(cfg["public"])), "public"),
            outbox=_unpack_mailbox(content.get("outbox")),  # type: ignore[arg-type]
            masked=_unpack_arrays(content.get("masked")),  # type: ignore[arg-type]
            signature=bytes(cfg["signature"]),  # type: ignore[arg-type]
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolAbort(kind, None, f"malformed reply: {str(exc)[:200]}") from exc

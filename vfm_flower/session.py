"""Run session: the run key every envelope is bound to, and signed public replies.

The run key mixes Flower's run id, a nonce from the server, a fresh nonce from every party
(sent in the hello phase) and the digest of the job (kind, operation, every parameter). A
party only accepts a session that contains its own nonce, so a server cannot replay envelopes
of an earlier run into a new one: each run has a new key. The session also carries every
party's signed hello, so each party checks that all the others agreed to the same job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfm_flower.errors import ProtocolAbort


def canonical_json(obj: Any) -> bytes:
    """Compact, sorted-key JSON: the bytes that get hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class SessionInfo:
    """What identifies one run: Flower's run id, the server nonce, every party's nonce."""

    flower_run_id: int
    server_nonce: str
    party_nonces: Mapping[str, str]
    job_digest: str = ""
    #: party -> (the public part of its hello reply, its Ed25519 signature over it)
    hellos: Mapping[str, tuple[Mapping[str, Any], bytes]] = field(default_factory=dict)
    #: the operator's Ed25519 signature over :meth:`signing_bytes`
    operator_signature: bytes = b""
    #: the collaboration's job counter (every audit log records it; it never goes back)
    job_counter: int = 0

    def _key_inputs(self) -> dict[str, Any]:
        return {
            "flower_run_id": self.flower_run_id,
            "server_nonce": self.server_nonce,
            "party_nonces": dict(self.party_nonces),
            "job": self.job_digest,
            "job_counter": self.job_counter,
        }

    def signing_bytes(self) -> bytes:
        """What the operator signs: every input of the run key (the run is the operator's)."""
        return canonical_json({"domain": "vfm-flower/v1/session", **self._key_inputs()})

    @property
    def run_key(self) -> str:
        digest = hashlib.sha256(canonical_json(self._key_inputs()))
        return digest.hexdigest()[:32]

    def hellos_digest(self) -> str:
        """SHA-256 of every party's signed hello (public part and signature): a party checks
        the hellos once, at its first message of the session, and from then on only that the
        session still carries the very same (the run key does not cover them)."""
        return hashlib.sha256(
            canonical_json(
                {
                    p: {"public": dict(pub), "signature": base64.b64encode(sig).decode()}
                    for p, (pub, sig) in sorted(self.hellos.items())
                }
            )
        ).hexdigest()

    def to_json(self) -> str:
        return canonical_json(
            {
                "flower_run_id": self.flower_run_id,
                "server_nonce": self.server_nonce,
                "party_nonces": dict(self.party_nonces),
                "job_digest": self.job_digest,
                "hellos": {
                    p: {"public": dict(pub), "signature": base64.b64encode(sig).decode()}
                    for p, (pub, sig) in sorted(self.hellos.items())
                },
                "operator_signature": base64.b64encode(self.operator_signature).decode(),
                "job_counter": self.job_counter,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> SessionInfo:
        try:
            obj = json.loads(text)
            hellos = {}
            for party, item in dict(obj.get("hellos", {})).items():
                public = item["public"]
                if not isinstance(public, dict):
                    raise TypeError("hello public must be an object")
                hellos[str(party)] = (public, base64.b64decode(item["signature"], validate=True))
            return cls(
                flower_run_id=int(obj["flower_run_id"]),
                server_nonce=str(obj["server_nonce"]),
                party_nonces={str(k): str(v) for k, v in obj["party_nonces"].items()},
                job_digest=str(obj.get("job_digest", "")),
                hellos=hellos,
                operator_signature=base64.b64decode(
                    str(obj.get("operator_signature", "")), validate=True
                ),
                job_counter=int(obj["job_counter"]),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            binascii.Error,
        ) as exc:
            raise ProtocolAbort("session", None, "malformed session information") from exc


def server_hello_bytes(
    *,
    agreement_hash: str,
    job_digest: str,
    flower_run_id: int,
    server_nonce: str,
    job_counter: int,
) -> bytes:
    """What the operator signs in its hello request: this agreement, this job (and its number
    in the collaboration's job counter), this run."""
    return canonical_json(
        {
            "domain": "vfm-flower/v1/server-hello",
            "agreement": agreement_hash,
            "job": job_digest,
            "job_counter": job_counter,
            "flower_run_id": flower_run_id,
            "server_nonce": server_nonce,
        }
    )


def request_signing_bytes(
    *,
    run_ref: str,
    kind: str,
    step: int,
    sequence: int,
    party: str,
    params: Mapping[str, Any],
    sums: Mapping[str, np.ndarray],
) -> bytes:
    """What the operator signs in every request after hello: this run, this step, this
    request's place in the run (``sequence``), its recipient, its parameters and the sums it
    carries (a digest). The envelopes it relays are authenticated by their senders instead."""
    digest = hashlib.sha256()
    for name in sorted(sums):
        array = np.ascontiguousarray(sums[name])
        digest.update(canonical_json([name, str(array.dtype), list(array.shape)]))
        digest.update(array.tobytes())
    return canonical_json(
        {
            "domain": "vfm-flower/v1/request",
            "run": run_ref,
            "kind": kind,
            "step": step,
            "sequence": sequence,
            "party": party,
            "params": dict(params),
            "sums": digest.hexdigest(),
        }
    )


def reply_signing_bytes(
    *, run_ref: str, phase: str, step: int, party: str, public: Mapping[str, Any]
) -> bytes:
    """The bytes a party signs for the public part of its reply (the server verifies)."""
    return canonical_json(
        {"run": run_ref, "phase": phase, "step": step, "party": party, "public": dict(public)}
    )

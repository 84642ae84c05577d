"""Governance steps, party side: hello (phase 1) and close (the end of every job).

Hello:

The party verifies its own copy of the agreement (signatures, validity window), checks the
requested job against it, checks that its data file is readable and within the declared
maximum set size, and answers with its agreement hash, a fresh nonce for the run key and its
row count, all signed with its Ed25519 key.

Close: the server sends the head of its audit log, signed with its audit key; the party
records it (cross-signing), seals its own log and answers with its sealed head, signed, which
the server records in turn. Truncating or rewriting either log afterwards is then detectable
by ``vfm audit verify`` over the work dirs.
"""

from __future__ import annotations

import base64

from vfm_flower.agreement import check_set_size
from vfm_flower.audit import sign_head
from vfm_flower.errors import PolicyViolation
from vfm_flower.keys import PublicIdentity
from vfm_flower.party import PartyRuntime, StepReply, StepRequest, new_nonce, step_handler
from vfm_flower.tables import read_party_table


@step_handler("query.hello")
def answer_hello(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Check agreement, job and data; answer with hash, nonce and row count."""
    if runtime.state.get("run_key"):
        raise PolicyViolation("session", "a second hello in a run that already started")
    runtime.signed.verify()
    frame = read_party_table(
        runtime.settings.data_path, party=runtime.party, id_columns=runtime.terms.id_columns
    )
    check_set_size(runtime.agreement, runtime.party, len(frame))
    nonce = new_nonce()
    runtime.state.set("hello_nonce", nonce)
    return StepReply(
        party=runtime.party,
        public={
            "agreement_hash": runtime.agreement.terms_hash(),
            "nonce": nonce,
            "rows": int(len(frame)),
            "server_nonce": str(request.params.get("server_nonce", "")),
        },
    )


@step_handler("query.close")
def close_audit(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Write results sealed to this party, attest the server's head, seal this party's log."""
    from vfm_flower.steps.delivery import receive_results

    receive_results(runtime, request)
    params = request.params
    server = PublicIdentity(
        party="server",
        signing_key=base64.b64decode(params["server_signing_key"]),
        exchange_key=base64.b64decode(params["server_exchange_key"]),
    )
    runtime.audit.attest_peer_head(
        "server",
        int(params["server_seq"]),
        str(params["server_head"]),
        base64.b64decode(params["server_head_sig"]),
        peer_public=server,
    )
    runtime.audit.seal(round=request.step)
    seq, head = runtime.audit.head()
    return StepReply(
        party=runtime.party,
        public={
            "audit_seq": seq,
            "audit_head": head,
            "audit_head_sig": base64.b64encode(sign_head(runtime.identity, seq, head)).decode(),
        },
    )

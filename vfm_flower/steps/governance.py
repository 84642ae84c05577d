"""Governance steps, party side: hello (phase 1) and close (the end of every job).

Hello:

The party verifies its own copy of the agreement (signatures, validity window), that the
hello is signed by the operator the agreement names (for this agreement, job and run), checks the
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
import binascii
import re

from vfm_flower.audit import sign_head, verify_audit_log
from vfm_flower.context import PartyContext
from vfm_flower.errors import PolicyViolation, ProtocolAbort
from vfm_flower.keys import PublicIdentity
from vfm_flower.party import StepRegistry, new_nonce
from vfm_flower.policy import check_job_budget, check_operator_signature, check_set_size
from vfm_flower.session import server_hello_bytes

#: The plugin's governance steps; they belong to every job kind.
STEPS = StepRegistry()
HELLO = "query.hello"


@STEPS.step(
    "query.hello",
    jobs=("*",),
    public=("agreement_hash", "nonce", "rows", "server_nonce", "job_digest"),
)
def every_party_hello(ctx: PartyContext) -> None:
    """Check agreement, job and data; answer with hash, nonce and row count."""
    runtime, request = ctx.runtime, ctx.request
    if runtime.state.get("run_key") or runtime.state.get("hello_nonce"):
        # one hello per run: a re-delivered hello would count against the job budget again
        raise PolicyViolation("session", "a second hello in a run that already started")
    runtime.signed.verify()
    check_server_hello(ctx)
    # the release budget, counted from this party's own audit log (every hello it answered)
    check_job_budget(runtime.agreement, runtime.audit.count_events(phase=HELLO, decision="ok"))
    frame = ctx.table()
    check_set_size(len(frame), runtime.terms.max_set_size, runtime.party)
    nonce = new_nonce()
    runtime.state.set("hello_nonce", nonce)
    # the job this party agrees to run: every later message must carry the same one
    job_digest = request.job.digest()
    runtime.state.set("job_digest", job_digest)
    ctx.reply.public.update(
        {
            "agreement_hash": runtime.agreement.terms_hash(),
            "nonce": nonce,
            "rows": int(len(frame)),
            "server_nonce": str(request.params.get("server_nonce", "")),
            "job_digest": job_digest,
        }
    )


def check_server_hello(ctx: PartyContext) -> None:
    """Before anything else: the hello comes from the operator the agreement names, for this
    agreement, this job and this Flower run (rule ``operator``; ``session`` for another run)."""
    runtime, params = ctx.runtime, ctx.request.params
    try:
        run_id = params["flower_run_id"]
        if isinstance(run_id, bool) or not isinstance(run_id, int):
            raise TypeError("the run id is not an integer")
        signature = base64.b64decode(str(params["operator_signature"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise PolicyViolation(
            "operator", "the server's hello carries no operator signature: refusing this server"
        ) from exc
    if runtime.flower_run_id is None or run_id != runtime.flower_run_id:
        # an operator's hello of another run (replayed) names that run's id
        raise PolicyViolation("session", "the server's hello is for another Flower run")
    data = server_hello_bytes(
        agreement_hash=runtime.agreement.terms_hash(),
        job_digest=ctx.request.job.digest(),
        flower_run_id=run_id,
        server_nonce=str(params.get("server_nonce", "")),
    )
    check_operator_signature(runtime.agreement, signature, data, "hello")


@STEPS.step("query.close", jobs=("*",), public=("audit_seq", "audit_head", "audit_head_sig"))
def every_party_close(ctx: PartyContext) -> None:
    """Write results sealed to this party, attest the server's head, seal this party's log."""
    from vfm_flower.steps.delivery import receive_results

    runtime, request = ctx.runtime, ctx.request
    receive_results(ctx)
    params = request.params
    try:
        server = PublicIdentity(
            party=runtime.agreement.operator.name,
            signing_key=base64.b64decode(params["server_signing_key"], validate=True),
            exchange_key=base64.b64decode(params["server_exchange_key"], validate=True),
        )
        seq, head = params["server_seq"], str(params["server_head"])
        signature = base64.b64decode(params["server_head_sig"], validate=True)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise ValueError("sequence number out of range")
        if not re.fullmatch(r"[0-9a-f]{64}", head):
            raise ValueError("head is not a SHA-256 hex digest")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolAbort(
            ctx.kind, ctx.party, "the close request carries no valid audit head"
        ) from exc
    if server.signing_key != runtime.agreement.operator.signing_key:
        raise PolicyViolation(
            "operator",
            "the server's audit log is not signed with the operator key the agreement lists: "
            "refusing to attest it",
        )
    # the server's log only grows: a head at or before one this party attested in an earlier
    # job is an old head (the log would be rolled back behind it without anyone noticing)
    earlier = verify_audit_log(runtime.audit.path).attested_heads.get(server.party, [])
    last = max((s for s, _ in earlier), default=None)
    if last is not None and seq <= last:
        raise PolicyViolation(
            "operator",
            f"the server's audit head (entry {seq}) is not after the one this party attested "
            f"in an earlier job (entry {last}): refusing to attest it",
        )
    # attested under the operator's name: the server's log is written under that name
    runtime.audit.attest_peer_head(server.party, seq, head, signature, peer_public=server)
    runtime.audit.seal(round=request.step)
    seq, head = runtime.audit.head()
    ctx.reply.public.update(
        {
            "audit_seq": seq,
            "audit_head": head,
            "audit_head_sig": base64.b64encode(sign_head(runtime.identity, seq, head)).decode(),
        }
    )

"""Governance steps, party side: hello (phase 1) and close (the end of every job).

Hello:

The party verifies its own copy of the agreement (signatures, validity window), that the
hello is signed by the operator the agreement names (for this agreement, job and run), checks the
requested job against it, checks that its data file is readable and within the declared
maximum set size, and answers with its agreement hash, a fresh nonce for the run key and its
row count, all signed with its Ed25519 key.

The hello also carries the job's number in the collaboration's job counter, signed with the
rest: the party refuses a number at or below the last job in its own log (the operator's log
went back), and refuses to run at all while its own log is behind the close certificates it
holds (its log went back); otherwise every later entry of its log carries the number.

Close, two rounds:

1. ``query.close``: the server sends the head of its audit log, signed by the operator for
   this agreement and job; the party checks it is after the last operator head it attested,
   records it (cross-signing) and answers with its own head, signed.
2. ``query.seal``: the server sends the close certificate, every log's head countersigned by
   the operator; the party checks it (every signer's head, every signature, its own head
   unchanged), keeps it in its certificates file and in its seal, and answers with its sealed
   head, signed, which the server's seal records in turn.

Each company then holds every other log's head of this job, and the operator's countersigned
head of its own log outside it: rolling back, deleting or re-signing any log afterwards is
detected by ``vfm audit verify`` over one company's work dir
(:mod:`vfm_flower.audit_verify`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

from vfm_flower.agreement import Agreement
from vfm_flower.audit import AuditLog, verify_audit_log
from vfm_flower.audit_heads import CloseCertificate, SignedHead
from vfm_flower.context import PartyContext
from vfm_flower.errors import DataError, PolicyViolation, ProtocolAbort
from vfm_flower.job_summary import decode_released
from vfm_flower.jobs import Job
from vfm_flower.party import StepRegistry, new_nonce
from vfm_flower.policy import (
    check_job_budget,
    check_job_counter,
    check_operator_signature,
    check_privacy_budget,
    check_set_size,
)
from vfm_flower.session import server_hello_bytes

logger = logging.getLogger(__name__)

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
    job_counter = check_server_hello(ctx)
    audit = runtime.audit
    check_job_counter(
        job_counter,
        audit.job_counter,
        audit.last_certified_job(),
    )
    audit.begin_job(job_counter, round=ctx.request.step)
    # the release budget, counted from this party's own audit log (every hello it answered)
    check_job_budget(runtime.agreement, runtime.audit.count_events(phase=HELLO, decision="ok"))
    # the privacy budget, from this party's own log: charged before any data is read
    charge_privacy_budget(runtime.audit, runtime.agreement, request.job, ctx.request.step)
    frame = ctx.table()
    check_set_size(len(frame), runtime.terms.max_set_size, runtime.party)
    kind = runtime.jobs.get(request.job.kind)
    label = runtime.agreement.label_column
    if ctx.is_label_owner and request.job.operation in kind.label_operations:
        if label not in frame.columns:  # before alignment: nobody waits for a late failure
            raise DataError(
                f"party '{runtime.party}': label column '{label}' is missing from its data "
                f"(a {request.job.operation} job needs it)"
            )
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


def charge_privacy_budget(audit: AuditLog, agreement: Agreement, job: Job, round: int) -> None:
    """Check the job's privacy cost against what ``audit``'s log spent (rule
    ``privacy_budget``) and record the charge there (the server and every party)."""
    audit.charge_privacy(round, lambda spent: check_privacy_budget(agreement, job, spent))


def check_server_hello(ctx: PartyContext) -> int:
    """Before anything else: the hello comes from the operator the agreement names, for this
    agreement, this job and this Flower run (rule ``operator``; ``session`` for another run).
    Returns the job counter the operator gave the job."""
    runtime, params = ctx.runtime, ctx.request.params
    try:
        run_id, job_counter = params["flower_run_id"], params["job_counter"]
        for value in (run_id, job_counter):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError("the run id or job counter is not a non-negative integer")
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
        job_counter=job_counter,
    )
    check_operator_signature(runtime.agreement, signature, data, "hello")
    return job_counter


def _signed_head_reply(ctx: PartyContext) -> None:
    head = ctx.runtime.audit.signed_head()
    ctx.reply.public.update(
        {
            "audit_seq": head.seq,
            "audit_head": head.head,
            "audit_head_sig": base64.b64encode(head.signature).decode(),
        }
    )


@STEPS.step("query.close", jobs=("*",), public=("audit_seq", "audit_head", "audit_head_sig"))
def every_party_close(ctx: PartyContext) -> None:
    """Write results sealed to this party, attest the operator's head, answer with own head."""
    from vfm_flower.steps.delivery import receive_results

    runtime, request = ctx.runtime, ctx.request
    receive_results(ctx)
    audit, operator = runtime.audit, runtime.agreement.operator
    try:
        head = SignedHead.from_json(
            request.params["server_head"],
            writer=operator.name,
            agreement_hash=audit.agreement_hash,
            job_counter=audit.job_counter,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolAbort(
            ctx.kind, ctx.party, "the close request carries no valid audit head"
        ) from exc
    if not head.verifies(operator.signing_key):
        raise PolicyViolation(
            "operator",
            "the server's audit head is not signed, for this agreement and job, with the "
            "operator key the agreement lists: refusing to attest it",
        )
    # the server's log only grows: a head at or before one this party attested in an earlier
    # job is an old head (the log would be rolled back behind it without anyone noticing)
    earlier = verify_audit_log(audit.path).attested_heads.get(operator.name, [])
    last = max((s for s, _ in earlier), default=None)
    if last is not None and head.seq <= last:
        raise PolicyViolation(
            "operator",
            f"the server's audit head (entry {head.seq}) is not after the one this party "
            f"attested in an earlier job (entry {last}): refusing to attest it",
        )
    audit.attest_peer_head(head, peer_public=operator.signing_key, round=request.step)
    runtime.state.set("close.operator_head", f"{audit.job_counter}:{head.seq}:{head.head}")
    # for the partner's log line at the seal (the request is operator-signed)
    runtime.state.set("close.outcome", str(request.params.get("outcome", "done"))[:300])
    runtime.state.set("close.released", json.dumps(decode_released(request.params.get("released"))))
    _signed_head_reply(ctx)


@STEPS.step("query.seal", jobs=("*",), public=("audit_seq", "audit_head", "audit_head_sig"))
def every_party_seal(ctx: PartyContext) -> None:
    """Check the close certificate (every log's head, countersigned by the operator), keep it
    beside the log and in the seal, answer with the sealed head."""
    runtime, request = ctx.runtime, ctx.request
    audit, agreement = runtime.audit, runtime.agreement
    try:
        certificate = CloseCertificate.from_json(json.loads(str(request.params["certificate"])))
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ProtocolAbort(ctx.kind, ctx.party, "the seal request carries no certificate") from exc
    keys = {name: agreement.signer(name).signing_key for name in agreement.signer_names}
    findings = certificate.problems(keys, agreement.operator.name)
    if (certificate.agreement_hash, certificate.job_counter) != (
        audit.agreement_hash,
        audit.job_counter,
    ):
        findings.append("it is for another agreement or job")
    own = certificate.heads.get(runtime.party)
    if own is None or (own.seq, own.head) != audit.head():
        findings.append("it does not name this party's head as this party sent it")
    # the operator's head, as this party attested it in this job's close round (no fork: every
    # party gets the same operator head)
    server = certificate.heads.get(agreement.operator.name)
    attested = runtime.state.get("close.operator_head")
    if server is None or attested != f"{audit.job_counter}:{server.seq}:{server.head}":
        findings.append("it does not name the operator's head this party attested at close")
    if findings:
        raise PolicyViolation("audit", f"the close certificate is refused: {'; '.join(findings)}")
    audit.keep_certificate(certificate)
    audit.seal(certificate=certificate, round=request.step)
    _signed_head_reply(ctx)
    outcome = str(runtime.state.get("close.outcome", "done"))
    released = json.loads(str(runtime.state.get("close.released", "{}")))
    # informational, after the seal: nothing here may fail the job
    try:
        # the party's own report of this job shows the outcome (a passive party's only figures)
        from vfm_flower.report_render import add_job_outcome

        started = float(runtime.state.get("summary.started", 0.0))
        add_job_outcome(runtime.work_dir, outcome, released, written_since=started)
        runtime.record_job_summary(outcome, received=released)
    except Exception as exc:  # noqa: BLE001 - the log is sealed; the job succeeded
        logger.warning("party '%s': could not write the job's outcome: %s", runtime.party, exc)

"""The party side of every phase, independent of Flower.

A ``PartyRuntime`` takes one ``StepRequest`` (what the server asked, the session, the job, the
envelopes relayed to this party), checks it against the party's own signed agreement, runs
the protocol step registered for the message kind, and returns a signed ``StepReply``. The
Flower client in ``clients/`` only translates messages and ``context.state`` to and from these
types.

Steps are registered in a :class:`~vfm_flower.step_registry.StepRegistry` under the message
kind they serve (``"query.hello"``, ``"train.forward"``, ...), each declaring the job kinds and
operations it belongs to; the runtime refuses a step of another job. A partner's node-config
is read by :mod:`vfm_flower.party_settings`. The job itself (kind, operation, every
parameter) is bound at hello: its digest is in the run key and in every party's signed hello,
and every later message must carry the same job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfm_flower import job_summary, policy
from vfm_flower.agreement import JobTerms, SignedAgreement
from vfm_flower.audit import AuditLog
from vfm_flower.context import PartyContext
from vfm_flower.envelope import ReplayGuard, open_envelope, peek_header, seal_envelope
from vfm_flower.errors import (
    ConfigurationError,
    DataError,
    EnvelopeError,
    PolicyViolation,
    ProtocolAbort,
    SignatureError,
    VfmError,
)
from vfm_flower.jobs import ANY, JobRegistry
from vfm_flower.keys import PartyIdentity
from vfm_flower.party_settings import (  # noqa: F401  (re-exported: the party's public names)
    NODE_CONFIG_KEYS,
    NODE_CONFIG_OPTIONAL_KEYS,
    PartySettings,
)
from vfm_flower.session import SessionInfo, reply_signing_bytes, request_signing_bytes
from vfm_flower.state import PartyState
from vfm_flower.step_registry import (  # noqa: F401  (re-exported)
    PROTOCOL_FACTS,
    DataLoader,
    ResultReceiver,
    StepHandler,
    StepRegistry,
    StepReply,
    StepRequest,
    StepSpec,
)
from vfm_flower.tables import check_id_lengths, read_party_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)


def payload_hash(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class PartyRuntime:
    """Everything one party needs to run a step: identity, agreement, state, audit log.

    Parameters
    ----------
    settings : PartySettings
        The partner's private settings.
    state : PartyState
        Per-run state kept between messages by the runtime adapter.
    """

    def __init__(
        self,
        settings: PartySettings,
        state: PartyState,
        *,
        steps: StepRegistry | None = None,
        jobs: JobRegistry | None = None,
        data_loader: DataLoader | None = None,
        flower_run_id: int | None = None,
    ) -> None:
        self.flower_run_id = flower_run_id
        if steps is None or jobs is None:
            from vfm_flower.jobs_builtin import builtin_registry
            from vfm_flower.steps import builtin_steps

            steps = steps if steps is not None else builtin_steps()
            jobs = jobs if jobs is not None else builtin_registry()
        self.steps = steps
        self.jobs = jobs
        self.data_loader = data_loader
        self.settings = settings
        self.state = state
        self.identity = PartyIdentity.load(settings.key_path, expected_party=settings.party)
        self.signed = SignedAgreement.load(settings.agreement_path)
        self.agreement = self.signed.agreement
        self.terms = self.agreement.party(settings.party)
        listed = self.terms.public_identity
        if listed != self.identity.public:
            raise ConfigurationError(
                f"key file {settings.key_path} is not the key the agreement lists for "
                f"'{settings.party}'"
            )
        self.party = settings.party
        self.work_dir = settings.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._replay = ReplayGuard(self.state.tokens("replay_ids"))
        self._audit: AuditLog | None = None
        self.request: StepRequest | None = None
        self.job_terms: JobTerms | None = None

    # --- helpers for protocol steps -------------------------------------------------------
    @property
    def is_label_owner(self) -> bool:
        return self.party == self.agreement.label_owner

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog.open(
                audit_log_path(self.work_dir, self.agreement.terms_hash()),
                self.identity,
                self.agreement.terms_hash(),
            )
        return self._audit

    @property
    def run_key(self) -> str:
        key = self.state.get("run_key")
        if not key:
            raise ProtocolAbort("session", self.party, "no session yet: the hello phase must run")
        return str(key)

    def scratch_directory(self, name: str) -> Path:
        """A private directory (mode 0700) of this run for a step's files that must outlive
        one message (a spool); removed with the run's state files at its end."""
        from vfm_flower.state import run_directory

        run = run_directory(self.work_dir, self.flower_run_id or self.run_key)
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        return run / name

    def seal(
        self, recipient: str, topic: str, plaintext: bytes, *, phase: str, round: int
    ) -> bytes:
        """Encrypt and sign a payload for another party of the agreement."""
        peer = self.agreement.party(recipient).public_identity
        return seal_envelope(
            self.identity,
            peer,
            run_id=self.run_key,
            phase=phase,
            round=round,
            topic=topic,
            plaintext=plaintext,
        )

    def open(
        self, request: StepRequest, sender: str, topic: str, *, phase: str, round: int
    ) -> bytes:
        """Verify and decrypt the envelope ``sender`` sent on ``topic``; refuse anything else."""
        blob = request.inbox.get((sender, topic))
        if blob is None:
            raise ProtocolAbort(
                request.kind, self.party, f"expected an envelope '{topic}' from '{sender}'"
            )
        peer = self.agreement.party(sender).public_identity
        plaintext = open_envelope(
            blob,
            self.identity,
            peer,
            run_id=self.run_key,
            phase=phase,
            round=round,
            topic=topic,
            replay_guard=self._replay,
        )
        self.state.set_tokens("replay_ids", set(self._replay.export()))
        return plaintext

    def claim_mask_label(self, label: str) -> None:
        """Refuse to mask two vectors under one label (their difference would leak)."""
        labels = self.state.tokens("mask_labels")
        if label in labels:
            raise PolicyViolation(
                "session", f"mask label '{label}' was already used in this run (replayed step)"
            )
        self.state.set_tokens("mask_labels", labels | {label})

    def read_table(self, *, id_columns_only: bool = False) -> pd.DataFrame:
        """This party's rows: the app's data loader, else the CSV file of the data set the
        job names (``data-path`` when it names none); ``id_columns_only`` keeps (and for a
        CSV file reads) only the agreement's id columns."""
        id_columns = tuple(self.terms.id_columns)
        data_set = self.request.job.data_set if self.request is not None else None
        path = self.settings.data_path_for(data_set)
        if self.data_loader is None:
            self._check_data_unchanged(path, data_set)
            return read_party_table(
                path, party=self.party, id_columns=id_columns, id_columns_only=id_columns_only
            )
        frame = self.data_loader(dataclasses.replace(self.settings, data_path=path))
        if not hasattr(frame, "columns") or not hasattr(frame, "iloc"):
            raise ConfigurationError(
                f"party '{self.party}': the data loader must return a pandas DataFrame"
            )
        absent = [c for c in id_columns if c not in frame.columns]
        if absent:
            raise DataError(
                f"party '{self.party}': the loaded data lacks id column(s) {', '.join(absent)}"
            )
        if len(frame) == 0:
            raise DataError(f"party '{self.party}': the loaded data has no rows")
        frame = frame[list(id_columns)].copy() if id_columns_only else frame.copy()
        for column in id_columns:
            frame[column] = frame[column].astype("string").astype(object)
        check_id_lengths(frame, id_columns, self.party)
        return frame

    def _check_data_unchanged(self, path: Path, data_set: str | None) -> None:
        """The file a job reads is the same at every message of the run (each message reads
        it again; a file replaced or still being copied would give other rows): its SHA-256
        is kept at the first read and compared at every later one."""
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return  # read_party_table names the problem
        kept = self.state.get("data.sha256")
        if kept is None:
            self.state.set("data.sha256", digest)
        elif kept != digest:
            raise DataError(
                f"party '{self.party}': its data file ({data_set or 'data-path'}) changed during "
                "the job: refusing to go on with other rows (put new files in place with mv, "
                "never by copying over a file in use)"
            )

    # --- the one entry point ----------------------------------------------------------------
    def handle(self, request: StepRequest) -> StepReply:
        """Check the request against this party's agreement, run the step, sign the reply."""
        self.request = request
        spec = self.steps.get(request.kind)
        try:
            if spec is None:
                raise ProtocolAbort(request.kind, self.party, "unknown message kind")
            self._check_request(request, spec)
            reply = StepReply(party=self.party)
            context = PartyContext(self, request, reply)
            self._finish_alignment_if_due(context)
            spec.handler(context)
            self._check_release(spec, reply)
            self._check_outgoing(context, reply)
        except PolicyViolation as exc:
            self.audit.record(request.kind, request.step, f"refused:{exc.rule}", detail=str(exc))
            self._seal_if_no_session(request, exc)
            raise
        except VfmError as exc:
            self.audit.record(request.kind, request.step, "abort", detail=type(exc).__name__)
            self._seal_if_no_session(request, exc)
            raise
        except Exception as exc:  # an unexpected failure still ends as a clean, named abort
            self.audit.record(request.kind, request.step, "abort", detail=type(exc).__name__)
            raise ProtocolAbort(
                request.kind, self.party, f"internal error ({type(exc).__name__}: {exc})"
            ) from exc
        reply.party = self.party
        reply.public.setdefault("step", request.step)
        reply.signature = self.identity.sign(
            reply_signing_bytes(
                run_ref=request.session.run_key if request.session else "hello",
                phase=request.kind,
                step=request.step,
                party=self.party,
                public=reply.public,
            )
        )
        if request.kind in ("query.close", "query.seal"):
            # the reply carries this log's head (then the seal): signed, not logged
            return reply
        bytes_in = sum(len(b) for b in request.inbox.values()) + sum(
            a.nbytes for a in request.sums.values()
        )
        bytes_out = sum(len(b) for b in reply.outbox.values()) + sum(
            a.nbytes for a in reply.masked.values()
        )
        self._count_for_summary(request, reply, bytes_in, bytes_out)
        self.audit.record(
            request.kind,
            request.step,
            "ok",
            sizes={
                k: v
                for k, v in reply.public.items()
                if isinstance(v, int) and not isinstance(v, bool)
            },
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            payload_hashes=[payload_hash(b) for b in reply.outbox.values()],
        )
        return reply

    def _finish_alignment_if_due(self, context: PartyContext) -> None:
        """Alignment completes on every party: a passive party's positions (or slot map)
        arrive with the next message it gets, whatever step that is, and are applied before
        the step runs."""
        from vfm_flower.steps.alignment import JOINT_ROWS, TOPIC_POSITIONS, TOPIC_SLOTS

        lo = self.agreement.label_owner
        if (lo, TOPIC_POSITIONS) in context.request.inbox and JOINT_ROWS not in self.state:
            context.aligned_rows()
        if (lo, TOPIC_SLOTS) in context.request.inbox and "hm.slot_of_row" not in self.state:
            context.passive_layout()

    def _seal_if_no_session(self, request: StepRequest, exc: VfmError) -> None:
        """A refused hello ends this party's part of the run: no close round will seal it
        (and no close will bring the job's outcome: the partner's log says it here).

        Only before this party's own hello succeeded: later, a request without a session is
        a server trying to make the parties seal without the cross-signed close.
        """
        if request.session is None and not self.state.get("hello_nonce") and not self.audit.sealed:
            self.audit.seal(round=request.step, detail="refused before the session started")
            self.record_job_summary(f"refused by this party at {request.kind}: {exc}")

    # --- the partner's own log ----------------------------------------------------------------
    def _count_for_summary(
        self, request: StepRequest, reply: StepReply, bytes_in: int, bytes_out: int
    ) -> None:
        """What this job released and received so far, for :meth:`record_job_summary`."""
        if request.kind == "query.hello":
            self.state.set("summary.started", time.time())
        released = self.state.tokens("summary.released") | job_summary.released_facts(reply.public)
        self.state.set_tokens("summary.released", released)
        for key, n in (("summary.sent", bytes_out), ("summary.received", bytes_in)):
            self.state.set(key, int(self.state.get(key, 0)) + int(n))

    def record_job_summary(
        self, outcome: str, received: Mapping[str, Any] | None = None
    ) -> job_summary.JobSummary:
        """Append this job's one line to the partner's log (:mod:`vfm_flower.job_summary`)."""
        job = self.request.job if self.request is not None else None
        started = float(self.state.get("summary.started", time.time()))
        summary = job_summary.JobSummary(
            party=self.party,
            job=f"{job.kind} {job.operation}" if job is not None else "unknown job",
            job_counter=self.audit.job_counter,
            outcome=outcome,
            data_set=job.data_set if job is not None else None,
            released=tuple(sorted(self.state.tokens("summary.released"))),
            sent_bytes=int(self.state.get("summary.sent", 0)),
            received_bytes=int(self.state.get("summary.received", 0)),
            received=dict(received or {}),
            outputs=job_summary.outputs_since(self.work_dir, started),
            work_dir=str(self.work_dir),
        )
        job_summary.record_job_summary(self.work_dir, summary)
        return summary

    def _check_request(self, request: StepRequest, spec: StepSpec) -> None:
        """The party's own enforcement, before it touches data, at every phase."""
        own_hash = self.agreement.terms_hash()
        if request.agreement_hash != own_hash:
            raise PolicyViolation(
                "agreement_hash",
                f"the server runs agreement {request.agreement_hash[:12]}..., party "
                f"'{self.party}' signed {own_hash[:12]}...",
            )
        job = request.job
        if job.kind not in self.jobs:
            raise PolicyViolation(
                "job_kind",
                f"party '{self.party}' runs no job kind '{job.kind}' (its app knows: "
                f"{', '.join(self.jobs.names())})",
            )
        self.job_terms = policy.check_job(self.signed, job, self.jobs.get(job.kind))
        policy.check_step(spec.kind, spec.jobs, spec.operations, job)
        session = request.session
        if session is None:
            if request.kind != "query.hello":
                raise PolicyViolation("session", f"'{request.kind}' arrived without a session")
            return
        if self.flower_run_id is not None and session.flower_run_id != self.flower_run_id:
            raise PolicyViolation("session", "the session names another Flower run than this one")
        nonce = self.state.get("hello_nonce")
        if not nonce or session.party_nonces.get(self.party) != nonce:
            raise PolicyViolation(
                "session",
                "the session does not carry this party's hello nonce (replayed or forged run)",
            )
        if set(session.party_nonces) != set(self.agreement.party_names):
            raise PolicyViolation(
                "session", "the session does not list a nonce from every party of the agreement"
            )
        bound = self.state.get("job_digest")
        if not bound:
            raise PolicyViolation("session", "no job was bound at hello in this run")
        policy.check_job_binding(str(bound), job)
        if session.job_digest != bound:
            raise PolicyViolation(
                "job_changed", "the session names another job than the one bound at hello"
            )
        stored = self.state.get("run_key")
        key = session.run_key
        if stored and stored != key:
            raise PolicyViolation("session", "the session changed within one run")
        if stored and self.state.get("hellos_digest") != session.hellos_digest():
            raise PolicyViolation(
                "session", "the session's signed hellos changed within one run (set sizes)"
            )
        if not stored:
            policy.check_operator_signature(
                self.agreement, session.operator_signature, session.signing_bytes(), "session"
            )
            if session.job_counter != self.audit.job_counter:
                raise PolicyViolation(
                    "session", "the session names another job counter than its hello"
                )
            self._check_peer_hellos(session)
            self.state.set("hellos_digest", session.hellos_digest())
        self._check_operator_request(request, key)
        self.state.set("run_key", key)

    def _check_operator_request(self, request: StepRequest, run_key: str) -> None:
        """Every request after hello is the operator's, for this party, in order: signed
        (rule ``operator``) and later than every earlier one of the run (``session``), so
        whoever relays messages cannot drive, reorder or repeat steps itself."""
        policy.check_operator_signature(
            self.agreement,
            request.operator_signature,
            request_signing_bytes(
                run_ref=run_key,
                kind=request.kind,
                step=request.step,
                sequence=request.sequence,
                party=self.party,
                params=request.params,
                sums=request.sums,
            ),
            f"'{request.kind}' request",
        )
        last = int(self.state.get("request_sequence") or 0)
        if request.sequence <= last:
            raise PolicyViolation(
                "session",
                f"request {request.sequence} of this run arrived after request {last} "
                "(replayed or reordered)",
            )
        self.state.set("request_sequence", str(request.sequence))

    def _check_peer_hellos(self, session: SessionInfo) -> None:
        """Every party's signed hello names this agreement and this job (once per run)."""
        own_hash = self.agreement.terms_hash()
        reported: dict[str, str] = {}
        extra = sorted(set(session.hellos) - set(self.agreement.party_names))
        if extra:
            raise PolicyViolation(
                "session", f"the session carries hellos of parties outside the agreement: {extra}"
            )
        for name in self.agreement.party_names:
            hello = session.hellos.get(name)
            if hello is None:
                raise PolicyViolation("session", f"the session lacks the signed hello of '{name}'")
            public, signature = hello
            try:
                self.agreement.party(name).public_identity.verify(
                    signature,
                    reply_signing_bytes(
                        run_ref="hello", phase="query.hello", step=1, party=name, public=public
                    ),
                )
            except SignatureError as exc:
                raise PolicyViolation(
                    "session", f"the hello of '{name}' in the session is not signed by '{name}'"
                ) from exc
            if public.get("nonce") != session.party_nonces.get(name):
                raise PolicyViolation("session", f"the hello of '{name}' carries another nonce")
            if public.get("server_nonce") != session.server_nonce:
                raise PolicyViolation("session", f"the hello of '{name}' is from another run")
            rows = public.get("rows")
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise PolicyViolation("session", f"the hello of '{name}' has no valid row count")
            policy.check_same_agreement(own_hash, {name: str(public.get("agreement_hash"))})
            reported[name] = str(public.get("job_digest"))
        policy.check_same_job(str(self.state.get("job_digest")), reported)

    def _check_release(self, spec: StepSpec, reply: StepReply) -> None:
        """Every public fact of a job step is a protocol fact or on the release list."""
        if ANY in spec.jobs or self.job_terms is None:
            return
        facts = set(reply.public) - set(spec.public) - set(PROTOCOL_FACTS)
        policy.check_release(self.job_terms, "server", facts)

    def _check_outgoing(self, context: PartyContext, reply: StepReply) -> None:
        """Nothing leaves but envelopes this party sealed in this run and masked shares."""
        for (recipient, topic), blob in reply.outbox.items():
            try:
                header = peek_header(blob)
            except EnvelopeError as exc:
                raise ProtocolAbort(
                    self.request.kind if self.request else "step",
                    self.party,
                    f"outgoing '{topic}' is not an envelope (nothing leaves in plaintext)",
                ) from exc
            if (header.run_id, header.sender, header.recipient, header.topic) != (
                self.run_key if self.state.get("run_key") else header.run_id,
                self.party,
                recipient,
                topic,
            ):
                raise ProtocolAbort("step", self.party, f"outgoing '{topic}' is misaddressed")
        unmasked = sorted(set(reply.masked) - context.shared_names)
        if unmasked:
            raise ProtocolAbort(
                "step", self.party, f"vector(s) {', '.join(unmasked)} were not masked by share()"
            )

    def check_release(self, audience: str, *names: str) -> None:
        """Refuse releasing ``names`` to ``audience`` unless the agreement lists them."""
        if self.job_terms is None:
            raise ProtocolAbort("release", self.party, "no job is running")
        policy.check_release(self.job_terms, audience, names)

    def may_release(self, audience: str, name: str) -> bool:
        """Whether the agreement's release list names ``name`` for ``audience``."""
        return self.job_terms is not None and name in self.job_terms.release.get(audience, ())


def audit_log_path(work_dir: Path, agreement_hash: str) -> Path:
    """One audit log per agreement in a work dir."""
    return work_dir / f"audit-{agreement_hash[:16]}.jsonl"


def new_nonce() -> str:
    return secrets.token_hex(16)

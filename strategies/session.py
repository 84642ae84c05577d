"""``VerticalSession``: one governed vertical job over a Flower ``Grid``, for any ServerApp.

A Flower team calls it inside its own ``@app.main()``::

    with vertical_session(grid, context, job=job, job_kind=MY_KIND,
                          agreement_path=..., workdir=...) as session:
        joint = session.align()                          # PSI, completed on every party
        replies = session.send("query.stats", to=session.passive_parties)
        session.send("query.combine", to=[session.label_owner])

On entry the session checks the job against the signed agreement (the server's own copy),
waits for every party, and runs hello: every party checks the agreement and the job and signs
its answer; the job's digest, the parties' nonces and their signed hellos make the session
every later message carries. On exit it runs the cross-signed close (every party's audit log
and the server's sealed with each other's heads) and writes ``result.json`` (what the server
learned); after an error it records the refusal, closes what it can and re-raises, and no
result file is left.

Between the two, ``send`` is one message round: each named party gets its request and every
envelope other parties addressed to it since its last message; the replies are verified and
their envelopes queued in turn. ``secure_sum`` adds pairwise-masked vectors (the server learns
nothing of them). Rounds, bytes and seconds are counted per phase (``phase``).

How it relates to Flower's ``Strategy``: Flower's strategies configure and aggregate
horizontal rounds (``configure_train`` / ``aggregate_train``). A vertical job is a sequence of
different steps per party, so the session plays the part ``SecAggPlusWorkflow`` plays around a
strategy: a security and governance layer the user's own ``main`` drives, step by step.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from vfm_flower.agreement import Agreement, SignedAgreement
from vfm_flower.audit import AuditLog
from vfm_flower.audit_heads import CloseCertificate, SignedHead
from vfm_flower.errors import ConfigurationError, ProtocolAbort, VfmError
from vfm_flower.job_summary import RELAYED_FIGURES
from vfm_flower.jobs import Job, JobKind
from vfm_flower.keys import PartyIdentity
from vfm_flower.masking import sum_masked
from vfm_flower.party import StepReply, StepRequest, audit_log_path
from vfm_flower.policy import (
    check_job,
    check_job_counter,
    check_operator_key,
    check_party_presence,
    check_same_agreement,
    check_same_job,
    check_set_size,
)
from vfm_flower.psi_chunks import DEFAULT_CHUNK_IDS, ChunkSchedule, check_chunk_ids
from vfm_flower.session import SessionInfo, server_hello_bytes
from vfm_flower.steps.governance import charge_privacy_budget
from vfm_flower.strategies.operator_log import stream_to_operator
from vfm_flower.strategies.settings import align_chunk_ids_of
from vfm_flower.strategies.transport import JobResult, PhaseStats, Transport

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, dict[str, Any]], None]
progress_logger = logging.getLogger("vfm_flower.progress")

DEFAULT_ROUND_TIMEOUT = 600.0
DEFAULT_PARTY_WAIT_TIMEOUT = 120.0


def log_progress(event: str, details: dict[str, Any]) -> None:
    """Default progress sink: a log record the CLI (or any log handler) can render."""
    progress_logger.info(
        "%s %s", event, details, extra={"vfm_event": event, "vfm_details": details}
    )


def load_operator_identity(agreement: Agreement, workdir: Path) -> PartyIdentity:
    """The operator's signing identity, ``WORKDIR/NAME.key`` for the operator the agreement
    names; refused (rule ``operator``) unless the agreement lists exactly this key."""
    name = agreement.operator.name
    key = workdir / f"{name}.key"
    if not key.exists():
        raise ConfigurationError(
            f"the operator's key {key} is missing: the server runs with the key of the "
            f"operator the agreement names ('{name}'); put {name}.key (from `vfm keygen "
            f"--party {name}`) in the server work dir"
        )
    identity = PartyIdentity.load(key, expected_party=name)
    check_operator_key(agreement, identity.public)
    return identity


class VerticalSession:
    """One governed vertical job: hello on entry, steps, cross-signed close on exit.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    agreement : SignedAgreement
        The operator's copy of the signed agreement.
    job : Job
        The job (kind, operation, every parameter), e.g. ``MY_KIND.bind("run", {...})``.
    run_id : int
        Flower's run id (``context.run_id``); part of the run key.
    workdir : Path
        Where the server keeps its audit log and the operator's key (``NAME.key`` of the
        operator the agreement names: the server's hello, session and audit log are signed
        with it).
    job_kind : JobKind, optional
        The registered kind of ``job`` (then the server also checks that the job sets exactly
        the kind's parameters).
    round_timeout, party_wait_timeout : float
        Seconds to wait for one round's replies, and for every party to be online.
    progress : callable, optional
        Called with ``(event, details)`` at phase starts and ends (and by jobs, per iteration).
    """

    def __init__(
        self,
        grid: Grid,
        agreement: SignedAgreement,
        job: Job,
        *,
        run_id: int,
        workdir: Path,
        job_kind: JobKind | None = None,
        round_timeout: float = DEFAULT_ROUND_TIMEOUT,
        party_wait_timeout: float = DEFAULT_PARTY_WAIT_TIMEOUT,
        poll_interval: float = 0.5,
        progress: ProgressCallback | None = None,
        align_chunk_ids: int = DEFAULT_CHUNK_IDS,
    ) -> None:
        self.grid = grid
        self.signed = agreement
        self.agreement = agreement.agreement
        self.job = job
        self.job_kind = job_kind
        self.run_id = int(run_id)
        self.workdir = Path(workdir)
        self.party_wait_timeout = float(party_wait_timeout)
        self.align_chunk_ids = check_chunk_ids(align_chunk_ids)
        self.poll_interval = float(poll_interval)
        self.progress = progress or log_progress
        self.agreement_hash = self.agreement.terms_hash()
        self.transport = Transport(grid, self.agreement, round_timeout=round_timeout)
        self.info: SessionInfo | None = None
        self._identity: PartyIdentity | None = None
        self._audit: AuditLog | None = None
        self._certificate: CloseCertificate | None = None

    # --- who --------------------------------------------------------------------------------
    @property
    def parties(self) -> list[str]:
        return list(self.agreement.party_names)

    @property
    def label_owner(self) -> str:
        return self.agreement.label_owner

    @property
    def passive_parties(self) -> list[str]:
        return list(self.agreement.passive_parties)

    @property
    def result(self) -> JobResult:
        return self.transport.result

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise ProtocolAbort("session", None, "the session has not started (use `with`)")
        return self._audit

    # --- entry and exit ---------------------------------------------------------------------
    @property
    def result_files(self) -> tuple[Path, Path]:
        """``result.json`` (the latest job) and ``result-<operation>.json`` in the work dir."""
        return (
            self.workdir / "result.json",
            self.workdir / f"result-{self.job.operation}.json",
        )

    def write_result(self) -> None:
        """Write what the server learned (sizes, rounds, bytes, seconds, released facts)."""
        summary = {
            "job": self.job.operation,
            "kind": self.job.kind,
            "phases": {name: asdict(stats) for name, stats in self.result.phases.items()},
            "rows": self.result.rows,
            "joint_rows": self.result.joint_rows,
            "total_rounds": self.result.total_rounds,
            "public": self.result.public,
        }
        text = json.dumps(summary, indent=2, sort_keys=True)
        for out in reversed(self.result_files):
            tmp = out.with_name(f".{out.name}.partial")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        released = ", ".join(
            f"{k} {v}"
            for k, v in sorted(self.result.public.items())
            if k not in ("headline", "step")
        )
        logger.info(
            "job done (%s %s): %d rounds; released: %s; result in %s",
            self.job.kind,
            self.job.operation,
            self.result.total_rounds,
            released or "nothing",
            self.result_files[0],
        )

    def __enter__(self) -> VerticalSession:
        from vfm_flower.runtime.inprocess import InProcessGrid

        if not isinstance(self.grid, InProcessGrid):  # Flower streams this process's output
            stream_to_operator()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # a failed job must not leave an earlier job's result looking like its own
        for path in self.result_files:
            path.unlink(missing_ok=True)
        self._identity = load_operator_identity(self.agreement, self.workdir)
        self.transport.signer = self._identity
        self._audit = AuditLog.open(
            audit_log_path(self.workdir, self.agreement_hash), self._identity, self.agreement_hash
        )
        try:
            check_job(self.signed, self.job, self.job_kind)
            self.hello()
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._abort(exc)
            return
        self.audit.record("job", 0, "done", sizes={"rounds": self.result.total_rounds})
        try:
            self.close()
        except BaseException as close_exc:
            self._seal_alone(close_exc)
            raise
        self.write_result()

    def _abort(self, exc: BaseException) -> None:
        rule = getattr(exc, "rule", None)
        decision = f"refused:{rule}" if rule else "abort"
        logger.error("job aborted in phase %s: %s", self.transport.phase, exc)
        self.audit.record(self.transport.phase, 0, decision, detail=str(exc)[:200])
        if self.info is not None and self.transport.node_of:
            self.transport.round_timeout = min(self.transport.round_timeout, 30.0)
            try:
                self.close(outcome=abort_outcome(self.transport.phase, exc, self.parties))
                return
            except VfmError as close_exc:
                logger.warning(
                    "could not close the parties' audit logs after the abort: %s", close_exc
                )
                self._seal_without_parties("the close after the abort failed")
                return
        self._seal_without_parties("aborted before the session")

    def _seal_without_parties(self, why: str) -> None:
        """Seal the operator's log when the close could not complete (with the job's close
        certificate if the operator issued one: it holds it in its certificates file). The
        reason goes into the seal: nothing may come between the certified head and the seal
        but the operator's attestations."""
        if not self.audit.sealed:
            self.audit.seal(
                certificate=self._certificate, detail=f"closed without the parties: {why}"
            )

    def _seal_alone(self, exc: BaseException) -> None:
        """The close itself failed: seal the operator's log without the parties (the
        verifiers then see a job that did not close normally)."""
        rule = getattr(exc, "rule", None)
        logger.error("the close failed: %s", exc)
        self._seal_without_parties(f"refused:{rule}" if rule else f"abort: {exc}"[:150])

    # --- phases -------------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, int]]:
        """Count the rounds, bytes and seconds of a phase; audit and report its end.

        Yields a dict the caller may fill with sizes (``joint_rows``, ``iterations``...) that
        go into the phase's audit entry and progress event.
        """
        self.transport.phase = name
        stats = self.result.phases.setdefault(name, PhaseStats())
        self.progress("phase", {"phase": name})
        sizes: dict[str, int] = {}
        yield sizes
        self.audit.record(
            name,
            stats.rounds,
            "ok",
            sizes={"rounds": stats.rounds, **sizes},
            bytes_in=stats.bytes_from_parties,
            bytes_out=stats.bytes_to_parties,
        )
        logger.info(
            "phase %s done: %d rounds, %.1fs, %d bytes to parties, %d bytes from parties",
            name,
            stats.rounds,
            stats.seconds,
            stats.bytes_to_parties,
            stats.bytes_from_parties,
        )
        self.progress("phase-done", {"phase": name, "rounds": stats.rounds, **sizes})

    def wait_for_nodes(self) -> list[int]:
        """Poll until as many nodes as parties are online, or the wait times out."""
        need = len(self.parties)
        deadline = time.monotonic() + self.party_wait_timeout
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < need and time.monotonic() < deadline:
            time.sleep(self.poll_interval)
            nodes = list(self.grid.get_node_ids())
        return nodes

    def hello(self) -> None:
        """Identify every party, check its agreement, job and signature; fix the session."""
        self.transport.phase = "hello"
        nodes = self.wait_for_nodes()
        server_nonce = secrets.token_hex(16)
        assert self._identity is not None
        # the job's number: one above the last in the operator's own log, which must not be
        # behind the close certificates the operator holds
        job_counter = self.audit.job_counter + 1
        check_job_counter(
            job_counter,
            self.audit.job_counter,
            self.audit.last_certified_job(),
        )
        self.audit.begin_job(job_counter, round=1)
        # the privacy budget, counted in the operator's own log as in every party's
        charge_privacy_budget(self.audit, self.agreement, self.job, 1)
        signed_hello = self._identity.sign(
            server_hello_bytes(
                agreement_hash=self.agreement_hash,
                job_digest=self.job.digest(),
                flower_run_id=self.run_id,
                server_nonce=server_nonce,
                job_counter=job_counter,
            )
        )
        params = {
            "server_nonce": server_nonce,
            "flower_run_id": self.run_id,
            "job_counter": job_counter,
            "operator_signature": base64.b64encode(signed_hello).decode(),
        }
        request = self._request("query.hello", 1, params=params)
        replies = self.transport.round("query.hello", {n: request for n in nodes}, by_node=True)
        by_party: dict[str, StepReply] = {}
        for node, reply in replies.items():
            if reply.party not in self.parties:
                raise ProtocolAbort(
                    "hello", reply.party, "this party is not named in the agreement"
                )
            if reply.party in by_party:
                raise ProtocolAbort("hello", reply.party, "two SuperNodes claim this party")
            self.transport.verify_reply("query.hello", 1, reply, run_ref="hello")
            if reply.public.get("server_nonce") != server_nonce:
                raise ProtocolAbort("hello", reply.party, "hello reply is not for this run")
            by_party[reply.party] = reply
            self.transport.node_of[reply.party] = node
        missing = [p for p in self.parties if p not in by_party]
        if missing:
            raise ProtocolAbort(
                "hello",
                missing[0],
                f"party(ies) {', '.join(missing)} did not connect within "
                f"{self.party_wait_timeout:.0f}s (is each partner's SuperNode running with the "
                "right --superlink address?)",
            )
        check_party_presence(self.agreement, by_party)
        check_same_agreement(
            self.agreement_hash,
            {p: str(r.public.get("agreement_hash")) for p, r in by_party.items()},
        )
        check_same_job(
            self.job.digest(), {p: str(r.public.get("job_digest")) for p, r in by_party.items()}
        )
        for party, reply in by_party.items():
            rows = reply.public.get("rows")
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ProtocolAbort("hello", party, "hello reply carries no valid row count")
            check_set_size(rows, self.agreement.party(party).max_set_size, party)
            self.result.rows[party] = rows
        self.info = SessionInfo(
            flower_run_id=self.run_id,
            server_nonce=server_nonce,
            party_nonces={p: str(r.public["nonce"]) for p, r in sorted(by_party.items())},
            job_digest=self.job.digest(),
            hellos={p: (dict(r.public), r.signature) for p, r in sorted(by_party.items())},
            job_counter=job_counter,
        )
        # the operator vouches for the session: every party checks it before its first step
        self.info = replace(
            self.info, operator_signature=self._identity.sign(self.info.signing_bytes())
        )
        self.transport.run_ref = self.info.run_key
        self.audit.record("hello", 1, "ok", sizes=dict(self.result.rows))
        self.progress("hello", {"parties": sorted(by_party), "rows": dict(self.result.rows)})

    def align(self) -> int:
        """Private set intersection of every party's ids; returns the joint rows.

        Three rounds for sets up to ``align_chunk_ids`` ids, one more per further chunk of
        the largest set (:class:`vfm_flower.psi_chunks.ChunkSchedule`, from the set sizes
        of the hellos). Alignment completes on every party: the label owner's last
        envelopes (each passive party's slot map or positions) reach the passive parties
        with their next message, whatever step it is, and the party runtime finishes the
        alignment before that step runs.
        """
        lo = self.label_owner
        # the parties check the schedule against the signed hellos; without a hello's count
        # (a session they will refuse) the server plans one chunk
        rows = {p: self.result.rows.get(p) or 1 for p in self.parties}
        schedule = ChunkSchedule(rows, lo, self.align_chunk_ids)
        params = {"chunk_ids": schedule.chunk_ids}
        with self.phase("align") as sizes:
            for step in range(1, schedule.match_round + 1):
                to = schedule.parties_in_round(step)
                last = self.send("query.align", to=to, step=step, params=params)
                if schedule.match_round > 3:
                    self.progress("align", {"round": step, "of": schedule.match_round})
            joint = last[lo].public.get("joint_rows")
            if isinstance(joint, bool) or not isinstance(joint, int):
                raise ProtocolAbort("align", lo, "its reply carries no joint row count")
            self.result.joint_rows = sizes["joint_rows"] = joint
        return joint

    # --- steps --------------------------------------------------------------------------------
    def _request(
        self,
        kind: str,
        step: int,
        *,
        params: Mapping[str, Any] | None = None,
        sums: Mapping[str, np.ndarray] | None = None,
    ) -> StepRequest:
        return StepRequest(
            kind=kind,
            step=step,
            session=self.info,
            job=self.job,
            agreement_hash=self.agreement_hash,
            params=dict(params or {}),
            sums=dict(sums or {}),
        )

    def request(
        self,
        kind: str,
        step: int,
        *,
        params: Mapping[str, Any] | None = None,
        sums: Mapping[str, np.ndarray] | None = None,
    ) -> StepRequest:
        """The request one party gets for step ``kind`` (round ``step``) of this session."""
        if self.info is None:
            raise ProtocolAbort(kind, None, "no session yet: hello has not run")
        return self._request(kind, step, params=params, sums=sums)

    def send(
        self,
        kind: str,
        to: Iterable[str] | None = None,
        *,
        step: int = 1,
        params: Mapping[str, Any] | None = None,
        sums: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, StepReply]:
        """One round: step ``kind`` to the named parties (default: all); verified replies.

        Every party also gets the envelopes addressed to it since its last message; the
        envelopes in the replies are queued for their recipients' next messages.
        """
        names = list(to) if to is not None else self.parties
        unknown = [p for p in names if p not in self.parties]
        if unknown:
            raise ProtocolAbort(kind, unknown[0], "not a party of the agreement")
        return self.transport.exchange(
            kind, {p: self.request(kind, step, params=params, sums=sums) for p in names}
        )

    def send_each(
        self,
        kinds: Mapping[str, Iterable[str]],
        *,
        step: int = 1,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, StepReply]:
        """One round in which each group of parties runs its own step: ``{kind: parties}``.

        For steps that can overlap, e.g. the label owner computing the encryption randomness
        of its next message while the passive parties compute theirs: one round, not two.
        Every party appears at most once; replies by party.
        """
        requests: dict[str, StepRequest] = {}
        for kind, names in kinds.items():
            for party in names:
                if party not in self.parties:
                    raise ProtocolAbort(kind, party, "not a party of the agreement")
                if party in requests:
                    raise ProtocolAbort(kind, party, "a party runs one step per round")
                requests[party] = self.request(kind, step, params=params)
        if not requests:
            return {}
        return self.transport.exchange("+".join(kinds), requests)

    @staticmethod
    def secure_sum(replies: Mapping[str, StepReply], name: str) -> np.ndarray:
        """Sum the pairwise-masked vectors ``name`` of the replies (mod 2^64).

        The masks cancel only in the recipient's unmasking (the recipient removes its own
        pairwise masks): the server learns nothing of the vectors or of their sum.
        """
        vectors = []
        for party, reply in replies.items():
            if name not in reply.masked:
                raise ProtocolAbort("secure_sum", party, f"its reply has no masked vector '{name}'")
            vectors.append(reply.masked[name])
        try:
            return sum_masked(vectors)
        except ValueError as exc:
            raise ProtocolAbort("secure_sum", None, f"masked vectors '{name}': {exc}") from exc

    def publish(self, **facts: Any) -> None:
        """Record public facts (already released by a party's signed reply) in the result."""
        self.result.public.update(facts)

    # --- the end ------------------------------------------------------------------------------
    def close(self, outcome: str = "done") -> None:
        """Last two rounds of every job: cross-sign audit heads with every party, send every
        party the close certificate (every log's head, countersigned), seal all logs.

        The close request also tells every party the job's ``outcome`` and the scalar facts
        the parties released to the server (:func:`released_figures`), for the one line each
        partner's own log gets (:mod:`vfm_flower.job_summary`)."""
        assert self._identity is not None
        self.transport.phase = "close"
        self.result.phases.setdefault("close", PhaseStats())
        own = self.audit.signed_head()
        parties = list(self.transport.node_of)
        params = {
            "server_head": own.to_json(),
            "outcome": outcome,
            "released": released_figures(self.result.public),
        }
        replies = self.send("query.close", to=parties, params=params)
        heads = {own.writer: own}
        for party, reply in replies.items():
            heads[party] = head = self._party_head(party, reply)
            self.audit.attest_peer_head(
                head, peer_public=self.agreement.party(party).public_identity
            )
        certificate = CloseCertificate(
            self.agreement_hash, self.audit.job_counter, heads
        ).signed_by(self._identity)
        # kept before any party gets it: no party holds a certificate the operator lacks
        self.audit.keep_certificate(certificate)
        self._certificate = certificate
        replies = self.send(
            "query.seal", to=parties, params={"certificate": json.dumps(certificate.to_json())}
        )
        sealed = {party: self._party_head(party, reply) for party, reply in replies.items()}
        self.audit.seal(sealed, certificate=certificate)

    def _party_head(self, party: str, reply: StepReply) -> SignedHead:
        """The audit head a close reply carries, signed by ``party`` for this job."""
        try:
            head = SignedHead.from_json(
                {
                    "seq": reply.public["audit_seq"],
                    "head": reply.public["audit_head"],
                    "sig": reply.public["audit_head_sig"],
                },
                writer=party,
                agreement_hash=self.agreement_hash,
                job_counter=self.audit.job_counter,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolAbort("close", party, "close reply carries no audit head") from exc
        if not head.verifies(self.agreement.party(party).public_identity):
            raise ProtocolAbort("close", party, "its audit head is not signed by its key")
        return head


def released_figures(public: Mapping[str, Any]) -> dict[str, int | float | str]:
    """The headline figures the parties released to the server that the close relays to
    every party (:data:`vfm_flower.job_summary.RELAYED_FIGURES` only: the job's outcome
    metrics and row counts every party may see; never the label owner's own-data figures
    or anything else a kind releases to the server)."""
    return {
        k: v
        for k, v in sorted(public.items())
        if k in RELAYED_FIGURES and isinstance(v, int | float) and not isinstance(v, bool)
    }


def abort_outcome(phase: str, exc: BaseException, parties: Iterable[str] = ()) -> str:
    """The outcome of an aborted job as every party's log gets it: the phase, the rule and
    the party named (only a party of the agreement), not the free text of another party's
    refusal."""
    rule = getattr(exc, "rule", None)
    if rule is None:  # a party's refusal relayed as an error reply: "[rule] ..."
        named = re.match(r"\[([a-z_]+)\]", str(getattr(exc, "reason", "")))
        rule = named.group(1) if named else None
    party = getattr(exc, "party", None)
    if party not in set(parties):
        party = None
    text = f"aborted in phase {phase}"
    if rule:
        text += f", rule [{rule}]"
    if party:
        text += f", by party '{party}'"
    return text


@contextmanager
def vertical_session(
    grid: Grid,
    context: Any,
    job: Job,
    *,
    job_kind: JobKind | None = None,
    agreement_path: str | Path | None = None,
    workdir: str | Path | None = None,
    round_timeout: float = DEFAULT_ROUND_TIMEOUT,
    party_wait_timeout: float = DEFAULT_PARTY_WAIT_TIMEOUT,
    progress: ProgressCallback | None = None,
    align_chunk_ids: int | None = None,
) -> Iterator[VerticalSession]:
    """A :class:`VerticalSession` for a ServerApp's ``main(grid, context)``.

    Parameters
    ----------
    grid, context
        What Flower passes to ``@app.main()`` (the run id comes from ``context.run_id``).
    job : Job
        The job to run: ``KIND.bind(operation, params)``.
    job_kind : JobKind, optional
        The registered kind of ``job`` (the server then also checks its parameters).
    agreement_path : path, optional
        The operator's copy of the signed agreement (default: run-config ``agreement-path``).
    workdir : path, optional
        The server's work dir: audit log, audit key, ``result.json`` (default: run-config
        ``server-workdir``).
    align_chunk_ids : int, optional
        Blinded ids per alignment message (default: run-config ``align-chunk-ids``, else
        2**20): a set of more ids takes a round more per chunk.
    """
    config = context.run_config
    agreement_path = agreement_path or str(config.get("agreement-path", "")).strip()
    workdir = workdir or str(config.get("server-workdir", "")).strip()
    if not agreement_path or not workdir:
        raise ConfigurationError(
            "vertical_session needs the agreement and the server work dir: set run-config "
            "'agreement-path' and 'server-workdir' (or pass agreement_path= and workdir=)"
        )
    session = VerticalSession(
        grid,
        SignedAgreement.load(agreement_path),
        job,
        run_id=int(context.run_id),
        workdir=Path(workdir),
        job_kind=job_kind,
        round_timeout=round_timeout,
        party_wait_timeout=party_wait_timeout,
        progress=progress,
        align_chunk_ids=align_chunk_ids_of(config, align_chunk_ids),
    )
    with session:
        yield session

"""``PartyContext``: what one job step sees and may do at one party, for one message.

A step is a plain function ``step(ctx: PartyContext) -> None`` registered for a message kind
and the job kinds it belongs to. By the time it runs, the plugin has checked the agreement,
the job (kind, operation, every parameter within the signed bounds, the same job as at hello)
and the session; after it returns, the plugin checks what it published against the release
list, signs the reply and writes the audit entry. The step only does the job's own work:

- who: ``party``, ``label_owner``, ``passive_parties``, ``result_owner``, ``is_label_owner``;
- the job: ``job`` (``ctx.job["l2"]``), ``operation``, ``kind``, ``round``, ``state``
  (per-run, kept between messages), ``min_cohort``;
- data: ``table()`` (this party's rows, from its CSV or the app's data loader),
  ``normalized_ids()`` (its ids as the agreement normalizes them, for a set protocol),
  ``aligned_rows()`` / ``aligned_table()`` (the joint customers in the common order; alignment
  completes here on a passive party), ``feature_columns()`` (checked against the agreement),
  ``labels()`` (label owner);
- sealed messages: ``send(recipient, topic, payload)`` and ``receive(sender, topic)``; a
  :class:`Topic` knows the message kind it is sealed in, the round is the step's own;
- secure sums: ``share(name, vector)`` (a pairwise-masked share for the server to add) and
  ``unmask(name)`` (the recipient's plain sum);
- encryption: ``paillier()`` (the label owner's key pair, made once per run) and
  ``paillier_from(public_bytes)`` (anyone else);
- release: ``check_cohort``, ``publish(**facts)`` (to the server, release-checked),
  ``deliver(name, payload)`` (to the result owner, release-checked),
  ``save_artifact`` / ``load_artifact`` (this party's own work dir, bound to the agreement).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower import masking
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.errors import (
    CiphertextError,
    ConfigurationError,
    DataError,
    EnvelopeError,
    PayloadError,
    ProtocolAbort,
)
from vfm_flower.policy import check_features, check_min_cohort

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from vfm_flower.agreement import Agreement, PartyTerms
    from vfm_flower.jobs import Job
    from vfm_flower.paillier import EncryptedVector, PaillierContext
    from vfm_flower.party import PartyRuntime, StepReply, StepRequest
    from vfm_flower.state import PartyState

_TOPIC = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_ARTIFACT = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_KEY_ENTRY = "paillier.public_key"

#: Topic of every delivery to the result owner: ``result.<name>``.
RESULT_PREFIX = "result."


@dataclass(frozen=True)
class Topic:
    """A kind of sealed payload and the message kind (step) that seals it.

    Parameters
    ----------
    name : str
        Dotted lower-case name (``"train.encrypted_residual"``).
    phase : str
        The message kind of the step that seals it (``"train.residual"``): the envelope is
        bound to it, and only that step may send it.
    """

    name: str
    phase: str

    def __post_init__(self) -> None:
        if not _TOPIC.match(self.name):
            raise ConfigurationError(f"topic {self.name!r} must be dotted lower-case words")


class PartyContext:
    """One step's view of the running job at one party (see the module docstring)."""

    def __init__(self, runtime: PartyRuntime, request: StepRequest, reply: StepReply) -> None:
        self.runtime = runtime  # the plugin's own protocol steps use it; jobs do not need it
        self.request = request
        self.reply = reply
        self._table: pd.DataFrame | None = None
        self.shared_names: set[str] = set()

    # --- who ----------------------------------------------------------------------------------
    @property
    def party(self) -> str:
        return self.runtime.party

    @property
    def agreement(self) -> Agreement:
        return self.runtime.agreement

    @property
    def terms(self) -> PartyTerms:
        """What the agreement says about this party."""
        return self.runtime.terms

    @property
    def label_owner(self) -> str:
        return self.agreement.label_owner

    @property
    def passive_parties(self) -> tuple[str, ...]:
        return self.agreement.passive_parties

    @property
    def result_owner(self) -> str:
        return self.agreement.result_owner

    @property
    def is_label_owner(self) -> bool:
        return self.party == self.label_owner

    @property
    def is_result_owner(self) -> bool:
        return self.party == self.result_owner

    # --- the job ------------------------------------------------------------------------------
    @property
    def job(self) -> Job:
        """The bound job: ``ctx.job["param-name"]`` for a parameter value."""
        return self.request.job

    @property
    def operation(self) -> str:
        return self.request.job.operation

    @property
    def kind(self) -> str:
        """The message kind of this step (``"train.forward"``)."""
        return self.request.kind

    @property
    def round(self) -> int:
        """The round (iteration) the server sent this step for."""
        return self.request.step

    @property
    def server_params(self) -> Mapping[str, Any]:
        """Protocol data the server attached (never a job parameter: those are in ``job``)."""
        return self.request.params

    @property
    def state(self) -> PartyState:
        """This party's per-run state, kept between messages (scalars, bytes, arrays)."""
        return self.runtime.state

    @property
    def party_rows(self) -> dict[str, int]:
        """Every party's row count, from its signed hello (checked by this party)."""
        session = self.request.session
        if session is None:
            return {}
        names = self.runtime.agreement.party_names
        return {p: int(session.hellos[p][0].get("rows", 0)) for p in names if p in session.hellos}

    @property
    def min_cohort(self) -> int:
        return self.agreement.min_cohort

    @property
    def run_id(self) -> str:
        """The run key: identifies this run (and the model a training run produces)."""
        return self.runtime.run_key

    @property
    def work_dir(self) -> os.PathLike[str]:
        return self.runtime.work_dir

    # --- data ---------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """This party's rows (its CSV file, or what the app's data loader returns)."""
        if self._table is None:
            self._table = self.runtime.read_table()
        return self._table

    def normalized_ids(self) -> list[str]:
        """This party's customer ids, normalized as the agreement says, in row order:
        checked non-empty, unique and within its maximum set size. The input of a job's own
        set protocol (the overlap job's); never log, publish or send them unblinded."""
        from vfm_flower.steps.alignment import load_normalized_ids

        return load_normalized_ids(self.runtime)

    def aligned_rows(self) -> np.ndarray:
        """Row indices of the joint customers in this party's table, in the common order."""
        from vfm_flower.steps.alignment import finish_alignment

        return finish_alignment(self.runtime, self.request)

    def aligned_table(self) -> pd.DataFrame:
        """This party's rows of the joint customers, in the common order."""
        return self.table().iloc[self.aligned_rows()].reset_index(drop=True)

    # --- hidden membership (``vfm_flower.hidden_membership``) --------------------------------
    @property
    def hides_membership(self) -> bool:
        """Whether this job's kind keeps membership from passive parties (the default)."""
        from vfm_flower.steps.alignment import hides_membership

        return hides_membership(self.runtime, self.request)

    def rows(self) -> np.ndarray:
        """The rows this party computes on: the LO's joint rows (common order); a passive
        party's joint rows if the kind reveals membership, else all its rows (own order)."""
        if self.is_label_owner or not self.hides_membership:
            return self.aligned_rows()
        return np.arange(self.passive_layout().rows, dtype=np.int64)

    def passive_layout(self) -> Any:
        """A passive party's slot map (``hidden_membership.PassiveLayout``)."""
        from vfm_flower.steps.alignment import finish_hidden_alignment

        return finish_hidden_alignment(self.runtime, self.request)

    def label_owner_layout(self) -> Any:
        """The LO's slot maps of every passive party (``hidden_membership.LabelOwnerLayout``)."""
        from vfm_flower.steps.alignment import label_owner_layout

        return label_owner_layout(self.runtime, self.request)

    def customer_tokens(self) -> list[bytes]:
        """Per-run pseudonyms of the customers, the input of per-customer masks: the LO's
        joint customers (common order), a passive party's rows (own order)."""
        from vfm_flower.steps.alignment import customer_tokens

        return customer_tokens(self.runtime, self.request)

    def feature_columns(self) -> list[str]:
        """The columns this party contributes to the job, checked against the agreement.

        The job's own list for this party if it names one, else the agreement's allowed list,
        else every column but the id and label columns; denied columns never.
        """
        terms = self.terms
        excluded = set(terms.id_columns) | set(terms.denied_features)
        if self.is_label_owner:
            excluded.add(self.agreement.label_column)
        requested = (self.job.features or {}).get(self.party)
        job_terms = self.agreement.job_terms(self.job.kind)
        if requested:
            columns = list(requested)
        elif job_terms.features is not None and self.party in job_terms.features:
            columns = list(job_terms.features[self.party])
        elif terms.allowed_features is not None:
            columns = [c for c in terms.allowed_features if c not in excluded]
        else:
            columns = [c for c in self.table().columns if c not in excluded]
        self.check_columns(columns)
        return columns

    def prepared_features(
        self, columns: list[str] | None = None, *, junk_threshold: float = 0.05
    ) -> tuple[np.ndarray, Any]:
        """This party's columns on its :meth:`rows`, prepared for a model: ``(X, plan)``.

        Numeric columns standardized, categorical ones one-hot encoded, missing values
        imputed, all fitted on those rows (``vfm_flower.preparation``) with the
        agreement's minimum cohort for every one-hot slot and binary value; ``plan`` holds
        the statistics (``plan.feature_names``, ``plan.to_json()``) to prepare new rows the
        same way. ``columns`` default to :meth:`feature_columns` and are checked.
        ``junk_threshold``: the share of a numeric column's values that may fail to parse
        (treated as missing, with a warning); a column with more is refused, named.
        """
        from vfm_flower.preparation import apply_preparation, fit_preparation

        if columns is None:
            columns = self.feature_columns()
        else:
            self.check_columns(list(columns))
        aligned = self.table().iloc[self.rows()].reset_index(drop=True)
        # feature cohorts: no one-hot slot or binary value singles out fewer customers than
        # the agreement's minimum cohort (its gradient would be a label sum over them)
        plan = fit_preparation(
            aligned,
            list(columns),
            party=self.party,
            min_cohort=self.min_cohort,
            junk_threshold=junk_threshold,
        )
        return apply_preparation(plan, aligned).matrix, plan

    def labels(self) -> pd.Series:
        """The label column on the aligned rows (label owner only)."""
        if not self.is_label_owner:
            raise ProtocolAbort(self.kind, self.party, "only the label owner holds labels")
        column = self.agreement.label_column
        if column not in self.table().columns:
            raise DataError(f"party '{self.party}': label column '{column}' is missing")
        return self.aligned_table()[column]

    def binary_labels(self) -> np.ndarray:
        """The labels on the aligned rows as 0/1 (the agreement's positive class is 1)."""
        from vfm_flower.preparation import encode_labels

        return encode_labels(self.labels(), self.agreement.positive_class, party=self.party)

    def check_columns(self, columns: list[str] | tuple[str, ...]) -> None:
        """Refuse (rule ``features``) a column this party may not use for this job, and a
        column its data lacks."""
        check_features(self.agreement, self.party, columns, kind=self.job.kind)
        missing = [c for c in columns if c not in self.table().columns]
        if missing:
            raise DataError(
                f"party '{self.party}': column(s) {', '.join(missing)} are not in its data"
            )

    # --- sealed messages -----------------------------------------------------------------------
    def send(self, recipient: str, topic: Topic, payload: bytes) -> None:
        """Seal ``payload`` to ``recipient`` (an envelope the server relays, reading nothing)."""
        if topic.phase != self.kind:
            raise ProtocolAbort(
                self.kind,
                self.party,
                f"topic '{topic.name}' is sealed by step '{topic.phase}', not by '{self.kind}'",
            )
        self.reply.outbox[(recipient, topic.name)] = self.runtime.seal(
            recipient, topic.name, payload, phase=topic.phase, round=self.round
        )

    def receive(self, sender: str, topic: Topic, *, round: int | None = None) -> bytes:
        """Open the envelope ``sender`` sealed on ``topic`` in round ``round`` (default: this
        step's round); anything tampered, misdirected, replayed or absent is refused."""
        return self.runtime.open(
            self.request,
            sender,
            topic.name,
            phase=topic.phase,
            round=self.round if round is None else round,
        )

    @contextmanager
    def decoding(self, sender: str, topic: Topic | str) -> Iterator[None]:
        """Turn any decoding failure inside the block into a :class:`PayloadError` naming the
        peer and the topic (never a bare ``ValueError`` or an "internal error")."""
        name = topic.name if isinstance(topic, Topic) else topic
        try:
            yield
        except PayloadError:
            raise
        except (
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            OverflowError,
            RecursionError,
            EnvelopeError,
            CiphertextError,
            DataError,
        ) as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise PayloadError(self.kind, self.party, sender, name, reason) from exc

    def receive_arrays(
        self, sender: str, topic: Topic, *, round: int | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Open an envelope and decode its payload (``pack_payload``): ``(arrays, meta)``."""
        blob = self.receive(sender, topic, round=round)
        with self.decoding(sender, topic):
            return unpack_payload(blob)

    def has_envelope(self, sender: str, topic: Topic) -> bool:
        return (sender, topic.name) in self.request.inbox

    # --- secure sums ---------------------------------------------------------------------------
    def mask_seeds(self) -> dict[str, bytes]:
        """This run's pairwise mask seed with every other party (secret: never send or log)."""
        peers = {
            p: self.agreement.party(p).public_identity
            for p in self.agreement.party_names
            if p != self.party
        }
        return masking.derive_pairwise_seeds(
            self.runtime.identity,
            peers,
            run_id=self.run_id,
            agreement_hash=self.agreement.terms_hash(),
        )

    def claim_mask_label(self, label: str) -> None:
        """Refuse (rule ``session``) a mask label this party already used in this run."""
        self.runtime.claim_mask_label(label)

    def share(self, name: str, vector: np.ndarray, *, label: str | None = None) -> None:
        """Add this party's pairwise-masked share of ``vector`` (fixed point) to the reply.

        Every sender of one sum uses the same ``label`` (default ``name/round``); a party
        never masks two vectors under one label (their difference would leak).
        """
        label = label or f"{name}/{self.round}"
        self.runtime.claim_mask_label(label)
        self.shared_names.add(name)
        self.reply.masked[name] = masking.mask_vector(
            masking.encode_fixed(np.asarray(vector, dtype=np.float64)),
            self.party,
            self.mask_seeds(),
            label,
        )

    def unmask(self, name: str, *, label: str, length: int) -> np.ndarray:
        """The plain sum of the shares the server added under ``name`` (the recipient's side).

        Parameters
        ----------
        label : str
            The label the senders used (``name/round`` of their step by default).
        length : int
            The expected length: a sum of another size is refused.
        """
        masked = self.request.sums.get(name)
        if masked is None or masked.shape != (length,):
            raise ProtocolAbort(
                self.kind, self.party, f"the server's sum '{name}' is missing or has another size"
            )
        return masking.decode_fixed(
            masking.unmask_sum(masked, self.party, self.mask_seeds(), label)
        )

    # --- encryption ----------------------------------------------------------------------------
    def paillier(self, bits: int | None = None) -> PaillierContext:
        """The label owner's Paillier key pair for this run (made on first use, then kept)."""
        from vfm_flower.paillier import PaillierContext

        if not self.is_label_owner:
            raise ProtocolAbort(self.kind, self.party, "only the label owner holds a Paillier key")
        key = "ctx.paillier.private"
        floor = self.agreement.min_paillier_bits
        if key in self.state:
            return PaillierContext.from_private_bytes(self.state.get_bytes(key), min_bits=floor)
        wanted = bits or self.job.params.get("paillier-bits") or floor
        context = PaillierContext.generate(max(int(wanted), floor))
        self.state.set_bytes(key, context.private_bytes())
        return context

    def paillier_from(self, public_bytes: bytes) -> PaillierContext:
        """A public-key context from the label owner's key bytes (at least the agreed size)."""
        from vfm_flower.paillier import PaillierContext

        return PaillierContext.from_public_bytes(
            public_bytes, min_bits=self.agreement.min_paillier_bits
        )

    def send_encrypted(
        self,
        recipient: str,
        topic: Topic,
        keys: PaillierContext,
        vectors: Mapping[str, EncryptedVector],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Seal Paillier vectors (by name), the public key and JSON ``meta`` to ``recipient``."""
        arrays: dict[str, bytes] = {_KEY_ENTRY: keys.public_bytes()}
        for name, vector in vectors.items():
            arrays[f"ct.{name}"] = keys.ciphertexts_to_bytes(vector)
        self.send(recipient, topic, pack_payload(arrays, meta or {}))

    def receive_encrypted(
        self, sender: str, topic: Topic, *, max_count: int, round: int | None = None
    ) -> tuple[PaillierContext, dict[str, EncryptedVector], dict[str, Any]]:
        """Open a :meth:`send_encrypted` payload: ``(keys, vectors, meta)``.

        ``keys`` is the label owner's own key pair when this party is the label owner (the
        payload must carry its public key), else the public key the payload carries (at least
        the agreed size). Every vector is checked (count at most ``max_count``, ciphertexts in
        range) before use. ``round``: the round the sender sealed it in (default: this
        step's).
        """
        arrays, meta = self.receive_arrays(sender, topic, round=round)
        with self.decoding(sender, topic):
            key = arrays.pop(_KEY_ENTRY, None)
            if key is None:
                raise ValueError("no public key in the payload")
            if self.is_label_owner:
                keys = self.paillier()
                if key.tobytes() != keys.public_bytes():
                    raise ValueError("not encrypted under this party's key")
            else:
                keys = self.paillier_from(key.tobytes())
            vectors = {
                name[len("ct.") :]: keys.ciphertexts_from_bytes(blob.tobytes(), max_count=max_count)
                for name, blob in arrays.items()
                if name.startswith("ct.")
            }
        return keys, vectors, meta

    # --- release -------------------------------------------------------------------------------
    def check_cohort(self, count: int, what: str) -> None:
        """Refuse an aggregate over fewer customers than the minimum cohort."""
        check_min_cohort(self.min_cohort, int(count), what)

    def may_release(self, audience: str, name: str) -> bool:
        """Whether the agreement's release list names ``name`` for ``audience``."""
        return self.runtime.may_release(audience, name)

    def check_release(self, audience: str, *names: str) -> None:
        """Refuse (rule ``release``) unless the release list names every one of ``names``."""
        self.runtime.check_release(audience, *names)

    def publish(self, **facts: Any) -> None:
        """Release public facts to the server (in the signed reply); each name must be on
        the agreement's release list for the server."""
        self.runtime.check_release("server", *facts)
        for name, value in facts.items():
            json.dumps(value)  # public facts are plain JSON
            self.reply.public[name] = value

    def deliver(self, name: str, payload: bytes) -> None:
        """Deliver a result to the result owner (the name must be on the release list).

        The result owner's receiver for ``name`` takes it (registered with
        ``VerticalClientApp.receiver``; without one the payload is written to
        ``work_dir/results/NAME``): here and now when this party is the result owner,
        otherwise at the job's close, after the server relayed it sealed.
        """
        self.runtime.check_release("result-owner", name)
        if self.is_result_owner:
            self.take_result(name, payload)
            return
        owner = self.result_owner
        topic = f"{RESULT_PREFIX}{name}"
        self.reply.outbox[(owner, topic)] = self.runtime.seal(
            owner, topic, payload, phase=self.kind, round=self.round
        )

    def take_result(self, name: str, payload: bytes) -> None:
        """Result owner: hand a delivered result to its receiver (or write it as a file)."""
        receiver = self.runtime.steps.get_receiver(name, self.job.kind)
        if receiver is not None:
            receiver(self, payload)
            return
        if not _ARTIFACT.match(name):
            raise ProtocolAbort(self.kind, self.party, f"unknown result name {name!r}")
        folder = self.runtime.work_dir / "results"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.partial"
        tmp.write_bytes(payload)
        os.replace(tmp, folder / name)

    # --- artifacts -----------------------------------------------------------------------------
    def save_artifact(
        self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Write ``work_dir/artifacts/NAME.vfa`` atomically, bound to the agreement and run.

        The name must be on the agreement's release list for ``"party"``.
        """
        if not _ARTIFACT.match(name):
            raise ConfigurationError(f"artifact name {name!r} must be lower-case")
        self.runtime.check_release("party", name)
        folder = self.runtime.work_dir / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = {
            "agreement_hash": self.agreement.terms_hash(),
            "job_kind": self.job.kind,
            "run_id": self.run_id,
            "party": self.party,
        }
        blob = pack_payload(dict(arrays), {"stamp": stamp, "meta": dict(meta)})
        target = folder / f"{name}.vfa"
        tmp = folder / f".{name}.vfa.partial"
        tmp.write_bytes(blob)
        os.replace(tmp, target)

    def load_artifact(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
        """Read an artifact this party saved: ``(arrays, meta, run_id of the run that made it)``.

        Refuses one made under another agreement or for another job kind.
        """
        path = self.runtime.work_dir / "artifacts" / f"{name}.vfa"
        if not path.is_file():
            raise DataError(f"party '{self.party}': no artifact '{name}' (was it trained here?)")
        arrays, info = unpack_payload(path.read_bytes())
        stamp = dict(info.get("stamp", {}))
        if stamp.get("agreement_hash") != self.agreement.terms_hash():
            raise DataError(f"party '{self.party}': artifact '{name}' is from another agreement")
        if stamp.get("job_kind") != self.job.kind:
            raise DataError(f"party '{self.party}': artifact '{name}' is from another job kind")
        return arrays, dict(info.get("meta", {})), str(stamp.get("run_id", ""))

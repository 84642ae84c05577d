"""The agreement document: :class:`Agreement` reads, validates and writes the TOML file and
gives the canonical terms every party signs (:meth:`Agreement.canonical_bytes`).

The file layout is documented in :mod:`vfm_flower.agreement`; the terms it is made of live in
:mod:`vfm_flower.agreement_terms`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vfm_flower.agreement_terms import (
    ALL_FEATURES,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_SET_SIZE,
    DEFAULT_MIN_COHORT,
    DEFAULT_MIN_INTERSECTION,
    FILE_FORMAT,
    PAILLIER_FLOOR_BITS,
    ROLE_LABEL_OWNER,
    ROLE_PASSIVE,
    TERMS_VERSION,
    JobTerms,
    OperatorTerms,
    PartyTerms,
    _b64,
    _positive_int,
    _Reader,
    _text,
    _unb64,
    format_utc,
    parse_utc,
)
from vfm_flower.errors import ConfigurationError, PolicyViolation
from vfm_flower.keys import PublicIdentity


@dataclass(frozen=True)
class Agreement:
    """The terms of a collaboration agreement (without signatures).

    Construction validates every term and raises :class:`ConfigurationError` naming the bad
    field. Parties are kept sorted by name; sets of names (models, operations, features) are
    kept sorted, so two agreements with the same terms compare equal and hash equal.
    """

    agreement_id: str
    purpose: str
    not_before: datetime
    not_after: datetime
    parties: tuple[PartyTerms, ...]
    label_owner: str
    label_column: str
    positive_class: str | None
    result_owner: str
    operator: OperatorTerms
    jobs: tuple[JobTerms, ...] = ()
    min_intersection: int = DEFAULT_MIN_INTERSECTION
    min_cohort: int = DEFAULT_MIN_COHORT
    min_paillier_bits: int = PAILLIER_FLOOR_BITS
    max_jobs: int = DEFAULT_MAX_JOBS
    #: the differential-privacy budget of the collaboration (``None``: none): every noised
    #: release charges its epsilon (and delta), counted in each party's own audit log
    privacy_epsilon: float | None = None
    privacy_delta: float = 0.0

    def __post_init__(self) -> None:
        _text(self.agreement_id, "agreement-id")
        _text(self.purpose, "purpose")
        object.__setattr__(self, "not_before", parse_utc(self.not_before, "not-before"))
        object.__setattr__(self, "not_after", parse_utc(self.not_after, "not-after"))
        if not self.not_before < self.not_after:
            raise ConfigurationError(
                f"not-before ({format_utc(self.not_before)}) must be earlier than "
                f"not-after ({format_utc(self.not_after)})"
            )
        parties = tuple(self.parties)
        for p in parties:
            if not isinstance(p, PartyTerms):
                raise ConfigurationError("parties: every entry must be a PartyTerms")
        names = [p.name for p in parties]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(f"parties: party name(s) listed twice: {', '.join(dupes)}")
        if len(parties) < 2:
            raise ConfigurationError("parties: a vertical collaboration needs at least two parties")
        keys: dict[bytes, str] = {}
        for p in parties:
            for key in (p.signing_key, p.exchange_key):
                if key in keys and keys[key] != p.name:
                    raise ConfigurationError(
                        f"parties: '{keys[key]}' and '{p.name}' list the same public key: "
                        "each party needs its own key (vfm keygen)"
                    )
                keys[key] = p.name
        if not isinstance(self.operator, OperatorTerms):
            raise ConfigurationError(
                "operator: name the server operator and its public key (vfm agreement init "
                "--operator NAME=NAME.pub)"
            )
        if self.operator.name in names:
            raise ConfigurationError(
                f"operator: '{self.operator.name}' is also a party: the operator needs its own "
                "name and key"
            )
        for key in (self.operator.signing_key, self.operator.exchange_key):
            if key in keys:
                raise ConfigurationError(
                    f"operator: it lists the same public key as party '{keys[key]}': the "
                    "operator needs its own key (vfm keygen)"
                )
        object.__setattr__(self, "parties", tuple(sorted(parties, key=lambda p: p.name)))
        owners = [p.name for p in parties if p.role == ROLE_LABEL_OWNER]
        if len(owners) != 1:
            raise ConfigurationError(
                f"parties: exactly one party must have role '{ROLE_LABEL_OWNER}', found "
                f"{len(owners)}" + (f" ({', '.join(sorted(owners))})" if owners else "")
            )
        _text(self.label_owner, "label.owner")
        if owners[0] != self.label_owner:
            raise ConfigurationError(
                f"label.owner: is '{self.label_owner}' but the party with role "
                f"'{ROLE_LABEL_OWNER}' is '{owners[0]}'"
            )
        _text(self.label_column, "label.column")
        if self.positive_class is not None:
            _text(self.positive_class, "label.positive-class", allow_empty=True)
        _text(self.result_owner, "label.result-owner")
        if self.result_owner not in names:
            raise ConfigurationError(
                f"label.result-owner: '{self.result_owner}' is not a party "
                f"(parties: {', '.join(sorted(names))})"
            )
        owner_terms = next(p for p in parties if p.name == self.label_owner)
        if self.label_column in owner_terms.id_columns:
            raise ConfigurationError("label.column: the label column cannot be an id column")
        if owner_terms.allowed_features and self.label_column in owner_terms.allowed_features:
            raise ConfigurationError(
                f"parties.{self.label_owner}.allowed-features: the label column "
                f"'{self.label_column}' can never be a feature"
            )
        jobs = tuple(self.jobs)
        if not jobs or not all(isinstance(j, JobTerms) for j in jobs):
            raise ConfigurationError("jobs: allow at least one job kind ([jobs.KIND] tables)")
        kinds = [j.kind for j in jobs]
        if len(set(kinds)) != len(kinds):
            raise ConfigurationError("jobs: a job kind is listed twice")
        for j in jobs:
            for party, columns in (j.features or {}).items():
                if party not in names:
                    raise ConfigurationError(
                        f"jobs.{j.kind}.features: '{party}' is not a party of the agreement"
                    )
                terms = next(p for p in parties if p.name == party)
                never = sorted(set(columns) & set(terms.id_columns))
                if party == self.label_owner and self.label_column in columns:
                    never.append(self.label_column)
                if never:
                    raise ConfigurationError(
                        f"jobs.{j.kind}.features.{party}: id or label column(s) "
                        f"{', '.join(never)} can never be features"
                    )
        object.__setattr__(self, "jobs", tuple(sorted(jobs, key=lambda j: j.kind)))
        _positive_int(self.min_intersection, "limits.min-intersection")
        _positive_int(self.max_jobs, "limits.max-jobs")
        _positive_int(self.min_cohort, "limits.min-cohort")
        _positive_int(self.min_paillier_bits, "limits.min-paillier-bits")
        if self.min_paillier_bits < PAILLIER_FLOOR_BITS:
            raise ConfigurationError(
                f"limits.min-paillier-bits: {self.min_paillier_bits} is below the floor of "
                f"{PAILLIER_FLOOR_BITS} bits that vfm-flower never goes under"
            )
        if self.privacy_epsilon is not None:
            eps = self.privacy_epsilon
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1e3:
                raise ConfigurationError(
                    "limits.privacy-epsilon: a positive number (the budget, e.g. 3.0)"
                )
            object.__setattr__(self, "privacy_epsilon", float(eps))
        delta = self.privacy_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta < 1:
            raise ConfigurationError("limits.privacy-delta: a number in [0, 1) (e.g. 1e-6)")
        if delta and self.privacy_epsilon is None:
            raise ConfigurationError("limits.privacy-delta: set privacy-epsilon too")
        object.__setattr__(self, "privacy_delta", float(delta))

    # ------------------------------------------------------------------ canonical form

    def _canonical(self) -> dict[str, Any]:
        canonical = self._canonical_terms()
        if self.privacy_epsilon is not None:  # absent otherwise: older terms keep their hash
            canonical["privacy_budget"] = {
                "epsilon": self.privacy_epsilon,
                "delta": self.privacy_delta,
            }
        return canonical

    def _canonical_terms(self) -> dict[str, Any]:
        return {
            "version": TERMS_VERSION,
            "agreement_id": self.agreement_id,
            "purpose": self.purpose,
            "not_before": format_utc(self.not_before),
            "not_after": format_utc(self.not_after),
            "label_owner": self.label_owner,
            "label_column": self.label_column,
            "positive_class": self.positive_class,
            "result_owner": self.result_owner,
            "jobs": [j._canonical() for j in self.jobs],
            "min_intersection": self.min_intersection,
            "min_cohort": self.min_cohort,
            "min_paillier_bits": self.min_paillier_bits,
            "max_jobs": self.max_jobs,
            "parties": [p._canonical() for p in self.parties],
            "operator": {
                "name": self.operator.name,
                "signing_key": _b64(self.operator.signing_key),
                "exchange_key": _b64(self.operator.exchange_key),
            },
        }

    def canonical_bytes(self) -> bytes:
        """Canonical serialization of the terms: what every party signs.

        Sorted-key compact JSON (ASCII) with a version tag; parties sorted by name; sets of
        names sorted; id columns in their defined order; times in UTC with a ``Z`` suffix.
        """
        return json.dumps(
            self._canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")

    def terms_hash(self) -> str:
        """SHA-256 (hex) of :meth:`canonical_bytes`: the agreement's identity in the protocol."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    # ------------------------------------------------------------------ queries

    @property
    def party_names(self) -> tuple[str, ...]:
        """All party names, sorted."""
        return tuple(p.name for p in self.parties)

    @property
    def signer_names(self) -> tuple[str, ...]:
        """Everyone who signs: the parties and the operator, sorted."""
        return tuple(sorted((*self.party_names, self.operator.name)))

    def signer(self, name: str) -> PublicIdentity:
        """The public keys of signer ``name`` (a party or the operator).

        Raises
        ------
        PolicyViolation
            Rule ``"parties"`` if ``name`` signs nothing in this agreement.
        """
        if name == self.operator.name:
            return self.operator.public_identity
        return self.party(name).public_identity

    @property
    def passive_parties(self) -> tuple[str, ...]:
        """Names of the parties without labels, sorted."""
        return tuple(p.name for p in self.parties if p.role == ROLE_PASSIVE)

    def party(self, name: str) -> PartyTerms:
        """The terms of party ``name``.

        Raises
        ------
        PolicyViolation
            Rule ``"parties"`` if ``name`` is not a party of this agreement.
        """
        for p in self.parties:
            if p.name == name:
                return p
        raise PolicyViolation(
            "parties",
            f"'{name}' is not a party of agreement {self.agreement_id} "
            f"(parties: {', '.join(self.party_names)}): use the party name from the agreement",
        )

    @property
    def job_kinds(self) -> tuple[str, ...]:
        """The job kinds the agreement allows, sorted."""
        return tuple(j.kind for j in self.jobs)

    def job_terms(self, kind: str) -> JobTerms:
        """The terms for job kind ``kind``.

        Raises
        ------
        PolicyViolation
            Rule ``"job_kind"`` if the agreement does not name the kind.
        """
        for j in self.jobs:
            if j.kind == kind:
                return j
        raise PolicyViolation(
            "job_kind",
            f"job kind '{kind}' is not in the agreement (allowed: "
            f"{', '.join(self.job_kinds)}): run an agreed job or amend and re-sign the agreement",
        )

    def feature_allowed(self, party: str, column: str) -> bool:
        """Whether ``party`` may contribute ``column`` as a feature.

        Id columns and the label column are never features; denied columns never are;
        otherwise the column must be in the party's allowed list (or the list is ``"*"``).
        """
        terms = self.party(party)
        if column in terms.id_columns or column in terms.denied_features:
            return False
        if party == self.label_owner and column == self.label_column:
            return False
        return terms.allowed_features is None or column in terms.allowed_features

    # ------------------------------------------------------------------ TOML

    def to_toml_dict(self) -> dict[str, Any]:
        """The agreement as the nested dict written to the TOML file (no signatures)."""
        label: dict[str, Any] = {"owner": self.label_owner, "column": self.label_column}
        if self.positive_class is not None:
            label["positive-class"] = self.positive_class
        label["result-owner"] = self.result_owner
        parties: dict[str, Any] = {}
        for p in self.parties:
            entry: dict[str, Any] = {
                "role": p.role,
                "signing-key": _b64(p.signing_key),
                "exchange-key": _b64(p.exchange_key),
                "id-columns": list(p.id_columns),
                "id-kind": p.id_kind,
            }
            if p.default_country_code:
                entry["default-country-code"] = p.default_country_code
            if p.case_sensitive is not None:
                entry["case-sensitive"] = p.case_sensitive
            entry["allowed-features"] = (
                ALL_FEATURES if p.allowed_features is None else list(p.allowed_features)
            )
            entry["denied-features"] = list(p.denied_features)
            entry["max-set-size"] = p.max_set_size
            parties[p.name] = entry
        return {
            "format": FILE_FORMAT,
            "agreement-id": self.agreement_id,
            "purpose": self.purpose,
            "not-before": format_utc(self.not_before),
            "not-after": format_utc(self.not_after),
            "label": label,
            "jobs": {j.kind: j.to_toml_dict() for j in self.jobs},
            "limits": {
                "min-intersection": self.min_intersection,
                "min-cohort": self.min_cohort,
                "min-paillier-bits": self.min_paillier_bits,
                "max-jobs": self.max_jobs,
                **(
                    {}
                    if self.privacy_epsilon is None
                    else {
                        "privacy-epsilon": self.privacy_epsilon,
                        "privacy-delta": self.privacy_delta,
                    }
                ),
            },
            "parties": parties,
            "operator": {
                "name": self.operator.name,
                "signing-key": _b64(self.operator.signing_key),
                "exchange-key": _b64(self.operator.exchange_key),
            },
        }

    @classmethod
    def from_toml_dict(cls, data: Mapping[str, Any]) -> Agreement:
        """Build an agreement from a parsed TOML document (``[signatures]`` is ignored).

        Raises
        ------
        ConfigurationError
            Naming the missing, unknown or malformed field.
        """
        r = _Reader(data, "")
        r.known(
            {
                "format",
                "agreement-id",
                "purpose",
                "not-before",
                "not-after",
                "label",
                "jobs",
                "limits",
                "parties",
                "operator",
                "signatures",
            }
        )
        fmt = r.get("format")
        if fmt in ("vfm-agreement/1", "vfm-agreement/2"):
            raise ConfigurationError(
                f"format: {fmt!r} predates {FILE_FORMAT!r}, which names the server operator as "
                "a signer: draft the agreement again (vfm agreement init ... --operator "
                "NAME=NAME.pub) and sign it"
            )
        if fmt != FILE_FORMAT:
            raise ConfigurationError(
                f"format: {fmt!r} is not {FILE_FORMAT!r} (not a vfm agreement, or a newer "
                "version of vfm-flower wrote it)"
            )
        label = r.table("label")
        label.known({"owner", "column", "positive-class", "result-owner"})
        jobs = r.table("jobs")
        limits = r.table("limits")
        limits.known(
            {
                "min-intersection",
                "min-cohort",
                "min-paillier-bits",
                "max-jobs",
                "privacy-epsilon",
                "privacy-delta",
            }
        )
        party_tables = r.table("parties")
        parties = []
        for name in party_tables.data:
            pt = party_tables.table(name)
            pt.known(
                {
                    "role",
                    "signing-key",
                    "exchange-key",
                    "id-columns",
                    "id-kind",
                    "default-country-code",
                    "case-sensitive",
                    "allowed-features",
                    "denied-features",
                    "max-set-size",
                }
            )
            allowed = pt.get("allowed-features", ALL_FEATURES)
            if allowed == ALL_FEATURES:
                allowed = None
            elif isinstance(allowed, str):
                raise ConfigurationError(
                    f'{pt.where("allowed-features")}: write "*" for every column or a list '
                    "of column names"
                )
            id_cols = pt.get("id-columns")
            if isinstance(id_cols, str):
                id_cols = [id_cols]
            parties.append(
                PartyTerms(
                    name=name,
                    role=pt.get("role"),
                    signing_key=_unb64(pt.get("signing-key"), pt.where("signing-key"), 32),
                    exchange_key=_unb64(pt.get("exchange-key"), pt.where("exchange-key"), 32),
                    id_columns=id_cols,
                    id_kind=pt.get("id-kind"),
                    default_country_code=str(pt.get("default-country-code", "")),
                    case_sensitive=pt.get("case-sensitive", None),
                    allowed_features=allowed,
                    denied_features=pt.get("denied-features", []),
                    max_set_size=pt.get("max-set-size", DEFAULT_MAX_SET_SIZE),
                )
            )
        op = r.table("operator")
        op.known({"name", "signing-key", "exchange-key"})
        operator = OperatorTerms(
            name=op.get("name"),
            signing_key=_unb64(op.get("signing-key"), op.where("signing-key"), 32),
            exchange_key=_unb64(op.get("exchange-key"), op.where("exchange-key"), 32),
        )
        owner = label.get("owner")
        return cls(
            agreement_id=r.get("agreement-id"),
            purpose=r.get("purpose"),
            not_before=r.get("not-before"),
            not_after=r.get("not-after"),
            parties=tuple(parties),
            label_owner=owner,
            label_column=label.get("column"),
            positive_class=label.get("positive-class", None),
            result_owner=label.get("result-owner", owner),
            operator=operator,
            jobs=tuple(JobTerms.from_toml_dict(k, jobs.data[k]) for k in jobs.data),
            min_intersection=limits.get("min-intersection", DEFAULT_MIN_INTERSECTION),
            min_cohort=limits.get("min-cohort", DEFAULT_MIN_COHORT),
            min_paillier_bits=limits.get("min-paillier-bits", PAILLIER_FLOOR_BITS),
            max_jobs=limits.get("max-jobs", DEFAULT_MAX_JOBS),
            privacy_epsilon=limits.get("privacy-epsilon", None),
            privacy_delta=limits.get("privacy-delta", 0.0),
        )

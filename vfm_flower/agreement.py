"""Signed collaboration agreements and the policy checks every phase runs.

An agreement is a TOML file a person can read and diff. It lists the parties with their public
keys, who owns the labels and the results, which id columns align the rows, which feature
columns each party may contribute, which jobs may run, and the minimum sizes that protect
individuals. Every party signs the *terms*, not the file: the signature is a detached Ed25519
signature over :meth:`Agreement.canonical_bytes`, a canonical JSON serialization with a version
tag. Reformatting the TOML (whitespace, comments, order of tables and keys) keeps the signatures
valid; changing any term breaks them.

File layout (version 1)::

    format = "vfm-agreement/1"
    agreement-id = "3f0c..."
    purpose = "Caravan insurance propensity model"
    not-before = "2025-01-01T00:00:00Z"   # ISO 8601 UTC (a TOML date-time works too)
    not-after = "2026-01-01T00:00:00Z"

    [label]
    owner = "insurer"
    column = "Purchase"
    positive-class = "yes"        # absent: the labels are 0/1
    result-owner = "insurer"

    [jobs.logistic]               # one table per job kind the parties agree to run
    operations = ["score", "train"]
    [jobs.logistic.params]        # a bound for every parameter of the kind: a range
    max-iterations = { min = 1, max = 100 }  # {min, max}, a list of allowed values,
    l2 = { min = 1e-06, max = 10.0 }         # one value, or "*"
    [jobs.logistic.release]       # what the job may release, per audience
    server = ["auc", "stop", ...]
    result-owner = ["report", "scores"]
    party = ["model-slice", "party-report"]
    [jobs.logistic.features]      # optional: columns a party may use for this kind
    bank = ["P1", "P2"]

    [limits]
    min-intersection = 100
    min-cohort = 20
    min-paillier-bits = 2048
    max-jobs = 100                # jobs over the agreement's lifetime (each party counts its own)
    privacy-epsilon = 3.0         # optional: a differential-privacy budget for the releases
    privacy-delta = 1e-6          # of noised statistics (epsilon, and delta for Gaussian noise)

    [parties.insurer]
    role = "label_owner"          # or "passive"
    signing-key = "<base64 Ed25519 public key>"
    exchange-key = "<base64 X25519 public key>"
    id-columns = ["email"]
    id-kind = "email"             # email | phone | plain
    default-country-code = "31"   # optional (phone ids)
    case-sensitive = false        # optional (plain ids)
    allowed-features = "*"        # "*" = every column but the id and label columns
    denied-features = ["AGE"]
    max-set-size = 10000000

    [signatures]
    insurer = "<base64 Ed25519 signature over the canonical terms>"

The policy checks that read these terms (:func:`vfm_flower.policy.check_job`, the
minimum-intersection gate, ...) live in :mod:`vfm_flower.policy`, each defined once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import tomllib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomli_w

from vfm_flower.errors import ConfigurationError, KeyFileError, PolicyViolation, SignatureError
from vfm_flower.files import atomic_write
from vfm_flower.keys import PartyIdentity, PublicIdentity, validate_party_name

logger = logging.getLogger(__name__)

FILE_FORMAT = "vfm-agreement/3"
TERMS_VERSION = "vfm-agreement-terms/3"

ROLE_LABEL_OWNER = "label_owner"
ROLE_PASSIVE = "passive"
ROLES = (ROLE_LABEL_OWNER, ROLE_PASSIVE)
ID_KINDS = ("email", "phone", "plain")
ALL_FEATURES = "*"

#: No agreement may ever accept a Paillier modulus below this many bits.
PAILLIER_FLOOR_BITS = 2048

DEFAULT_VALID_DAYS = 365
DEFAULT_MIN_INTERSECTION = 100
DEFAULT_MAX_SET_SIZE = 10_000_000
DEFAULT_MIN_COHORT = 20
DEFAULT_MAX_JOBS = 100
#: Drafting or signing an agreement that ends within this many days prints a warning.
EXPIRY_WARNING_DAYS = 7

_SIGNATURE_LEN = 64


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise ConfigurationError(f"{what}: expected a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(f"{what}: not valid base64") from exc
    if size is not None and len(raw) != size:
        raise ConfigurationError(f"{what}: must decode to {size} bytes, got {len(raw)}")
    return raw


def parse_utc(value: Any, what: str) -> datetime:
    """Normalize a datetime / date / ISO 8601 text to an aware UTC datetime.

    Raises
    ------
    ConfigurationError
        Naming ``what`` if the value is not a date-time or has no time zone.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{what}: {value!r} is not an ISO 8601 date-time (e.g. 2026-01-31T00:00:00Z)"
            ) from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0, 0), tzinfo=UTC)
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{what}: expected a date-time, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{what}: {value.isoformat()} has no time zone: write it in UTC with a 'Z' suffix"
        )
    return value.astimezone(UTC)


def format_utc(value: datetime) -> str:
    """ISO 8601 text of an aware datetime in UTC with a ``Z`` suffix."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{what}: must be a positive integer, got {value!r}")
    return value


def _text(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigurationError(f"{what}: must be a non-empty string, got {value!r}")
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{what}: must be a list of column names")
    out = tuple(value)
    for item in out:
        _text(item, what)
    return out


def _sorted_unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else parse_utc(now, "now")


# ----------------------------------------------------------------------------------------------
# terms
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartyTerms:
    """What the agreement says about one party.

    Parameters
    ----------
    name : str
        Party name (as in its key files).
    role : str
        ``"label_owner"`` or ``"passive"``.
    signing_key, exchange_key : bytes
        The party's Ed25519 and X25519 public keys (32 bytes each).
    id_columns : tuple of str
        The column(s) holding the customer id, in order (several are concatenated).
    id_kind : str
        Id normalization: ``"email"``, ``"phone"`` or ``"plain"``.
    default_country_code : str
        Country code for phone numbers written without one (``""``: none).
    case_sensitive : bool or None
        Whether plain ids are case sensitive (``None``: the normalizer's default).
    allowed_features : tuple of str or None
        Columns the party may contribute; ``None`` means every column but the id and label
        columns.
    denied_features : tuple of str
        Columns the party must never contribute (wins over ``allowed_features``).
    max_set_size : int
        Largest id set the party may bring to alignment.
    """

    name: str
    role: str
    signing_key: bytes
    exchange_key: bytes
    id_columns: tuple[str, ...]
    id_kind: str
    default_country_code: str = ""
    case_sensitive: bool | None = None
    allowed_features: tuple[str, ...] | None = None
    denied_features: tuple[str, ...] = ()
    max_set_size: int = DEFAULT_MAX_SET_SIZE

    def __post_init__(self) -> None:
        where = f"parties.{self.name}"
        try:
            validate_party_name(self.name)
        except ValueError as exc:
            raise ConfigurationError(f"parties: {exc}") from exc
        if self.role not in ROLES:
            raise ConfigurationError(
                f"{where}.role: {self.role!r} is not one of {', '.join(ROLES)}"
            )
        for attr, key in (("signing_key", "signing-key"), ("exchange_key", "exchange-key")):
            raw = getattr(self, attr)
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise ConfigurationError(f"{where}.{key}: must be a 32-byte public key")
        ids = _names(self.id_columns, f"{where}.id-columns")
        if not ids:
            raise ConfigurationError(f"{where}.id-columns: name at least one id column")
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"{where}.id-columns: a column is listed twice")
        object.__setattr__(self, "id_columns", ids)
        if self.id_kind not in ID_KINDS:
            raise ConfigurationError(
                f"{where}.id-kind: {self.id_kind!r} is not one of {', '.join(ID_KINDS)}"
            )
        cc = _text(self.default_country_code, f"{where}.default-country-code", allow_empty=True)
        if cc and not cc.lstrip("+").isdigit():
            raise ConfigurationError(
                f'{where}.default-country-code: {cc!r} must be digits (e.g. "31")'
            )
        if self.case_sensitive is not None and not isinstance(self.case_sensitive, bool):
            raise ConfigurationError(f"{where}.case-sensitive: must be true or false")
        denied = _sorted_unique(_names(self.denied_features, f"{where}.denied-features"))
        object.__setattr__(self, "denied_features", denied)
        if self.allowed_features is not None:
            allowed = _sorted_unique(_names(self.allowed_features, f"{where}.allowed-features"))
            both = sorted(set(allowed) & set(denied))
            if both:
                raise ConfigurationError(
                    f"{where}: column(s) {', '.join(both)} are both allowed and denied: "
                    "remove them from one list"
                )
            ids_as_features = sorted(set(allowed) & set(ids))
            if ids_as_features:
                raise ConfigurationError(
                    f"{where}.allowed-features: id column(s) {', '.join(ids_as_features)} "
                    "can never be features"
                )
            object.__setattr__(self, "allowed_features", allowed)
        _positive_int(self.max_set_size, f"{where}.max-set-size")

    @property
    def public_identity(self) -> PublicIdentity:
        """The party's public keys as listed in the agreement."""
        return PublicIdentity(
            party=self.name, signing_key=self.signing_key, exchange_key=self.exchange_key
        )

    def _canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "signing_key": _b64(self.signing_key),
            "exchange_key": _b64(self.exchange_key),
            "id_columns": list(self.id_columns),
            "id_kind": self.id_kind,
            "default_country_code": self.default_country_code,
            "case_sensitive": self.case_sensitive,
            "allowed_features": (
                ALL_FEATURES if self.allowed_features is None else list(self.allowed_features)
            ),
            "denied_features": list(self.denied_features),
            "max_set_size": self.max_set_size,
        }


@dataclass(frozen=True)
class OperatorTerms:
    """The server operator: a signer of the agreement, not a party (it holds no data).

    Its signing key is the key of the server's audit log and of the server's hello: the
    server refuses to run an agreement that does not list its key, and every party refuses a
    server whose hello or audit head is not signed by it. Without this term whoever runs a
    SuperLink could act as the server of any agreement.

    Parameters
    ----------
    name : str
        The operator's name (as in its key files); not a party's name.
    signing_key, exchange_key : bytes
        Its Ed25519 and X25519 public keys (32 bytes each), from ``vfm keygen``.
    """

    name: str
    signing_key: bytes
    exchange_key: bytes

    def __post_init__(self) -> None:
        try:
            validate_party_name(self.name)
        except ValueError as exc:
            raise ConfigurationError(f"operator: {exc}") from exc
        for attr, key in (("signing_key", "signing-key"), ("exchange_key", "exchange-key")):
            raw = getattr(self, attr)
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise ConfigurationError(f"operator.{key}: must be a 32-byte public key")

    @property
    def public_identity(self) -> PublicIdentity:
        """The operator's public keys as listed in the agreement."""
        return PublicIdentity(
            party=self.name, signing_key=self.signing_key, exchange_key=self.exchange_key
        )

    @classmethod
    def of(cls, identity: PublicIdentity) -> OperatorTerms:
        """The term for the operator whose public key file is ``identity``."""
        return cls(identity.party, identity.signing_key, identity.exchange_key)


@dataclass(frozen=True)
class ParamRange:
    """A numeric parameter bound: every value from ``min`` to ``max`` (inclusive).

    In the agreement file: ``l2 = { min = 1e-06, max = 10.0 }``. A list (``[7, 42]``) means
    exactly those values, never a range.
    """

    min: int | float
    max: int | float

    def to_dict(self) -> dict[str, int | float]:
        return {"min": self.min, "max": self.max}

    def __str__(self) -> str:
        return f"{self.min}..{self.max}"


def _bound(value: Any, where: str) -> Any:
    """Validate one parameter bound: ``"*"``, a scalar, a list of allowed values, or a range
    ``{min = a, max = b}``."""
    scalar = (bool, int, float, str)
    if isinstance(value, ParamRange):
        value = value.to_dict()
    if isinstance(value, Mapping):
        if set(value) != {"min", "max"} or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            raise ConfigurationError(f"{where}: a range is {{ min = LOW, max = HIGH }} (numbers)")
        if value["min"] > value["max"]:
            raise ConfigurationError(f"{where}: range {value['min']}..{value['max']} is empty")
        return ParamRange(value["min"], value["max"])
    if isinstance(value, list | tuple):
        items = list(value)
        if not items or not all(isinstance(v, scalar) for v in items):
            raise ConfigurationError(f"{where}: a list of allowed values needs at least one value")
        return tuple(items)
    if isinstance(value, scalar):
        return value
    raise ConfigurationError(
        f'{where}: write {{ min = LOW, max = HIGH }}, a list of allowed values, one value or "*"'
    )


def _plain_bound(bound: Any) -> Any:
    """A bound as TOML/JSON data."""
    if isinstance(bound, ParamRange):
        return bound.to_dict()
    return list(bound) if isinstance(bound, tuple) else bound


@dataclass(frozen=True)
class JobTerms:
    """What the agreement allows for one job kind.

    Parameters
    ----------
    kind : str
        The job kind (``"logistic"``, ``"segment_stats"``...).
    operations : tuple of str
        The operations the parties agreed to run.
    params : mapping of parameter name to bound
        A bound for every parameter of the kind: a :class:`ParamRange` (numeric, inclusive), a
        tuple of allowed values, one value, or ``"*"`` for any value. A parameter without a
        bound is refused.
    release : mapping of audience to names
        What the job may release to ``"server"``, ``"result-owner"`` and ``"party"``.
    features : mapping of party to column names, or None
        Columns a party may use for this kind (on top of its allowed/denied features); a party
        not listed uses its party-level selection.
    """

    kind: str
    operations: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    release: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    features: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        from vfm_flower.jobs import RELEASE_AUDIENCES

        where = f"jobs.{self.kind}"
        _text(self.kind, "jobs")
        ops = _sorted_unique(_names(self.operations, f"{where}.operations"))
        if not ops:
            raise ConfigurationError(f"{where}.operations: allow at least one operation")
        object.__setattr__(self, "operations", ops)
        params = {}
        for name, bound in dict(self.params).items():
            params[str(name)] = _bound(bound, f"{where}.params.{name}")
        object.__setattr__(self, "params", MappingProxyType(dict(sorted(params.items()))))
        unknown = sorted(set(self.release) - set(RELEASE_AUDIENCES))
        if unknown:
            raise ConfigurationError(
                f"{where}.release: unknown audience(s) {', '.join(unknown)} "
                f"(known: {', '.join(RELEASE_AUDIENCES)})"
            )
        release = {
            a: _sorted_unique(_names(self.release.get(a, ()), f"{where}.release.{a}"))
            for a in RELEASE_AUDIENCES
        }
        object.__setattr__(self, "release", MappingProxyType(release))
        if self.features is not None:
            feats = {
                str(p): _sorted_unique(_names(cols, f"{where}.features.{p}"))
                for p, cols in dict(self.features).items()
            }
            object.__setattr__(self, "features", MappingProxyType(dict(sorted(feats.items()))))

    def _canonical(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "operations": list(self.operations),
            "params": {k: _plain_bound(v) for k, v in self.params.items()},
            "release": {a: list(v) for a, v in self.release.items()},
            "features": (
                None if self.features is None else {p: list(c) for p, c in self.features.items()}
            ),
        }

    def to_toml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operations": list(self.operations),
            "params": {k: _plain_bound(v) for k, v in self.params.items()},
            "release": {a: list(v) for a, v in self.release.items()},
        }
        if self.features is not None:
            out["features"] = {p: list(c) for p, c in self.features.items()}
        return out

    @classmethod
    def from_toml_dict(cls, kind: str, data: Any) -> JobTerms:
        r = _Reader(data, f"jobs.{kind}")
        r.known({"operations", "params", "release", "features"})
        features = r.get("features", None)
        if features is not None and not isinstance(features, Mapping):
            raise ConfigurationError(f"jobs.{kind}.features: must be a table of party = [columns]")
        params = r.get("params", {})
        release = r.get("release", {})
        for key, value in (("params", params), ("release", release)):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"jobs.{kind}.{key}: must be a table")
        return cls(
            kind=kind,
            operations=r.get("operations"),
            params=params,
            release=release,
            features=features,
        )

    @classmethod
    def default_for(
        cls,
        job_kind: Any,
        *,
        operations: Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
        opt_in: Iterable[str] = (),
    ) -> JobTerms:
        """The terms a new agreement writes for ``job_kind`` (a :class:`~vfm_flower.jobs.JobKind`):
        every operation, the default bound of every parameter (``params`` overrides some),
        the kind's release list but its opt-in names, except those named in ``opt_in``
        (e.g. ``"model-weights"``: passive parties get their final weights)."""
        chosen = set(opt_in)
        offered = {n for names in job_kind.opt_in_releases.values() for n in names}
        if chosen - offered:
            known = ", ".join(sorted(offered)) or "none"
            raise ConfigurationError(
                f"job kind '{job_kind.name}' has no opt-in release(s) "
                f"{', '.join(sorted(chosen - offered))} (opt-in: {known})"
            )
        bounds = {p.name: p.default_bound() for p in job_kind.params}
        unknown = sorted(set(params or {}) - set(bounds))
        if unknown:
            raise ConfigurationError(
                f"job kind '{job_kind.name}' has no parameter(s) {', '.join(unknown)}"
            )
        bounds.update(params or {})
        ops = tuple(operations) if operations is not None else job_kind.operations
        bad = sorted(set(ops) - set(job_kind.operations))
        if bad:
            raise ConfigurationError(
                f"job kind '{job_kind.name}' has no operation(s) {', '.join(bad)} "
                f"(operations: {', '.join(job_kind.operations)})"
            )
        return cls(
            kind=job_kind.name,
            operations=ops,
            params=bounds,
            release={
                audience: tuple(
                    n
                    for n in names
                    if n in chosen or n not in job_kind.opt_in_releases.get(audience, ())
                )
                for audience, names in job_kind.releases.items()
            },
        )


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


_MISSING = object()


class _Reader:
    """Reads one TOML table and names the dotted field path in every error."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{prefix or 'document'}: must be a table")
        self.data = data
        self.prefix = prefix

    def where(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def known(self, keys: set[str]) -> None:
        unknown = sorted(set(self.data) - keys)
        if unknown:
            raise ConfigurationError(
                f"unknown field(s) {', '.join(self.where(k) for k in unknown)} "
                f"(known here: {', '.join(sorted(keys))}): a misspelled term would be ignored"
            )

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ConfigurationError(f"missing field {self.where(key)}")
        return default

    def table(self, key: str) -> _Reader:
        return _Reader(self.get(key), f"{self.where(key)}.")


# ----------------------------------------------------------------------------------------------
# signed agreement
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedAgreement:
    """An agreement and the parties' detached signatures over its canonical terms.

    Immutable: :meth:`with_signature` returns a new object.
    """

    agreement: Agreement
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sigs = dict(self.signatures)
        names = set(self.agreement.signer_names)
        for name, sig in sigs.items():
            if name not in names:
                raise ConfigurationError(
                    f"signatures.{name}: '{name}' is neither a party nor the operator"
                )
            if not isinstance(sig, bytes):
                raise ConfigurationError(f"signatures.{name}: must be bytes")
        object.__setattr__(self, "signatures", MappingProxyType(sigs))

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ files

    @classmethod
    def from_toml(cls, text: str, source: str = "agreement") -> SignedAgreement:
        """Parse an agreement file's text; errors name ``source`` and the field."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: not valid TOML: {exc}") from exc
        try:
            agreement = Agreement.from_toml_dict(data)
            raw_sigs = data.get("signatures", {})
            if not isinstance(raw_sigs, Mapping):
                raise ConfigurationError("signatures: must be a table of party = signature")
            sigs = {name: _unb64(value, f"signatures.{name}") for name, value in raw_sigs.items()}
            return cls(agreement, sigs)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SignedAgreement:
        """Read and validate an agreement file.

        Raises
        ------
        ConfigurationError
            If the file cannot be read, is not TOML, or a field is missing or malformed; the
            message names the file and the field.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read agreement file {path}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path}: not UTF-8 text") from exc
        return cls.from_toml(text, source=str(path))

    def to_toml(self) -> str:
        """The agreement file's text: a header comment, the terms, then ``[signatures]``."""
        data = self.agreement.to_toml_dict()
        if self.signatures:
            data["signatures"] = {n: _b64(self.signatures[n]) for n in sorted(self.signatures)}
        header = (
            "# vfm-flower collaboration agreement.\n"
            "# Every party signs the terms (not the formatting): comments, whitespace and the\n"
            "# order of tables do not matter; changing any value invalidates the signatures.\n"
            f"# terms-hash: {self.agreement.terms_hash()}\n\n"
        )
        return header + tomli_w.dumps(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the agreement file atomically (temporary file + ``os.replace``), keeping an
        existing file's permission bits."""
        path = Path(path)
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        except OSError as exc:
            raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return atomic_write(path, self.to_toml().encode("utf-8"), mode=mode)

    # ------------------------------------------------------------------ signing

    def with_signature(self, identity: PartyIdentity) -> SignedAgreement:
        """Return a copy signed by ``identity`` (replacing that party's earlier signature).

        Raises
        ------
        KeyFileError
            If ``identity`` is not a party, or its keys are not the ones the agreement lists
            for that party ("key is not NAME's").
        """
        name = identity.party
        if name not in self.agreement.signer_names:
            raise KeyFileError(
                f"'{name}' does not sign this agreement (signers: "
                f"{', '.join(self.agreement.signer_names)})"
            )
        listed = self.agreement.signer(name)
        pub = identity.public
        if pub.signing_key != listed.signing_key or pub.exchange_key != listed.exchange_key:
            raise KeyFileError(
                f"key is not {name}'s: its public key (fingerprint {pub.fingerprint}) differs "
                f"from the one the agreement lists for '{name}' "
                f"(fingerprint {listed.fingerprint})"
            )
        sigs = dict(self.signatures)
        sigs[name] = identity.sign(self.agreement.canonical_bytes())
        return SignedAgreement(self.agreement, sigs)

    def _valid_signers(self) -> tuple[list[str], list[str]]:
        message = self.agreement.canonical_bytes()
        good, bad = [], []
        for name in sorted(self.signatures):
            try:
                sig = self.signatures[name]
                if len(sig) != _SIGNATURE_LEN:
                    raise SignatureError("wrong length")
                self.agreement.signer(name).verify(sig, message)
                good.append(name)
            except SignatureError:
                bad.append(name)
        return good, bad

    def signed_by(self) -> list[str]:
        """Parties whose signature verifies over the current terms, sorted."""
        return self._valid_signers()[0]

    def missing_signatures(self) -> list[str]:
        """Signers (parties and the operator) without a signature in the file, sorted."""
        return [n for n in self.agreement.signer_names if n not in self.signatures]

    def invalid_signatures(self) -> list[str]:
        """Parties whose signature is present but does not verify, sorted."""
        return self._valid_signers()[1]

    def terms_hash(self) -> str:
        """Shortcut for ``self.agreement.terms_hash()``."""
        return self.agreement.terms_hash()

    def verify(self, now: datetime | None = None) -> None:
        """Check that every party signed the current terms and the agreement is in force.

        Raises
        ------
        PolicyViolation
            Rule ``"signatures"`` naming missing signers or signatures that do not verify;
            rule ``"validity"`` if ``now`` is before ``not_before`` or not before ``not_after``.
        """
        missing = self.missing_signatures()
        bad = self.invalid_signatures()
        if missing or bad:
            parts = []
            if missing:
                parts.append(
                    f"missing signature of {', '.join(missing)} (each party runs "
                    "'vfm agreement sign FILE --party NAME --key NAME.key')"
                )
            if bad:
                parts.append(
                    f"signature of {', '.join(bad)} does not verify over the current terms "
                    "(terms changed after signing, or signed with another key): re-sign the "
                    "agreement"
                )
            raise PolicyViolation("signatures", "; ".join(parts))
        moment = _now(now)
        a = self.agreement
        window = f"{format_utc(a.not_before)} .. {format_utc(a.not_after)}"
        if moment < a.not_before:
            raise PolicyViolation(
                "validity",
                f"agreement {a.agreement_id} is not yet valid: valid from "
                f"{format_utc(a.not_before)} (window {window}, now {format_utc(moment)}); wait "
                "or check the clock",
            )
        if moment >= a.not_after:
            raise PolicyViolation(
                "validity",
                f"agreement {a.agreement_id} expired on {format_utc(a.not_after)} (window "
                f"{window}): agree and sign a renewed agreement",
            )


def check_signing_window(agreement: Agreement, now: datetime | None = None) -> str | None:
    """The rule ``validity`` for drafting or signing: refused once the window has ended.

    Returns a warning when the window ends within :data:`EXPIRY_WARNING_DAYS` days (signers
    should know a renewal is due), else ``None``.

    Raises
    ------
    PolicyViolation
        Rule ``"validity"``: the window has ended; nobody could run the agreement.
    """
    moment = _now(now)
    if moment >= agreement.not_after:
        raise PolicyViolation(
            "validity",
            f"agreement {agreement.agreement_id} ended on {format_utc(agreement.not_after)}: "
            "nobody could run it; draft a new one (vfm agreement init ... --valid-days N)",
        )
    left = agreement.not_after - moment
    if left < timedelta(days=EXPIRY_WARNING_DAYS):
        hours = int(left.total_seconds() // 3600)
        return (
            f"warning: agreement {agreement.agreement_id} ends on "
            f"{format_utc(agreement.not_after)}, in {hours // 24} day(s) {hours % 24} hour(s): "
            "plan its renewal"
        )
    return None


# ----------------------------------------------------------------------------------------------
# job requests and policy checks
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# creation
# ----------------------------------------------------------------------------------------------


def _per_party(value: Any, name: str, default: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(name, default)
    return value


def init_agreement(
    purpose: str,
    label_owner: str,
    label_column: str,
    id_column: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    id_kind: str | Mapping[str, str],
    parties: Mapping[str, PublicIdentity],
    positive_class: str | None = None,
    min_intersection: int = DEFAULT_MIN_INTERSECTION,
    *,
    operator: PublicIdentity,
    min_cohort: int = DEFAULT_MIN_COHORT,
    min_paillier_bits: int = PAILLIER_FLOOR_BITS,
    max_iterations: int | None = None,
    max_set_size: int | Mapping[str, int] = DEFAULT_MAX_SET_SIZE,
    result_owner: str | None = None,
    allowed_models: Sequence[str] | None = None,
    allowed_operations: Sequence[str] | None = None,
    jobs: Sequence[Any] | None = None,
    release_opt_in: Sequence[str] = (),
    bounds: Mapping[str, Mapping[str, Any]] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
    privacy_epsilon: float | None = None,
    privacy_delta: float = 0.0,
    allowed_features: Mapping[str, Sequence[str] | None] | None = None,
    denied_features: Mapping[str, Sequence[str]] | None = None,
    default_country_code: str | Mapping[str, str] = "",
    case_sensitive: bool | None | Mapping[str, bool | None] = None,
    valid_days: float = DEFAULT_VALID_DAYS,
    not_before: datetime | None = None,
    agreement_id: str | None = None,
) -> Agreement:
    """Draft new agreement terms (unsigned).

    Parameters
    ----------
    purpose : str
        Free text: what the collaboration is for.
    label_owner, label_column : str
        The party holding the labels, and the label column.
    id_column : str, sequence of str, or mapping party -> column(s)
        The id column(s), the same for every party or per party.
    id_kind : str or mapping party -> str
        ``"email"``, ``"phone"`` or ``"plain"``.
    parties : mapping of party name to PublicIdentity
        Every party's public keys (from its ``NAME.pub``); the name must match the file's.
    positive_class : str or None
        Label value of the positive class; ``None`` means labels are 0/1.
    operator : PublicIdentity
        The server operator's public key file (``vfm keygen --party NAME``): it signs the
        agreement too, and its key is the one the server runs with.
    valid_days : float
        Length of the validity window starting at ``not_before`` (default: now).
    jobs : sequence of JobKind or JobTerms, optional
        The job kinds the collaboration may run: a :class:`~vfm_flower.jobs.JobKind` gets its
        default terms (:meth:`JobTerms.default_for`), a :class:`JobTerms` is used as given.
        Default: the built-in kinds named by ``allowed_models`` (default: all of them).
    allowed_models, allowed_operations, max_iterations : optional
        Shorthands for the built-in kinds: which of them, which operations (a kind that
        offers none of them is left out), and the upper bound of their ``max-iterations``
        parameter.
    bounds : mapping of kind to {parameter: bound}, optional
        Bounds that replace a kind's defaults (``{"segments": {"target-max": 500.0}}``: a
        spend column clipped to 0..500; a bound is one value, a list or ``{"min", "max"}``).
    privacy_epsilon, privacy_delta : float, optional
        A differential-privacy budget for the collaboration's noised releases (default:
        none; then the statistics jobs release exact figures under the minimum cohort).
    release_opt_in : sequence of str
        Opt-in releases to grant, for the kinds given as ``JobKind`` or by name (e.g.
        ``("model-weights",)``: each passive party gets its final weights in plain). Default:
        none, the safe choice.

    Other keyword arguments set the terms of the same name; per-party ones accept a mapping.

    Returns
    -------
    Agreement
        With a fresh random agreement id (uuid4 hex).
    """
    if label_owner not in parties:
        raise ConfigurationError(
            f"label owner '{label_owner}' is not one of the parties ({', '.join(sorted(parties))})"
        )
    for name, ident in parties.items():
        if ident.party != name:
            raise ConfigurationError(
                f"the public key given for '{name}' belongs to party '{ident.party}'"
            )
    if unknown := sorted(set(denied_features or {}) - set(parties)):
        raise ConfigurationError(f"denied features name unknown party(ies): {', '.join(unknown)}")
    if unknown := sorted(set(allowed_features or {}) - set(parties)):
        raise ConfigurationError(f"allowed features name unknown party(ies): {', '.join(unknown)}")
    start = _now(not_before).replace(microsecond=0)
    if not valid_days > 0:
        raise ConfigurationError(f"valid days must be positive, got {valid_days}")
    terms = []
    for name, ident in parties.items():
        ids = _per_party(id_column, name, None)
        if ids is None:
            raise ConfigurationError(f"no id column given for party '{name}'")
        if isinstance(ids, str):
            ids = (ids,)
        kind = _per_party(id_kind, name, None)
        if kind is None:
            raise ConfigurationError(f"no id kind given for party '{name}'")
        terms.append(
            PartyTerms(
                name=name,
                role=ROLE_LABEL_OWNER if name == label_owner else ROLE_PASSIVE,
                signing_key=ident.signing_key,
                exchange_key=ident.exchange_key,
                id_columns=tuple(ids),
                id_kind=kind,
                default_country_code=_per_party(default_country_code, name, ""),
                case_sensitive=_per_party(case_sensitive, name, None),
                allowed_features=(
                    None
                    if allowed_features is None or allowed_features.get(name) is None
                    else tuple(allowed_features[name])  # type: ignore[arg-type]
                ),
                denied_features=tuple((denied_features or {}).get(name, ())),
                max_set_size=_per_party(max_set_size, name, DEFAULT_MAX_SET_SIZE),
            )
        )
    return Agreement(
        jobs=_job_terms(
            jobs, allowed_models, allowed_operations, max_iterations, release_opt_in, bounds
        ),
        agreement_id=agreement_id or uuid.uuid4().hex,
        purpose=purpose,
        not_before=start,
        not_after=start + timedelta(days=valid_days),
        parties=tuple(terms),
        label_owner=label_owner,
        label_column=label_column,
        positive_class=positive_class,
        result_owner=result_owner or label_owner,
        operator=OperatorTerms.of(operator),
        min_intersection=min_intersection,
        min_cohort=min_cohort,
        min_paillier_bits=min_paillier_bits,
        max_jobs=max_jobs,
        privacy_epsilon=privacy_epsilon,
        privacy_delta=privacy_delta,
    )


def _job_terms(
    jobs: Sequence[Any] | None,
    models: Sequence[str] | None,
    operations: Sequence[str] | None,
    max_iterations: int | None,
    opt_in: Sequence[str] = (),
    bounds: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[JobTerms, ...]:
    from vfm_flower.jobs import JobKind
    from vfm_flower.jobs_builtin import builtin_registry

    out: list[JobTerms] = []
    if jobs is None:
        registry = builtin_registry()
        names = list(models) if models is not None else list(registry.names())
        unknown = sorted(set(names) - set(registry.names()))
        if unknown:
            raise ConfigurationError(
                f"jobs.models: unknown {', '.join(unknown)} (known: {', '.join(registry.names())})"
            )
        jobs = [registry.get(n) for n in names]
    if operations is not None:
        offered_ops = {o for item in jobs if isinstance(item, JobKind) for o in item.operations}
        unknown = sorted(set(operations) - offered_ops)
        if unknown:
            raise ConfigurationError(
                f"jobs.operations: unknown {', '.join(unknown)} "
                f"(known: {', '.join(sorted(offered_ops))})"
            )
    for item in jobs:
        if isinstance(item, JobTerms):
            out.append(item)
            continue
        if not isinstance(item, JobKind):
            raise ConfigurationError("jobs: give JobKind or JobTerms objects")
        ops = None
        if operations is not None:
            ops = [o for o in operations if o in item.operations]
            if not ops:  # a kind offering none of the named operations is not agreed
                continue
        params = {}
        if max_iterations is not None and any(p.name == "max-iterations" for p in item.params):
            _positive_int(max_iterations, "jobs.max-iterations")
            params["max-iterations"] = ParamRange(1, int(max_iterations))
        params.update((bounds or {}).get(item.name, {}))
        granted = [n for n in opt_in if any(n in v for v in item.opt_in_releases.values())]
        out.append(JobTerms.default_for(item, operations=ops, params=params, opt_in=granted))
    offered = {
        n for t in jobs if isinstance(t, JobKind) for v in t.opt_in_releases.values() for n in v
    }
    if unknown := sorted(set(opt_in) - offered):
        raise ConfigurationError(
            f"release opt-in: no job kind offers {', '.join(unknown)} "
            f"(offered: {', '.join(sorted(offered)) or 'none'})"
        )
    return tuple(out)

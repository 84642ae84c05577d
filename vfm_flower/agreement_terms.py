"""The terms of a collaboration agreement: parties, operator, jobs and their bounds.

The frozen dataclasses the parsed agreement is made of (:class:`PartyTerms`,
:class:`OperatorTerms`, :class:`ParamRange`, :class:`JobTerms`), the file format's constants
and the small field readers they share. :mod:`vfm_flower.agreement` documents the file and
re-exports every public name; read the whole agreement with
:class:`~vfm_flower.agreement.Agreement`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from types import MappingProxyType
from typing import Any

from vfm_flower.errors import ConfigurationError
from vfm_flower.keys import PublicIdentity, validate_party_name

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

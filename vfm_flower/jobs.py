"""Job kinds: the governed units of work a collaboration can run.

A *job kind* (``logistic``, ``linear``, a team's own ``segment_stats``...) declares

- the operations it offers (``train``, ``score``, ``run``...);
- every parameter that changes what is computed or released, with its type, its default, the
  hard range the code accepts, and the bound ``vfm agreement init`` writes into a new
  agreement (the signers may tighten it);
- its release list: the names of what it may publish to the server, deliver to the result
  owner, and write into each party's own work dir.

A *job* is one kind bound to one operation and a value for every parameter. Its
:meth:`Job.digest` goes into the run key and into every party's signed hello, so each party
refuses a step of another job, a parameter that differs between parties or changes between
messages (see :mod:`vfm_flower.policy`).

Parameter values are checked twice: against the kind's hard range when the job is bound
(:meth:`JobKind.bind`, a :class:`~vfm_flower.errors.ConfigurationError`), and against the
signed agreement's bounds by the server and by every party (:func:`vfm_flower.policy.check_job`,
a :class:`~vfm_flower.errors.PolicyViolation` naming the parameter).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vfm_flower.errors import ConfigurationError

#: Audiences of a release list: the server (public facts in signed replies), the result owner
#: (sealed results), and each party's own work dir (its own artifacts).
RELEASE_AUDIENCES = ("server", "result-owner", "party")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: A data set's name: what a party's node-config declares (``data-sets``, ``data-dir``).
DATA_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PARAM = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

ANY = "*"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a job kind.

    Parameters
    ----------
    name : str
        Kebab-case name, as in run-config and in the agreement (``"holdout-fraction"``).
    type : type
        ``int``, ``float``, ``str`` or ``bool``.
    default : Any
        The value when the operator does not set it (the one source of defaults).
    limits : tuple or None
        The hard range the code accepts: ``(low, high)`` for numbers (inclusive), a tuple of
        allowed values for strings, ``None`` for any value of the type.
    agreement_bound : Any
        What a new agreement allows by default: ``{"min": low, "max": high}``, a list of
        allowed values, one value, or ``"*"`` (any value). Default: ``limits``.
    help : str
        One line for run-config docs and ``vfm agreement show``.
    """

    name: str
    type: type
    default: Any
    limits: tuple[Any, ...] | None = None
    agreement_bound: Any = None
    help: str = ""

    def __post_init__(self) -> None:
        if not _PARAM.match(self.name):
            raise ConfigurationError(f"parameter name {self.name!r} must be kebab-case")
        if self.type not in (int, float, str, bool):
            raise ConfigurationError(f"parameter '{self.name}': type must be int/float/str/bool")
        object.__setattr__(self, "default", self.coerce(self.default))

    @property
    def key(self) -> str:
        """The Python identifier of the parameter (``holdout_fraction``)."""
        return self.name.replace("-", "_")

    def coerce(self, value: Any) -> Any:
        """``value`` as this parameter's type, within its hard limits, or a one-line error."""
        where = f"parameter '{self.name}'"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where}: {value!r} is not true or false")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{where}: {value!r} is not an integer")
            if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
                raise ConfigurationError(f"{where}: {value!r} is not an integer")
            value = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{where}: {value!r} is not a number")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigurationError(f"{where}: {value!r} is not a finite number")
        elif not isinstance(value, str):
            raise ConfigurationError(f"{where}: {value!r} is not a string")
        if self.limits is not None:
            if self.type in (int, float):
                low, high = self.limits
                if not low <= value <= high:
                    raise ConfigurationError(f"{where}: {value} is outside {low}..{high}")
            elif value not in self.limits:
                raise ConfigurationError(
                    f"{where}: {value!r} is not one of {', '.join(map(str, self.limits))}"
                )
        return value

    def default_bound(self) -> Any:
        """The bound a new agreement writes for this parameter."""
        if self.agreement_bound is not None:
            return self.agreement_bound
        if self.limits is None:
            return ANY
        if self.type in (int, float):
            return {"min": self.limits[0], "max": self.limits[1]}
        return list(self.limits)


@dataclass(frozen=True)
class JobKind:
    """A registered kind of vertical job.

    Parameters
    ----------
    name : str
        Lower-case identifier (``"logistic"``), as the agreement's ``[jobs.NAME]`` table.
    operations : tuple of str
        What the kind can do (``("score", "train")``).
    params : tuple of ParamSpec
        Every parameter that changes what is computed or released.
    releases : mapping audience -> tuple of str
        The most the kind may ever release, per audience (``"server"``, ``"result-owner"``,
        ``"party"``); the agreement's release list may name fewer.
    uses_paillier : bool
        Whether the kind needs the label owner's Paillier key (then the agreement's
        ``min-paillier-bits`` applies to its ``paillier-bits`` parameter).
    description : str
        One line for ``vfm agreement show``.
    opt_in_releases : mapping audience -> tuple of str
        Names of ``releases`` that a new agreement leaves off (signers add them on purpose),
        such as a passive party's plaintext weights.
    membership : {"hidden", "revealed"}
        What alignment tells a passive party. ``"hidden"`` (default): a slot map, never which
        of its customers are joint; its steps compute on all its rows
        (``vfm_flower.hidden_membership``). ``"revealed"``: its rows of the joint customers,
        in the common order (``PartyContext.aligned_rows``); simpler to program, and a passive
        party then learns which of its customers the others hold: say so in the kind's
        documentation.
    label_operations : tuple of str
        The operations that need the label owner's label column: the label owner checks it
        at hello, before alignment (a missing column is then no late surprise).
    default_operation : str, optional
        The operation a run-config that names none runs (default: the first, sorted).
    """

    name: str
    operations: tuple[str, ...]
    params: tuple[ParamSpec, ...] = ()
    releases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    uses_paillier: bool = False
    description: str = ""
    membership: str = "hidden"
    opt_in_releases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label_operations: tuple[str, ...] = ()
    default_operation: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"job kind name {self.name!r} must be lower-case letters, digits and '_'"
            )
        ops = tuple(sorted(set(self.operations)))
        if not ops or not all(_NAME.match(o) for o in ops):
            raise ConfigurationError(f"job kind '{self.name}': name at least one operation")
        object.__setattr__(self, "operations", ops)
        if self.default_operation is None:
            object.__setattr__(self, "default_operation", ops[0])
        elif self.default_operation not in ops:
            raise ConfigurationError(
                f"job kind '{self.name}': default operation '{self.default_operation}' is not "
                "one of its operations"
            )
        if not set(self.label_operations) <= set(ops):
            raise ConfigurationError(
                f"job kind '{self.name}': label operations must be among its operations"
            )
        object.__setattr__(self, "label_operations", tuple(sorted(set(self.label_operations))))
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"job kind '{self.name}': a parameter is declared twice")
        unknown = sorted(set(self.releases) - set(RELEASE_AUDIENCES))
        if unknown:
            raise ConfigurationError(
                f"job kind '{self.name}': unknown release audience(s) {', '.join(unknown)} "
                f"(known: {', '.join(RELEASE_AUDIENCES)})"
            )
        releases = {a: tuple(sorted(set(self.releases.get(a, ())))) for a in RELEASE_AUDIENCES}
        object.__setattr__(self, "releases", MappingProxyType(releases))
        extra = sorted(
            f"{a}:{n}"
            for a, names in self.opt_in_releases.items()
            for n in names
            if n not in releases.get(a, ())
        )
        if extra:
            raise ConfigurationError(
                f"job kind '{self.name}': opt-in release(s) {', '.join(extra)} are not releases"
            )
        object.__setattr__(
            self,
            "opt_in_releases",
            MappingProxyType({a: tuple(sorted(n)) for a, n in self.opt_in_releases.items()}),
        )
        if self.membership not in ("hidden", "revealed"):
            raise ConfigurationError(
                f"job kind '{self.name}': membership must be 'hidden' or 'revealed'"
            )

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise ConfigurationError(
            f"job kind '{self.name}' has no parameter '{name}' "
            f"(parameters: {', '.join(p.name for p in self.params) or 'none'})"
        )

    def bind_config(self, config: Mapping[str, Any], operation: str | None = None) -> Job:
        """Bind from a Flower run-config: every parameter of the kind it sets (an empty
        string counts as unset), the operation from ``operation`` or its ``job`` key (empty:
        the kind's ``default_operation``), the data set from its ``data-set`` key (empty:
        each party's ``data-path``)."""
        params = {p.name: config[p.name] for p in self.params if config.get(p.name, "") != ""}
        op = operation or str(config.get("job", "") or self.default_operation)
        data_set = str(config.get("data-set", "") or "").strip() or None
        return self.bind(op, params, data_set=data_set)

    def bind(
        self,
        operation: str,
        params: Mapping[str, Any] | None = None,
        *,
        features: Mapping[str, Iterable[str]] | None = None,
        min_intersection: int | None = None,
        data_set: str | None = None,
    ) -> Job:
        """One job of this kind: the operation and a value for every parameter.

        Unset parameters take their declared default; an unknown parameter, a wrong type or a
        value outside the kind's hard limits is a :class:`ConfigurationError`.
        """
        if operation not in self.operations:
            raise ConfigurationError(
                f"job kind '{self.name}' has no operation '{operation}' "
                f"(operations: {', '.join(self.operations)})"
            )
        given = dict(params or {})
        values: dict[str, Any] = {}
        for spec in self.params:
            raw = given.pop(spec.name, given.pop(spec.key, spec.default))
            values[spec.name] = spec.coerce(raw)
        if given:
            raise ConfigurationError(
                f"job kind '{self.name}' has no parameter(s) {', '.join(sorted(given))} "
                f"(parameters: {', '.join(p.name for p in self.params) or 'none'})"
            )
        return Job(
            kind=self.name,
            operation=operation,
            params=values,
            features=features,
            min_intersection=min_intersection,
            data_set=data_set,
        )


@dataclass(frozen=True)
class Job:
    """One bound job: kind, operation, every parameter value. Immutable; travels as JSON.

    Parameters
    ----------
    kind, operation : str
        The job kind and the operation.
    params : mapping of str to int/float/str/bool
        Every parameter of the kind, by its kebab-case name.
    features : mapping party -> column names, or None
        The columns each party uses; ``None``: each party's default selection (checked by
        the party itself against the agreement).
    min_intersection : int or None
        A stricter minimum intersection for this job (never a lower one).
    data_set : str or None
        The data set every party uses, by name (each party maps the name to its own file in
        its node-config: ``data-sets`` or ``data-dir``); ``None``: each party's ``data-path``.
        Scoring new customers is then one more job on the running SuperNodes.
    """

    kind: str
    operation: str
    params: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, tuple[str, ...]] | None = None
    min_intersection: int | None = None
    data_set: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("kind", self.kind), ("operation", self.operation)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise ConfigurationError(f"job: {name} {value!r} is not a valid name")
        params = dict(self.params)
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, bool | int | float | str):
                raise ConfigurationError(f"job: parameter {key!r} has an unsupported value")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigurationError(f"job: parameter '{key}' is not a finite number")
        object.__setattr__(self, "params", MappingProxyType(params))
        if self.features is not None:
            feats = {str(k): tuple(str(c) for c in v) for k, v in dict(self.features).items()}
            object.__setattr__(self, "features", MappingProxyType(feats))
        if self.min_intersection is not None and (
            isinstance(self.min_intersection, bool) or not isinstance(self.min_intersection, int)
        ):
            raise ConfigurationError("job: min_intersection must be an integer or null")
        if self.data_set is not None and (
            not isinstance(self.data_set, str) or not DATA_SET_NAME.match(self.data_set)
        ):
            raise ConfigurationError(
                f"job: data set {self.data_set!r} is not a valid name (1-64 letters, digits, "
                "'_', '-' or '.')"
            )

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, name: str) -> Any:
        """A parameter value by its kebab-case name (``job["l2"]``)."""
        try:
            return self.params[name]
        except KeyError as exc:
            raise ConfigurationError(
                f"job '{self.kind}' has no parameter '{name}' "
                f"(parameters: {', '.join(self.params) or 'none'})"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "operation": self.operation,
            "params": dict(sorted(self.params.items())),
            "features": (
                None
                if self.features is None
                else {k: list(v) for k, v in sorted(self.features.items())}
            ),
            "min_intersection": self.min_intersection,
            "data_set": self.data_set,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: bound into the run key and the signed hello."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any) -> Job:
        if not isinstance(data, Mapping):
            raise ConfigurationError("job: must be a JSON object")
        fields = {"kind", "operation", "params", "features", "min_intersection", "data_set"}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigurationError(f"job: unknown field(s) {', '.join(unknown)}")
        try:
            kind, operation = data["kind"], data["operation"]
        except KeyError as exc:
            raise ConfigurationError(f"job: missing field {exc.args[0]}") from exc
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigurationError("job: params must be a JSON object")
        features = data.get("features")
        if features is not None and (
            not isinstance(features, Mapping)
            or not all(
                isinstance(v, list | tuple) and all(isinstance(c, str) for c in v)
                for v in features.values()
            )
        ):
            raise ConfigurationError("job: features must map party names to lists of columns")
        return cls(
            kind=kind,
            operation=operation,
            params=params,
            features=features,
            min_intersection=data.get("min_intersection"),
            data_set=data.get("data_set"),
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ConfigurationError("job: not valid JSON") from exc
        return cls.from_dict(data)


class JobRegistry:
    """The job kinds an app knows, by name. Registering a name twice is an error.

    A registry is an ordinary object (no module-level mutable state): the built-in kinds are
    in :data:`BUILTIN_JOB_KINDS`; an app makes its own registry with
    ``JobRegistry([*BUILTIN_JOB_KINDS, my_kind])``.
    """

    def __init__(self, kinds: Iterable[JobKind] = ()) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind) -> JobKind:
        if not isinstance(kind, JobKind):
            raise ConfigurationError("register a JobKind")
        if kind.name in self._kinds:
            raise ConfigurationError(f"job kind '{kind.name}' is registered twice")
        self._kinds[kind.name] = kind
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._kinds))

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError as exc:
            raise ConfigurationError(
                f"unknown job kind '{name}' (known: {', '.join(self.names()) or 'none'})"
            ) from exc

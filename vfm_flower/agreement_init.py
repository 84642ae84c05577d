"""Drafting a new agreement: :func:`init_agreement` writes an unsigned file with a bound for
every parameter of each job kind (the parties then sign it: ``vfm agreement sign``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from vfm_flower.agreement_document import (
    Agreement,
)
from vfm_flower.agreement_terms import (
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_SET_SIZE,
    DEFAULT_MIN_COHORT,
    DEFAULT_MIN_INTERSECTION,
    DEFAULT_VALID_DAYS,
    PAILLIER_FLOOR_BITS,
    ROLE_LABEL_OWNER,
    ROLE_PASSIVE,
    JobTerms,
    OperatorTerms,
    ParamRange,
    PartyTerms,
    _now,
    _positive_int,
)
from vfm_flower.errors import ConfigurationError
from vfm_flower.keys import PublicIdentity

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

"""Every rule and gate of a collaboration, each defined once.

The server and every party call these plain functions before they touch data, at every step.
Each refusal is a :class:`~vfm_flower.errors.PolicyViolation` whose ``rule`` names the term
that refused (it is written to the audit log) and whose message says what to do.

Rules, by name:

=====================  ==========================================================================
``signatures``         every party signed the terms (``SignedAgreement.verify``)
``validity``           the agreement is in force now
``job_kind``           the agreement names the job's kind (``[jobs.KIND]``)
``operation``          the agreement allows the operation for that kind, and the step serves it
``params``             every job parameter lies within the agreement's signed bound
``paillier_bits``      the job's Paillier modulus is at least the agreement's minimum
``features``           a party uses only the columns it may contribute (party and job level)
``min_intersection``   the minimum-intersection gate: no joint row is revealed below it
``min_cohort``         no aggregate is released over fewer customers
``max_jobs``           the release budget: no more jobs over the agreement's lifetime
``privacy_budget``     a noised release fits in what remains of the privacy budget
``max_set_size``       no party brings (or receives) more ids than it declared
``parties``            exactly the agreement's parties take part
``agreement_hash``     every party holds the same terms
``identity``           the agreement lists this party's own keys
``job_step``           a step belongs to the job kind that is running
``job_changed``        the job (kind, operation, every parameter) is the one bound at hello
``job_mismatch``       every party agreed to the same job in its signed hello
``release``            a published or delivered result is on the agreement's release list
``session``            messages of one run, in order, carrying this party's hello nonce
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from vfm_flower.agreement import (
    PAILLIER_FLOOR_BITS,
    Agreement,
    JobTerms,
    ParamRange,
    SignedAgreement,
)
from vfm_flower.errors import ConfigurationError, PolicyViolation, SignatureError
from vfm_flower.jobs import ANY, Job, JobKind
from vfm_flower.keys import PublicIdentity
from vfm_flower.privacy import PrivacyCost, job_cost, needs_noise

# --------------------------------------------------------------------------- the job


def check_job(
    signed: SignedAgreement,
    job: Job,
    kind: JobKind | None = None,
    now: datetime | None = None,
) -> JobTerms:
    """Refuse a job the signed agreement does not allow; return the kind's terms.

    Checks, in order: signatures and validity window, the job kind, the operation, every
    parameter against its signed bound (a parameter the agreement does not bound is refused),
    the Paillier key size, the feature columns per party, and that the job does not lower the
    minimum intersection. With ``kind`` (the registered :class:`JobKind`), also that the job
    sets exactly the kind's parameters.

    Raises
    ------
    PolicyViolation
        Rule ``"signatures"``, ``"validity"``, ``"job_kind"``, ``"operation"``, ``"params"``,
        ``"paillier_bits"``, ``"parties"``, ``"features"`` or ``"min_intersection"``.
    """
    signed.verify(now)
    agreement = signed.agreement
    terms = agreement.job_terms(job.kind)
    if job.operation not in terms.operations:
        raise PolicyViolation(
            "operation",
            f"operation '{job.operation}' of job kind '{job.kind}' is not allowed by the "
            f"agreement (allowed: {', '.join(terms.operations)}): request an allowed operation",
        )
    bits = job.params.get("paillier-bits")
    if bits is not None or (kind is not None and kind.uses_paillier):
        floor = max(agreement.min_paillier_bits, PAILLIER_FLOOR_BITS)
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < floor:
            raise PolicyViolation(
                "paillier_bits",
                f"a {bits}-bit Paillier key is below the minimum of {floor} bits: "
                f"generate a key of at least {floor} bits",
            )
    if kind is not None:
        declared = {p.name for p in kind.params}
        extra = sorted(set(job.params) - declared)
        missing = sorted(declared - set(job.params))
        if extra or missing:
            raise PolicyViolation(
                "params",
                f"job '{job.kind}' must set exactly the kind's parameters "
                f"(unknown: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})",
            )
        for spec in kind.params:
            value = job.params[spec.name]
            try:
                coerced = spec.coerce(value)
            except ConfigurationError as exc:
                raise PolicyViolation("params", f"job '{job.kind}': {exc}") from exc
            if type(coerced) is not type(value) or coerced != value:
                raise PolicyViolation(
                    "params",
                    f"job '{job.kind}': parameter '{spec.name}' = {value!r} is not a "
                    f"{spec.type.__name__}",
                )
    defaults = {p.name: p.default for p in kind.params} if kind is not None else {}
    for name, value in sorted(job.params.items()):
        check_param_bound(terms, name, value, default=defaults.get(name, _NO_DEFAULT))
    if job.features is not None:
        for party, columns in sorted(job.features.items()):
            check_features(agreement, party, columns, kind=job.kind)
    if job.min_intersection is not None and job.min_intersection < agreement.min_intersection:
        raise PolicyViolation(
            "min_intersection",
            f"the job asks for a minimum intersection of {job.min_intersection}, below the "
            f"agreement's {agreement.min_intersection}: a job may only raise it",
        )
    return terms


def bound_allows(bound: Any, value: Any) -> bool:
    """Whether one signed bound allows ``value``.

    ``"*"``: any value; a :class:`ParamRange`: a number in the closed range; a list: one of
    its values; a scalar: exactly that value (``1`` and ``1.0`` are equal, a bool is never a
    number).
    """
    if isinstance(bound, str) and bound == ANY:
        return True
    if isinstance(bound, ParamRange):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and bound.min <= value <= bound.max
    if isinstance(bound, tuple | list):
        return any(_same(v, value) for v in bound)
    return _same(bound, value)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


_NO_DEFAULT = object()


def check_param_bound(
    terms: JobTerms, name: str, value: Any, *, default: Any = _NO_DEFAULT
) -> None:
    """Refuse a parameter value outside the agreement's bound (rule ``"params"``).

    A parameter the agreement does not bound is refused, except at the kind's ``default``: a
    parameter added to a kind after the agreement was signed then behaves exactly as the code
    the signers reviewed did (``junk-threshold`` in agreements older than it).
    """
    if name not in terms.params and default is not _NO_DEFAULT and value == default:
        return
    if name not in terms.params:
        raise PolicyViolation(
            "params",
            f"the agreement sets no bound for parameter '{name}' of job kind '{terms.kind}': "
            "amend and re-sign the agreement to allow it",
        )
    bound = terms.params[name]
    if not bound_allows(bound, value):
        shown = str(bound) if isinstance(bound, ParamRange) else bound
        shown = list(shown) if isinstance(shown, tuple) else shown
        raise PolicyViolation(
            "params",
            f"parameter '{name}' = {value!r} of job '{terms.kind}' is outside the agreement's "
            f"bound {shown}: choose a value within it",
        )


def check_job_binding(bound_digest: str, job: Job) -> None:
    """Refuse a message whose job differs from the one bound at hello (rule ``"job_changed"``)."""
    if job.digest() != bound_digest:
        raise PolicyViolation(
            "job_changed",
            "the job of this message (kind, operation or a parameter) differs from the job "
            "this party agreed to at hello: a job cannot change within a run",
        )


def check_same_job(own_digest: str, reported: Mapping[str, str]) -> None:
    """Refuse unless every party's signed hello names the same job (rule ``"job_mismatch"``)."""
    differ = sorted(p for p, digest in reported.items() if digest != own_digest)
    if differ:
        raise PolicyViolation(
            "job_mismatch",
            f"party(ies) {', '.join(differ)} agreed to another job (kind, operation or "
            "parameters) than this party: every party must run the same job",
        )


def check_step(
    step_kind: str, job_kinds: Iterable[str], operations: Iterable[str] | None, job: Job
) -> None:
    """Refuse a step that does not belong to the running job.

    Raises
    ------
    PolicyViolation
        Rule ``"job_step"`` (another job kind) or ``"operation"`` (another operation).
    """
    kinds = tuple(job_kinds)
    if ANY not in kinds and job.kind not in kinds:
        raise PolicyViolation(
            "job_step",
            f"step '{step_kind}' belongs to job kind(s) {', '.join(kinds)}, not to the running "
            f"job '{job.kind}'",
        )
    ops = tuple(operations) if operations is not None else None
    if ops is not None and job.operation not in ops:
        raise PolicyViolation(
            "operation",
            f"step '{step_kind}' serves operation(s) {', '.join(ops)}, the job runs "
            f"'{job.operation}'",
        )


def check_release(terms: JobTerms, audience: str, names: Iterable[str]) -> None:
    """Refuse releasing anything the agreement's release list does not name (rule ``"release"``).

    Parameters
    ----------
    audience : str
        ``"server"``, ``"result-owner"`` or ``"party"``.
    """
    allowed = set(terms.release.get(audience, ()))
    bad = sorted(set(names) - allowed)
    if bad:
        raise PolicyViolation(
            "release",
            f"job '{terms.kind}' may not release {', '.join(bad)} to the {audience} (release "
            f"list: {', '.join(sorted(allowed)) or 'nothing'}): amend and re-sign the agreement",
        )


# --------------------------------------------------------------------------- columns


def check_features(
    agreement: Agreement, party: str, columns: Iterable[str], *, kind: str | None = None
) -> None:
    """Refuse any column ``party`` may not contribute (rule ``"features"``).

    A column must pass the party-level terms (never an id or the label column, never a denied
    column, within ``allowed-features``) and, with ``kind``, the job kind's own feature list
    for that party when the agreement gives one.
    """
    terms = agreement.party(party)
    job_columns = None
    if kind is not None:
        job_features = agreement.job_terms(kind).features or {}
        job_columns = job_features.get(party)
    reasons = []
    for c in sorted(set(columns)):
        if c in terms.id_columns:
            reasons.append(f"{c} (id column)")
        elif party == agreement.label_owner and c == agreement.label_column:
            reasons.append(f"{c} (label column)")
        elif c in terms.denied_features:
            reasons.append(f"{c} (denied)")
        elif not agreement.feature_allowed(party, c):
            reasons.append(f"{c} (not in allowed-features)")
        elif job_columns is not None and c not in job_columns:
            reasons.append(f"{c} (not in jobs.{kind}.features.{party})")
    if reasons:
        raise PolicyViolation(
            "features",
            f"party '{party}' may not use column(s) {', '.join(reasons)}: drop them from the "
            "job or amend and re-sign the agreement",
        )


# --------------------------------------------------------------------------- sizes


def check_min_intersection(count: int, minimum: int) -> None:
    """The minimum-intersection gate: refuse before any joint row is revealed.

    Raises
    ------
    PolicyViolation
        Rule ``"min_intersection"``. The message carries no count, so a refusal reveals one
        bit (below or not), never the size.
    """
    if not isinstance(minimum, int) or minimum < 0:
        raise ConfigurationError("min_intersection must be a non-negative integer")
    if count < minimum:
        raise PolicyViolation(
            "min_intersection",
            "the joint intersection of all parties is below the agreed minimum of "
            f"{minimum} rows; alignment stopped and no row was revealed",
        )


def min_intersection_of(agreement: Agreement, job: Job) -> int:
    """The minimum intersection in force: the agreement's, or the job's when it is stricter."""
    return max(agreement.min_intersection, job.min_intersection or 0)


def check_min_cohort(min_cohort: int, count: int, what: str) -> None:
    """Refuse releasing an aggregate over fewer than ``min_cohort`` rows (rule ``"min_cohort"``).

    Parameters
    ----------
    what : str
        What the aggregate is (e.g. ``"hold-out metrics"``, ``"segment 'A'"``).
    """
    if count < min_cohort:
        raise PolicyViolation(
            "min_cohort",
            f"{what} would cover {count} rows, below the minimum cohort of {min_cohort}: use a "
            "larger group (fewer buckets, a larger hold-out)",
        )


def released_count(count: int, minimum: int) -> int | None:
    """The minimum-intersection gate on a released overlap count: the count when it reaches
    ``minimum``, ``None`` (withheld) below it, so a withheld figure reveals one bit (below
    or not), never the size."""
    if not isinstance(minimum, int) or minimum < 0:
        raise ConfigurationError("min_intersection must be a non-negative integer")
    return int(count) if count >= minimum else None


def withhold_small_cells(counts: list[int], min_cohort: int) -> tuple[set[int], set[int]]:
    """The minimum-cohort rule over disjoint cells whose total is released: primary and
    complementary suppression.

    Parameters
    ----------
    counts : list of int
        Customers in each cell (the cells partition a released total).
    min_cohort : int
        The agreement's minimum cohort.

    Returns
    -------
    (primary, secondary) : tuple of set of int
        ``primary``: the cells below ``min_cohort``; ``secondary``: further cells, smallest
        first, withheld so that the withheld cells together cover 0 or at least
        ``min_cohort`` customers (the total minus the released cells would reveal them).
    """
    small = {i for i, n in enumerate(counts) if n < min_cohort}
    withheld = set(small)
    secondary: set[int] = set()
    remaining = sorted((n, i) for i, n in enumerate(counts) if i not in withheld)
    while remaining and 0 < sum(counts[i] for i in withheld) < min_cohort:
        _, i = remaining.pop(0)
        withheld.add(i)
        secondary.add(i)
    return small, secondary


def table_groups(cells: int, shape: tuple[int, int] | None) -> list[list[int]]:
    """The groups of cells whose totals a reader may know: every row and every column of a
    cross table (``shape`` rows x columns, row-major; another release, or the label owner's
    own column, can give any of its marginals), else the single group of all cells."""
    if shape is None:
        return [list(range(cells))]
    rows, cols = shape
    if rows * cols != cells:
        raise ConfigurationError(f"a {rows} x {cols} table has {rows * cols} cells, not {cells}")
    return [list(range(r * cols, (r + 1) * cols)) for r in range(rows)] + [
        list(range(c, cells, cols)) for c in range(cols)
    ]


def withhold_small_table(
    counts: list[int], min_cohort: int, shape: tuple[int, int] | None
) -> tuple[set[int], set[int]]:
    """The minimum-cohort rule with complementary suppression along every group of
    :func:`table_groups` (each row and column of a cross): the cells below ``min_cohort``,
    then further cells, smallest first, until the withheld cells of every group cover 0 or
    at least ``min_cohort`` customers (or the whole group)."""
    if shape is None:
        return withhold_small_cells(counts, min_cohort)
    small = {i for i, n in enumerate(counts) if n < min_cohort}
    withheld = set(small)
    changed = True
    while changed:
        changed = False
        for group in table_groups(len(counts), shape):
            hidden = [i for i in group if i in withheld]
            if hidden and 0 < sum(counts[i] for i in hidden) < min_cohort:
                rest = sorted((counts[i], i) for i in group if i not in withheld)
                if rest:
                    withheld.add(rest[0][1])
                    changed = True
    return small, withheld - small


def check_job_budget(agreement: Agreement, jobs_so_far: int) -> None:
    """The release budget: refuse a job beyond the agreement's ``max-jobs`` (rule
    ``"max_jobs"``). Each party counts the jobs it took part in from its own audit log."""
    if jobs_so_far >= agreement.max_jobs:
        raise PolicyViolation(
            "max_jobs",
            f"this party already ran {jobs_so_far} job(s) under this agreement, its limit of "
            f"{agreement.max_jobs}: agree and sign a new agreement to run more",
        )


def check_privacy_budget(agreement: Agreement, job: Job, spent: PrivacyCost) -> PrivacyCost:
    """The privacy budget (rule ``"privacy_budget"``): a job that releases noised statistics
    fits in what the agreement's budget has left after ``spent`` (this party's own audit
    log); under an agreement with a budget, such a job must add noise. Returns the job's
    cost (to charge before any data is read)."""
    cost = job_cost(job)
    if agreement.privacy_epsilon is None:
        return cost
    if needs_noise(job) and cost.is_free:
        remedy = (
            "set its epsilon"
            if "epsilon" in job.params
            else "run it without a segment column (its counts per value are exact), or use "
            "the segments job with noise"
        )
        raise PolicyViolation(
            "privacy_budget",
            f"the agreement sets a privacy budget (epsilon {agreement.privacy_epsilon:g}): a "
            f"'{job.kind}' job releasing statistics per segment must add noise: {remedy} "
            f"(what remains: {max(agreement.privacy_epsilon - spent.epsilon, 0.0):g})",
        )
    if not cost.fits(spent, agreement.privacy_epsilon, agreement.privacy_delta):
        raise PolicyViolation(
            "privacy_budget",
            f"the job would spend epsilon {cost.epsilon:g} (delta {cost.delta:g}) but only "
            f"{max(agreement.privacy_epsilon - spent.epsilon, 0.0):g} (delta "
            f"{max(agreement.privacy_delta - spent.delta, 0.0):g}) remains of the agreement's "
            "privacy budget: nothing was released; a smaller epsilon or a new agreement",
        )
    return cost


def check_set_size(n: int, max_set_size: int, party: str) -> None:
    """Refuse an id set larger than the party's declared maximum (rule ``"max_set_size"``)."""
    if max_set_size < 1:
        raise ConfigurationError("max_set_size must be a positive integer")
    if n > max_set_size:
        raise PolicyViolation(
            "max_set_size",
            f"party '{party}' brings {n} ids, above its maximum set size of {max_set_size}: "
            "align a smaller set or amend the agreement",
        )


# --------------------------------------------------------------------------- who takes part


def check_party_presence(agreement: Agreement, present: Iterable[str]) -> None:
    """Refuse unless exactly the agreement's parties are present (rule ``"parties"``)."""
    seen = list(present)
    expected = set(agreement.party_names)
    missing = sorted(expected - set(seen))
    unknown = sorted(set(seen) - expected)
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if not (missing or unknown or twice):
        return
    parts = []
    if missing:
        parts.append(f"missing: {', '.join(missing)} (start their SuperNodes)")
    if unknown:
        parts.append(f"not in the agreement: {', '.join(unknown)} (check node-config 'party')")
    if twice:
        parts.append(f"present more than once: {', '.join(twice)} (one SuperNode per party)")
    raise PolicyViolation("parties", "; ".join(parts))


def check_same_agreement(expected_hash: str, reported: Mapping[str, str]) -> None:
    """Refuse unless every party reports the same terms hash (rule ``"agreement_hash"``)."""
    differ = sorted(name for name, h in reported.items() if h != expected_hash)
    if differ:
        raise PolicyViolation(
            "agreement_hash",
            f"party(ies) {', '.join(differ)} hold a different agreement than "
            f"{expected_hash[:16]}...: distribute the same signed agreement file to every party",
        )


def check_identity(agreement: Agreement, identity: PublicIdentity) -> None:
    """Refuse when the agreement does not list ``identity``'s keys for it (rule ``"identity"``).

    A party calls this with its own public keys before trusting an agreement file: it proves
    the file names *this* party's keys, not keys substituted by someone else.
    """
    terms = agreement.party(identity.party)
    if (terms.signing_key, terms.exchange_key) != (identity.signing_key, identity.exchange_key):
        raise PolicyViolation(
            "identity",
            f"the agreement lists other keys for '{identity.party}' than this party's key "
            f"(fingerprint {identity.fingerprint}): use the agreement you signed",
        )


def check_operator_key(agreement: Agreement, identity: PublicIdentity) -> None:
    """The server runs only with the operator key the agreement lists (rule ``"operator"``).

    The server calls this with its own key before it sends anything: an agreement that names
    another operator is not this server's to run.
    """
    op = agreement.operator
    if (op.name, op.signing_key) != (identity.party, identity.signing_key):
        raise PolicyViolation(
            "operator",
            f"this server's key ('{identity.party}', fingerprint {identity.fingerprint}) is not "
            f"the operator key the agreement lists ('{op.name}', fingerprint "
            f"{op.public_identity.fingerprint}): run the agreement with its operator's key",
        )


def check_job_counter(job_counter: int, own_counter: int, certified_counter: int) -> None:
    """The job counter never goes back (rule ``"audit"``).

    A party checks the counter of the operator's hello against its own log (a counter at or
    below the last job this party took part in means the operator's log was rolled back or
    replaced), and its own log against its close certificates (a log behind the jobs it holds
    certificates of was rolled back or replaced). The server checks its own log likewise
    before it starts a job.
    """
    if own_counter < certified_counter:
        raise PolicyViolation(
            "audit",
            f"this audit log is at job {own_counter}, but its close certificates reach job "
            f"{certified_counter}: the log was rolled back or replaced; restore it from a copy "
            "(keep this one as evidence) before running another job",
        )
    if job_counter <= own_counter:
        raise PolicyViolation(
            "audit",
            f"the operator numbers this job {job_counter}, but this party already took part in "
            f"job {own_counter}: the operator's audit log was rolled back or replaced; refusing",
        )


def check_operator_signature(
    agreement: Agreement, signature: bytes, data: bytes, what: str
) -> None:
    """A party trusts a server message only if the agreement's operator signed it (rule
    ``"operator"``): without it, whoever runs a SuperLink could act as the server."""
    try:
        agreement.operator.public_identity.verify(signature, data)
    except SignatureError as exc:
        raise PolicyViolation(
            "operator",
            f"the server's {what} is not signed by the operator the agreement lists "
            f"('{agreement.operator.name}', fingerprint "
            f"{agreement.operator.public_identity.fingerprint}): refusing this server",
        ) from exc

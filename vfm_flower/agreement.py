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

This module is the public entry point; the code lives in four modules along its seams:
:mod:`~vfm_flower.agreement_terms` (the terms' dataclasses and field readers),
:mod:`~vfm_flower.agreement_document` (:class:`Agreement`: the file and its canonical terms),
:mod:`~vfm_flower.agreement_signing` (:class:`SignedAgreement`, the validity window) and
:mod:`~vfm_flower.agreement_init` (:func:`init_agreement`, drafting a new file).
"""

from __future__ import annotations

from vfm_flower.agreement_document import (
    Agreement,
)
from vfm_flower.agreement_init import (
    init_agreement,
)
from vfm_flower.agreement_signing import (
    SignedAgreement,
    check_signing_window,
)
from vfm_flower.agreement_terms import (
    ALL_FEATURES,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_SET_SIZE,
    DEFAULT_MIN_COHORT,
    DEFAULT_MIN_INTERSECTION,
    DEFAULT_VALID_DAYS,
    EXPIRY_WARNING_DAYS,
    FILE_FORMAT,
    ID_KINDS,
    PAILLIER_FLOOR_BITS,
    ROLE_LABEL_OWNER,
    ROLE_PASSIVE,
    ROLES,
    TERMS_VERSION,
    JobTerms,
    OperatorTerms,
    ParamRange,
    PartyTerms,
    format_utc,
    parse_utc,
)

__all__ = [
    "ALL_FEATURES",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_SET_SIZE",
    "DEFAULT_MIN_COHORT",
    "DEFAULT_MIN_INTERSECTION",
    "DEFAULT_VALID_DAYS",
    "EXPIRY_WARNING_DAYS",
    "FILE_FORMAT",
    "ID_KINDS",
    "JobTerms",
    "OperatorTerms",
    "PAILLIER_FLOOR_BITS",
    "ParamRange",
    "PartyTerms",
    "ROLES",
    "ROLE_LABEL_OWNER",
    "ROLE_PASSIVE",
    "TERMS_VERSION",
    "format_utc",
    "parse_utc",
    "Agreement",
    "SignedAgreement",
    "check_signing_window",
    "init_agreement",
]

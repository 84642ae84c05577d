"""Governance commands: ``vfm keygen``, ``vfm agreement init|sign|verify|show``,
``vfm audit verify|export``.

Exit codes: 0 success; 1 a check failed (``agreement verify``, ``audit verify``); 2 a usage or
configuration error (raised as ``VfmError`` and reported by :func:`vfm_flower.cli.main`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from vfm_flower.cli.options import name_value_pairs
from vfm_flower.errors import ConfigurationError, PolicyViolation, VfmError
from vfm_flower.keys import PartyIdentity, PublicIdentity

ID_KINDS = ("email", "phone", "plain")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(" ".join(text.split()) + "\n")


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    from vfm_flower.agreement import parse_utc

    return parse_utc(text, option)


# ----------------------------------------------------------------------------------------------
# keygen
# ----------------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write ``DIR/NAME.key`` (mode 0600) and ``DIR/NAME.pub``."""
    try:
        identity = PartyIdentity.generate(args.party)
    except ValueError as exc:
        raise ConfigurationError(f"--party: {exc}") from exc
    key_path, pub_path = identity.save(args.out)
    _out(f"wrote {key_path} (private: keep it secret, mode 0600)")
    _out(f"wrote {pub_path} (public: send it to whoever drafts the agreement)")
    _out(f"fingerprint {identity.public.fingerprint}")
    return 0


# ----------------------------------------------------------------------------------------------
# agreement
# ----------------------------------------------------------------------------------------------


def cmd_agreement_init(args: argparse.Namespace) -> int:
    """Draft a new, unsigned agreement file."""
    from vfm_flower.agreement import SignedAgreement, check_signing_window, init_agreement

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigurationError(f"{out} exists already: refusing to overwrite (use --force)")
    parties: dict[str, PublicIdentity] = {}
    for name, pub_file in name_value_pairs(args.party, "--party"):
        if name in parties:
            raise ConfigurationError(f"--party {name} is given twice")
        ident = PublicIdentity.load(pub_file)
        if ident.party != name:
            raise ConfigurationError(
                f"--party {name}={pub_file}: that public key file belongs to party '{ident.party}'"
            )
        parties[name] = ident
    if len(parties) < 2:
        raise ConfigurationError("give at least two --party NAME=PUBKEYFILE")
    [(op_name, op_file)] = name_value_pairs([args.operator], "--operator")
    operator = PublicIdentity.load(op_file)
    if operator.party != op_name:
        raise ConfigurationError(
            f"--operator {op_name}={op_file}: that public key file belongs to '{operator.party}'"
        )
    if args.label_owner not in parties:
        raise ConfigurationError(
            f"--label-owner '{args.label_owner}' must be one of the --party names "
            f"({', '.join(parties)})"
        )
    id_columns: dict[str, list[str]] = {name: list(args.id_column) for name in parties}
    overrides: dict[str, list[str]] = {}
    for name, col in name_value_pairs(args.party_id_column, "--party-id-column"):
        if name not in parties:
            raise ConfigurationError(f"--party-id-column names unknown party '{name}'")
        overrides.setdefault(name, []).append(col)
    id_columns.update(overrides)
    id_kinds: dict[str, str] = {name: args.id_kind for name in parties}
    for name, kind in name_value_pairs(args.party_id_kind, "--party-id-kind"):
        if name not in parties:
            raise ConfigurationError(f"--party-id-kind names unknown party '{name}'")
        id_kinds[name] = kind
    denied: dict[str, list[str]] = {}
    for name, col in name_value_pairs(args.deny, "--deny"):
        denied.setdefault(name, []).append(col)
    allowed: dict[str, list[str] | None] = {}
    for name, col in name_value_pairs(args.allow, "--allow"):
        allowed.setdefault(name, []).append(col)  # type: ignore[union-attr]
    agreement = init_agreement(
        purpose=args.purpose,
        label_owner=args.label_owner,
        label_column=args.label_column,
        id_column=id_columns,
        id_kind=id_kinds,
        parties=parties,
        operator=operator,
        positive_class=args.positive_class,
        min_intersection=args.min_intersection,
        min_cohort=args.min_cohort,
        min_paillier_bits=args.min_paillier_bits,
        max_iterations=args.max_iterations,
        bounds=_param_bounds(args.param),
        max_set_size=args.max_set_size,
        max_jobs=args.max_jobs,
        privacy_epsilon=args.privacy_epsilon,
        privacy_delta=args.privacy_delta,
        result_owner=args.result_owner,
        allowed_models=args.models.split(",") if args.models else None,
        release_opt_in=tuple(args.release),
        allowed_operations=args.operations.split(",") if args.operations else None,
        allowed_features=allowed or None,
        denied_features=denied or None,
        default_country_code=args.default_country_code or "",
        case_sensitive=args.case_sensitive,
        valid_days=args.valid_days,
        not_before=_when(args.not_before, "--not-before"),
    )
    warning = check_signing_window(agreement)  # an agreement that already ended: refused
    SignedAgreement(agreement, {}).save(out)
    _out(f"wrote {out}: agreement {agreement.agreement_id}, terms hash {agreement.terms_hash()}")
    if warning:
        _err(warning)
    _out("next: every party and the operator sign it:")
    for name in agreement.signer_names:
        _out(f"  vfm agreement sign {out} --party {name} --key {name}.key")
    return 0


def _listed_fingerprints(agreement) -> dict[str, str]:
    return {name: agreement.signer(name).fingerprint for name in agreement.signer_names}


def _print_fingerprints(agreement, pinned: dict[str, str] | None = None) -> None:
    from vfm_flower.pins import format_fingerprint

    _out("Key fingerprints (confirm each with its owner out of band: a call or a meeting,")
    _out("not the channel the agreement came through; a substituted key reads that party's data)")
    for name, fp in _listed_fingerprints(agreement).items():
        note = ""
        if pinned is not None:
            note = "  (pinned)" if pinned.get(name) == fp else "  (NEW: confirm before signing)"
        _out(f"  {name:<20}{format_fingerprint(fp)}{note}")


def cmd_agreement_sign(args: argparse.Namespace) -> int:
    """Add (or renew) one party's signature and rewrite the file atomically.

    Refused when the validity window has ended, or when a party's key differs from the one
    this signer pinned for that name (``--repin NAME`` accepts a change confirmed out of band).
    """
    from vfm_flower.agreement import SignedAgreement, check_signing_window
    from vfm_flower.pins import KeyPins, pin_path_for

    signed = SignedAgreement.load(args.file)
    agreement = signed.agreement
    agreement.signer(args.party)  # neither a party nor the operator: PolicyViolation "parties"
    unknown = sorted(set(args.repin) - set(agreement.signer_names))
    if unknown:
        raise ConfigurationError(f"--repin names no party of the agreement: {', '.join(unknown)}")
    warning = check_signing_window(agreement)
    identity = PartyIdentity.load(args.key, expected_party=args.party)
    pins = KeyPins.load(args.pins or pin_path_for(args.key, args.party))
    listed = _listed_fingerprints(agreement)
    _print_fingerprints(agreement, pins.pins)
    first = pins.check(listed, repin=args.repin)  # a changed pinned key: refused
    signed = signed.with_signature(identity)
    signed.save(args.file)
    pins.pinned(listed).save()  # after the signature: nothing is pinned that was not signed
    missing = signed.missing_signatures()
    _out(f"signed {args.file} as {args.party} (terms hash {signed.terms_hash()})")
    if first:
        _out(f"pinned {', '.join(first)} in {pins.path}: later agreements must list these keys")
    _out(f"still missing: {', '.join(missing)}" if missing else "all parties have signed")
    if warning:
        _err(warning)
    return 0


def cmd_agreement_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if every party signed the current terms and the agreement is in force."""
    from vfm_flower.agreement import SignedAgreement, format_utc

    try:
        signed = SignedAgreement.load(args.file)
        if args.expect_hash and signed.terms_hash() != args.expect_hash.strip().lower():
            raise PolicyViolation(
                "agreement_hash",
                f"terms hash is {signed.terms_hash()}, expected {args.expect_hash}",
            )
        signed.verify(_when(args.at, "--at"))
    except VfmError as exc:
        _err(f"agreement {args.file} is not valid: {exc}")
        return 1
    a = signed.agreement
    _out(
        f"ok: agreement {a.agreement_id} signed by {', '.join(signed.signed_by())}; valid until "
        f"{format_utc(a.not_after)}; terms hash {signed.terms_hash()}"
    )
    return 0


def _label_line(a, kind: str) -> str:
    if kind == "logistic":
        classes = (
            "labels are 0/1" if a.positive_class is None else f"positive class {a.positive_class!r}"
        )
        return f"{a.label_owner}.{a.label_column}: binary label ({classes})"
    if kind == "linear":
        return f"{a.label_owner}.{a.label_column}: numeric target (real values, no classes)"
    return f"{a.label_owner}.{a.label_column}: as the job kind '{kind}' defines it"


def _param_bounds(items: list[str] | None) -> dict[str, dict[str, object]]:
    """``--param KIND.NAME=BOUND`` options as ``{kind: {name: bound}}``."""
    out: dict[str, dict[str, object]] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        kind, dot, name = key.strip().partition(".")
        if not sep or not dot or not kind or not name or not text.strip():
            raise ConfigurationError(
                f"--param {item!r}: write KIND.NAME=BOUND (e.g. segments.target-max=500)"
            )

        def number(v: str) -> object:
            try:
                return int(v) if v.strip().lstrip("-").isdigit() else float(v)
            except ValueError:
                return v.strip()

        text = text.strip()
        if ".." in text:
            low, _, high = text.partition("..")
            bound: object = {"min": number(low), "max": number(high)}
        elif "," in text:
            bound = [number(v) for v in text.split(",")]
        else:
            bound = number(text)
        out.setdefault(kind, {})[name.strip()] = bound
    return out


def cmd_agreement_show(args: argparse.Namespace) -> int:
    """Print the terms, what each means, every key's fingerprint and who has signed."""
    from vfm_flower.agreement import SignedAgreement, format_utc
    from vfm_flower.pins import format_fingerprint

    signed = SignedAgreement.load(args.file)
    a = signed.agreement
    good, bad = set(signed.signed_by()), set(signed.invalid_signatures())
    rows = [
        ("purpose", a.purpose, "what the parties agreed to use the data for"),
        (
            "valid",
            f"{format_utc(a.not_before)} .. {format_utc(a.not_after)}",
            "every party refuses a job outside this window",
        ),
        ("terms hash", a.terms_hash(), "SHA-256 of the terms: what every party signs"),
        ("label owner", a.label_owner, "the only party that sees labels and the Paillier key"),
        ("result owner", a.result_owner, "receives scores, metrics and the model report"),
        (
            "min intersection",
            a.min_intersection,
            "alignment aborts, revealing nothing, below this many joint customers",
        ),
        (
            "min cohort",
            a.min_cohort,
            "smallest group any released figure or feature level may describe",
        ),
        ("min Paillier bits", a.min_paillier_bits, "smallest encryption key a job may use"),
        ("max jobs", a.max_jobs, "jobs over the lifetime, counted in each party's audit log"),
        (
            "privacy budget",
            "none (statistics are exact, under the minimum cohort)"
            if a.privacy_epsilon is None
            else f"epsilon {a.privacy_epsilon:g}, delta {a.privacy_delta:g}",
            "what noised releases may spend in total; `vfm budget` shows what remains",
        ),
    ]
    _out(f"Agreement {a.agreement_id}")
    for name, value, meaning in rows:
        _out(f"  {name:<18}{value}")
        _out(f"  {'':<18}({meaning})")
    _out("Label, per model kind")
    for j in a.jobs:
        _out(f"  {j.kind:<18}{_label_line(a, j.kind)}")
    _out("Jobs (kind: operations; every parameter's signed bound; what may be released)")
    for j in a.jobs:
        _out(f"  {j.kind}: {', '.join(j.operations)}")
        for name, bound in j.params.items():
            shown = list(bound) if isinstance(bound, tuple) else str(bound)
            _out(f"    {name:<18}{shown}")
        for audience, names in j.release.items():
            _out(f"    release to {audience}: {', '.join(names) or 'nothing'}")
        for party, columns in (j.features or {}).items():
            _out(f"    {party} may use   {', '.join(columns) or 'none'}")
    _out("  (a job asking for more than a bound, or releasing what is not listed, is refused)")

    def status(name: str) -> str:
        if name in good:
            return "signed"
        return "SIGNATURE INVALID" if name in bad else "NOT SIGNED"

    _out("Parties")
    for p in a.parties:
        extras = []
        if p.default_country_code:
            extras.append(f"default country code {p.default_country_code}")
        if p.case_sensitive is not None:
            extras.append("case sensitive" if p.case_sensitive else "case insensitive")
        features = "all" if p.allowed_features is None else ", ".join(p.allowed_features) or "none"
        _out(f"  {p.name} ({p.role}) - {status(p.name)}")
        _out(f"    key fingerprint {format_fingerprint(p.public_identity.fingerprint)}")
        _out(
            f"    ids             {', '.join(p.id_columns)} as {p.id_kind}"
            + (f" ({'; '.join(extras)})" if extras else "")
        )
        _out(f"    features        {features} (columns it may contribute)")
        _out(f"    denied          {', '.join(p.denied_features) or '-'} (never used)")
        _out(f"    max set size    {p.max_set_size} (most ids it aligns)")
    op = a.operator
    _out("Operator (runs the server; holds no data)")
    _out(f"  {op.name} - {status(op.name)}")
    _out(f"    key fingerprint {format_fingerprint(op.public_identity.fingerprint)}")
    _out("    (the server runs only with this key; every party refuses a server without it)")
    _out("Before signing, confirm every key fingerprint with its owner out of band (a call or a")
    _out("meeting, not the channel this file came through); `vfm agreement sign` pins them.")
    try:
        signed.verify()
        _out("Status: valid (every party and the operator signed, within the validity window)")
    except PolicyViolation as exc:
        _out(f"Status: NOT valid: {exc}")
    return 0


# ----------------------------------------------------------------------------------------------
# audit
# ----------------------------------------------------------------------------------------------


def _print_report(report, strict: bool = False) -> int:
    """Print each log's verdict, then the findings, warnings and notes; return the failures
    (with ``strict``, entries no held record vouches for are failures too)."""
    failed = 0
    vouched = report.vouched or {}
    for name, res in report.logs:
        if res.ok:
            held = vouched.get(name, 0)
            _out(
                f"ok {name}: {res.entries} entries by {res.writer}, sealed at job "
                f"{res.job_counter}"
                + (f"; matches the {held} head(s) of it held elsewhere" if held else "")
            )
        else:
            failed += 1
            where = f"line {res.first_bad_line}" if res.first_bad_line else "file"
            _err(f"FAILED {name}: {where}: {res.reason}")
    for problem in report.problems:
        failed += 1
        _err(f"FAILED {problem}")
    for name, (first, last) in sorted((report.unvouched or {}).items()):
        failed += int(strict)
        _err(
            f"{'FAILED' if strict else 'warning'} {name}: entries {first} to {last} are "
            "vouched for by no close certificate or other log held here (a job that did not "
            "close normally, or entries added since the last close)"
        )
    for note in report.notes:
        _out(f"note: {note}")
    return failed


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if every audit log under the paths (work dirs, logs, or one bundle) is
    intact and agrees with every head held of it."""
    from vfm_flower.audit_bundle import is_audit_bundle, verify_audit_bundle
    from vfm_flower.audit_verify import verify_audit_records

    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.exists():
            _err(f"audit verify: {path} does not exist")
            return 1
    bundles = [p for p in paths if is_audit_bundle(p)]
    if bundles:
        if len(paths) > 1:
            raise ConfigurationError("audit verify: a bundle is verified on its own")
        path = bundles[0]
        if args.agreement:
            from vfm_flower.agreement import SignedAgreement

            expected = SignedAgreement.load(args.agreement).terms_hash()
        elif args.expect_hash:
            expected = args.expect_hash
        else:
            raise ConfigurationError(
                "audit verify BUNDLE: pass --agreement FILE (your signed copy) or --expect-hash "
                "HASH: the agreement inside a bundle proves nothing by itself"
            )
        bundle = verify_audit_bundle(path, expected)
        from vfm_flower.audit_verify import AuditTreeVerification

        failed = _print_report(
            AuditTreeVerification(bundle.logs, bundle.problems, unvouched=bundle.unvouched),
            strict=args.strict,
        )
        if failed:
            _err(f"bundle {path} failed verification")
            return 1
        _out(
            f"ok: bundle {path}: {len(bundle.logs)} logs, every signer's, cross-checked; "
            f"agreement terms hash {expected.strip().lower()}"
        )
        return 0
    agreement = None
    if args.agreement:
        from vfm_flower.agreement import SignedAgreement

        try:
            agreement = SignedAgreement.load(args.agreement).agreement
        except VfmError as exc:
            _err(f"audit verify: {exc}")
            return 1
    report = verify_audit_records(paths, agreement)
    if not report.logs and not report.problems:
        _err(f"audit verify: no audit log (*.jsonl) under {', '.join(map(str, paths))}")
        return 1
    failed = _print_report(report, strict=args.strict)
    if agreement is None:
        _out(
            "note: without --agreement only chains and cross-signatures were checked (keys, "
            "close certificates and deleted logs need your copy of the agreement)"
        )
    if failed:
        _err(f"{failed} finding(s): the audit trail does not verify")
        return 1
    _out(
        f"ok: {len(report.logs)} log(s)"
        + (f", {report.certificates} close certificate(s)" if report.certificates else "")
        + " verified"
    )
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Write one bundle (agreement and every log of it under the sources) anyone can verify."""
    from vfm_flower.audit_bundle import export_audit_bundle

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigurationError(f"{out} exists already: refusing to overwrite (use --force)")
    written = export_audit_bundle(args.agreement, args.sources, out)
    from vfm_flower.agreement import SignedAgreement

    terms = SignedAgreement.load(args.agreement).terms_hash()
    _out(
        f"wrote {written}: verify it anywhere with `vfm audit verify {written} "
        f"--expect-hash {terms}`"
    )
    return 0


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``keygen``, ``agreement`` and ``audit`` to the ``vfm`` command."""
    p = subparsers.add_parser("keygen", help="create a party's key pair (NAME.key, NAME.pub)")
    p.add_argument("--party", required=True, help="party name")
    p.add_argument("--out", required=True, help="directory for NAME.key and NAME.pub")
    p.set_defaults(func=cmd_keygen)

    agr = subparsers.add_parser("agreement", help="draft, sign, verify and show agreements")
    agr_sub = agr.add_subparsers(dest="agreement_command", metavar="ACTION")
    agr_sub.required = True

    p = agr_sub.add_parser("init", help="draft a new (unsigned) agreement file")
    p.add_argument("--out", required=True, help="agreement TOML file to write")
    p.add_argument("--purpose", required=True, help="what the collaboration is for")
    p.add_argument("--label-owner", required=True, help="party holding the label column")
    p.add_argument("--label-column", required=True)
    p.add_argument(
        "--id-column", required=True, action="append", help="id column (repeat for a composite id)"
    )
    p.add_argument(
        "--id-kind", choices=ID_KINDS, default="plain", help="id normalization (default: plain)"
    )
    p.add_argument(
        "--party",
        required=True,
        action="append",
        metavar="NAME=PUBKEYFILE",
        help="a party and its NAME.pub file (repeat per party)",
    )
    p.add_argument(
        "--operator",
        required=True,
        metavar="NAME=PUBKEYFILE",
        help="the server operator and its NAME.pub: it signs too, and the server runs only "
        "with this key",
    )
    p.add_argument(
        "--party-id-column",
        action="append",
        metavar="NAME=COL",
        help="id column of one party when it differs (repeatable)",
    )
    p.add_argument(
        "--party-id-kind",
        action="append",
        metavar="NAME=KIND",
        help="id kind of one party when it differs",
    )
    p.add_argument("--default-country-code", help="for phone ids written without one")
    cs = p.add_mutually_exclusive_group()
    cs.add_argument(
        "--case-sensitive",
        dest="case_sensitive",
        action="store_true",
        default=None,
        help="plain ids are case sensitive",
    )
    cs.add_argument(
        "--case-insensitive",
        dest="case_sensitive",
        action="store_false",
        help="plain ids are case insensitive",
    )
    p.add_argument("--positive-class", help="label value of the positive class (else 0/1)")
    p.add_argument(
        "--result-owner", help="party receiving scores and metrics (default: label owner)"
    )
    p.add_argument("--valid-days", type=float, default=365.0)
    p.add_argument("--not-before", help="start of validity, ISO 8601 UTC (default: now)")
    p.add_argument("--min-intersection", type=_positive, default=100)
    p.add_argument("--min-cohort", type=_positive, default=20)
    p.add_argument("--min-paillier-bits", type=_positive, default=2048)
    p.add_argument("--max-iterations", type=_positive, default=100)
    p.add_argument(
        "--param",
        action="append",
        metavar="KIND.NAME=BOUND",
        help="a parameter's signed bound: one value (segments.target-max=500), a range "
        "(segments.epsilon=0..0.5) or values (segments.noise=laplace,gaussian)",
    )
    p.add_argument("--max-set-size", type=_positive, default=10_000_000)
    p.add_argument(
        "--max-jobs", type=_positive, default=100, help="jobs over the agreement's lifetime"
    )
    p.add_argument(
        "--privacy-epsilon",
        type=float,
        help="a differential-privacy budget for noised statistics (e.g. 3.0; default: none)",
    )
    p.add_argument(
        "--privacy-delta",
        type=float,
        default=0.0,
        help="the budget's delta, for Gaussian noise (e.g. 1e-6; default 0)",
    )
    p.add_argument(
        "--models", help="comma-separated job kinds: logistic,linear,overlap (default all)"
    )
    p.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="NAME",
        help="grant an opt-in release, e.g. model-weights: each passive party gets its final "
        "weights in plain (default: none; they stay encrypted)",
    )
    p.add_argument(
        "--operations",
        help="comma-separated: train,evaluate,score,run (default all; a kind offering none of "
        "them is left out)",
    )
    p.add_argument(
        "--deny",
        action="append",
        metavar="NAME=COL",
        help="a column party NAME must never contribute (repeatable)",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="NAME=COL",
        help="restrict party NAME to listed columns (repeatable; default all)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_agreement_init)

    p = agr_sub.add_parser("sign", help="sign an agreement with a party's key")
    p.add_argument("file")
    p.add_argument("--party", required=True)
    p.add_argument("--key", required=True, help="the party's NAME.key file")
    p.add_argument("--pins", help="this signer's pin file (default: NAME.pins.toml beside the key)")
    p.add_argument(
        "--repin",
        action="append",
        default=[],
        metavar="NAME",
        help="accept a changed key for party NAME, after confirming it out of band",
    )
    p.set_defaults(func=cmd_agreement_sign)

    p = agr_sub.add_parser("verify", help="exit 0 only if fully signed and in force")
    p.add_argument("file")
    p.add_argument("--expect-hash", help="also require this terms hash")
    p.add_argument("--at", help="check validity at this ISO 8601 UTC time instead of now")
    p.set_defaults(func=cmd_agreement_verify)

    p = agr_sub.add_parser("show", help="print the terms and who has signed")
    p.add_argument("file")
    p.set_defaults(func=cmd_agreement_show)

    aud = subparsers.add_parser("audit", help="verify audit trails")
    aud_sub = aud.add_subparsers(dest="audit_command", metavar="ACTION")
    aud_sub.required = True
    p = aud_sub.add_parser(
        "verify",
        help="exit 0 only if every audit log under the paths is intact and agrees "
        "with every head held of it",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="work directories, .jsonl logs or .certificates files (together), or one bundle",
    )
    p.add_argument(
        "--agreement", help="your signed copy: writers' keys and the agreement hash are checked"
    )
    p.add_argument("--expect-hash", help="for a bundle: the agreement's terms hash instead")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also fail on entries no close certificate or other log vouches for (a job that "
        "did not close normally)",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = aud_sub.add_parser(
        "export", help="one bundle: the agreement and every log of it under the sources"
    )
    p.add_argument(
        "sources", nargs="+", help="work directories or .jsonl logs (certificates beside them)"
    )
    p.add_argument("--agreement", required=True, help="the signed agreement")
    p.add_argument("--out", required=True, help="the bundle to write (.tar.gz)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_audit_export)

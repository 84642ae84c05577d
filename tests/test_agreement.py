"""Signed agreements: terms, canonical form, signatures, validity, and the policy checks."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w

from vfm_flower.agreement import (
    Agreement,
    JobTerms,
    ParamRange,
    SignedAgreement,
    init_agreement,
)
from vfm_flower.errors import ConfigurationError, KeyFileError, PolicyViolation
from vfm_flower.jobs import Job
from vfm_flower.jobs_builtin import LINEAR, LOGISTIC
from vfm_flower.keys import PartyIdentity
from vfm_flower.policy import (
    check_features,
    check_identity,
    check_job,
    check_min_cohort,
    check_min_intersection,
    check_party_presence,
    check_same_agreement,
    check_set_size,
)

NAMES = ("insurer", "bank", "broker")
START = datetime(2025, 1, 1, tzinfo=UTC)
NOW = START + timedelta(days=10)


@pytest.fixture(scope="module")
def ids() -> dict[str, PartyIdentity]:
    return {n: PartyIdentity.generate(n) for n in NAMES}


OPERATOR = PartyIdentity.generate("ops")


def draft(ids: dict[str, PartyIdentity], **kw) -> Agreement:
    args = dict(
        purpose="Caravan insurance propensity",
        label_owner="insurer",
        label_column="Purchase",
        id_column="email",
        id_kind="email",
        parties={n: i.public for n, i in ids.items()},
        operator=OPERATOR.public,
        not_before=START,
        denied_features={"bank": ["AGE"]},
        allowed_features={"broker": ["MOSTYPE", "MAANTHUI"]},
    )
    args.update(kw)
    return init_agreement(**args)


def sign_all(agreement: Agreement, ids: dict[str, PartyIdentity]) -> SignedAgreement:
    signed = SignedAgreement(agreement, {})
    for ident in (*ids.values(), OPERATOR):
        signed = signed.with_signature(ident)
    return signed


@pytest.fixture
def signed(ids) -> SignedAgreement:
    return sign_all(draft(ids), ids)


def job(operation="train", model="logistic", **kw) -> Job:
    """A bound job; parameter keywords use Python names (``paillier_bits``)."""
    kind = {"logistic": LOGISTIC, "linear": LINEAR}.get(model)
    params = {k.replace("_", "-"): v for k, v in kw.items() if k not in _JOB_FIELDS}
    fields = {k: v for k, v in kw.items() if k in _JOB_FIELDS}
    if kind is None:
        return Job(kind=model, operation=operation, params=params, **fields)
    bound = kind.bind(kind.operations[0], {})
    return Job(kind=model, operation=operation, params={**bound.params, **params}, **fields)


_JOB_FIELDS = ("features", "min_intersection")


def draft_jobs() -> tuple[JobTerms, ...]:
    return (JobTerms.default_for(LINEAR),)


def rule_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.rule


# ---------------------------------------------------------------------------- terms


def test_init_defaults(ids):
    def defaults():
        return init_agreement(
            "p",
            "insurer",
            "Purchase",
            "email",
            "email",
            {n: i.public for n, i in ids.items()},
            operator=OPERATOR.public,
        )

    a = defaults()
    assert len(a.agreement_id) == 32 and int(a.agreement_id, 16) >= 0
    assert a.not_after - a.not_before == timedelta(days=365)
    assert abs(a.not_before - datetime.now(UTC)) < timedelta(minutes=1)
    assert a.result_owner == "insurer"
    assert a.positive_class is None
    assert (a.min_intersection, a.min_cohort, a.min_paillier_bits) == (100, 20, 2048)
    assert a.job_kinds == ("linear", "logistic", "overlap", "secureboost", "segments")
    assert a.job_terms("logistic").params["max-iterations"] == ParamRange(1, 100)
    assert a.job_terms("logistic").operations == ("evaluate", "score", "train")
    assert a.party_names == ("bank", "broker", "insurer")
    assert a.passive_parties == ("bank", "broker")
    assert all(p.allowed_features is None and p.max_set_size == 10_000_000 for p in a.parties)
    assert a.party("bank").public_identity == ids["bank"].public
    assert defaults().agreement_id != a.agreement_id


def test_unknown_party_lookup(ids):
    a = draft(ids)
    with pytest.raises(PolicyViolation) as e:
        a.party("mallory")
    assert rule_of(e) == "parties" and "mallory" in str(e.value)


def test_feature_allowed(ids):
    a = draft(ids)
    assert a.feature_allowed("bank", "PPERSAUT")
    assert not a.feature_allowed("bank", "AGE")  # denied
    assert not a.feature_allowed("bank", "email")  # id column
    assert not a.feature_allowed("insurer", "Purchase")  # label
    assert a.feature_allowed("broker", "MOSTYPE")
    assert not a.feature_allowed("broker", "PPERSAUT")  # not in the allowed list


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "something else"},
        {"min_intersection": 99},
        {"min_cohort": 21},
        {"min_paillier_bits": 3072},
        {"jobs": (JobTerms.default_for(LOGISTIC),)},
        {"jobs": (JobTerms.default_for(LOGISTIC, params={"l2": 0.1}), *draft_jobs())},
        {"positive_class": "yes"},
        {"result_owner": "bank"},
        {"not_after": START + timedelta(days=366)},
        {"agreement_id": "0" * 32},
    ],
)
def test_any_term_change_changes_hash(ids, change):
    a = draft(ids)
    assert dataclasses.replace(a, **change).terms_hash() != a.terms_hash()


def test_party_term_change_changes_hash(ids):
    a = draft(ids)
    bank = a.party("bank")
    for change in (
        {"denied_features": ()},
        {"max_set_size": 5},
        {"id_columns": ("email", "zip")},
        {"id_kind": "plain"},
        {"allowed_features": ("X",)},
        {"case_sensitive": True},
    ):
        parties = tuple(dataclasses.replace(p, **change) if p is bank else p for p in a.parties)
        assert dataclasses.replace(a, parties=parties).terms_hash() != a.terms_hash()


def test_order_of_parties_and_sets_does_not_matter(ids):
    a = draft(ids)
    b = dataclasses.replace(
        a,
        parties=tuple(reversed(a.parties)),
        jobs=tuple(reversed(a.jobs)),
    )
    assert b == a and b.canonical_bytes() == a.canonical_bytes()


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"label_owner": "mallory"}, "label owner"),
        ({"min_paillier_bits": 1024}, "min-paillier-bits"),
        ({"min_intersection": 0}, "min-intersection"),
        ({"id_kind": "mail"}, "id-kind"),
        ({"result_owner": "mallory"}, "result-owner"),
        ({"allowed_models": ("tree",)}, "jobs.models"),
        ({"allowed_operations": ("export",)}, "jobs.operations"),
        ({"valid_days": 0}, "valid days"),
        ({"allowed_features": {"insurer": ["Purchase"]}}, "label column"),
        ({"denied_features": {"bank": ["X"]}, "allowed_features": {"bank": ["X"]}}, "both"),
    ],
)
def test_init_refuses_bad_terms(ids, kw, needle):
    with pytest.raises(ConfigurationError, match=needle):
        draft(ids, **kw)


def test_init_refuses_single_party_and_shared_keys(ids):
    with pytest.raises(ConfigurationError, match="at least two"):
        draft(
            ids,
            parties={"insurer": ids["insurer"].public},
            denied_features=None,
            allowed_features=None,
        )
    twin = dataclasses.replace(ids["insurer"].public, party="bank")
    with pytest.raises(ConfigurationError, match="same public key"):
        draft(ids, parties={"insurer": ids["insurer"].public, "bank": twin}, allowed_features=None)
    with pytest.raises(ConfigurationError, match="belongs to party"):
        draft(
            ids,
            parties={"insurer": ids["insurer"].public, "bank": ids["broker"].public},
            allowed_features=None,
        )


# ---------------------------------------------------------------------------- files


def test_save_load_roundtrip(tmp_path: Path, signed):
    path = signed.save(tmp_path / "agreement.toml")
    loaded = SignedAgreement.load(path)
    assert loaded.agreement == signed.agreement
    assert dict(loaded.signatures) == dict(signed.signatures)
    loaded.verify(NOW)
    assert loaded.signed_by() == ["bank", "broker", "insurer", "ops"]
    assert [p.name for p in tmp_path.iterdir()] == ["agreement.toml"]  # no temp file left
    data = tomllib.loads(path.read_text())
    assert data["parties"]["insurer"]["allowed-features"] == "*"
    assert set(data["signatures"]) == {*NAMES, "ops"}


def test_reformatted_toml_keeps_signatures(tmp_path: Path, signed):
    data = tomllib.loads(signed.to_toml())

    # reverse the order of every table and key, use TOML datetimes instead of strings
    def rev(obj):
        if isinstance(obj, dict):
            return {k: rev(v) for k, v in reversed(list(obj.items()))}
        return obj

    data = rev(data)
    data["not-before"] = signed.agreement.not_before
    data["not-after"] = signed.agreement.not_after
    # a lone string id column instead of a one-element list
    data["parties"]["bank"]["id-columns"] = "email"
    text = "# reformatted by hand\n\n" + tomli_w.dumps(data).replace(" = ", "   =   ")
    text = text.replace("[limits]", "\n\n# limits below\n[limits]  # comment")
    path = tmp_path / "reformatted.toml"
    path.write_text(text)
    loaded = SignedAgreement.load(path)
    assert loaded.terms_hash() == signed.terms_hash()
    loaded.verify(NOW)


def test_tampered_terms_break_every_signature(tmp_path: Path, signed):
    path = signed.save(tmp_path / "a.toml")
    text = path.read_text().replace("min-intersection = 100", "min-intersection = 5")
    path.write_text(text)
    loaded = SignedAgreement.load(path)
    with pytest.raises(PolicyViolation) as e:
        loaded.verify(NOW)
    assert rule_of(e) == "signatures"
    assert "bank, broker, insurer" in str(e.value) and "does not verify" in str(e.value)
    assert loaded.signed_by() == []


def test_missing_signature_is_named(ids):
    signed = SignedAgreement(draft(ids), {}).with_signature(ids["insurer"])
    assert signed.missing_signatures() == ["bank", "broker", "ops"]
    with pytest.raises(PolicyViolation) as e:
        signed.verify(NOW)
    assert rule_of(e) == "signatures" and "missing signature of bank, broker, ops" in str(e.value)


def test_wrong_key_signature_is_named(ids, signed):
    impostor = PartyIdentity.generate("bank")
    sigs = dict(signed.signatures)
    sigs["bank"] = impostor.sign(signed.agreement.canonical_bytes())
    forged = SignedAgreement(signed.agreement, sigs)
    with pytest.raises(PolicyViolation) as e:
        forged.verify(NOW)
    assert rule_of(e) == "signatures"
    assert "signature of bank does not verify" in str(e.value)
    assert forged.invalid_signatures() == ["bank"]
    sigs["bank"] = b"short"
    with pytest.raises(PolicyViolation, match="bank"):
        SignedAgreement(signed.agreement, sigs).verify(NOW)


def test_sign_with_another_partys_key_refused(ids):
    unsigned = SignedAgreement(draft(ids), {})
    impostor = PartyIdentity.generate("bank")
    with pytest.raises(KeyFileError, match="key is not bank's"):
        unsigned.with_signature(impostor)
    with pytest.raises(KeyFileError, match="does not sign this agreement"):
        unsigned.with_signature(PartyIdentity.generate("mallory"))
    with pytest.raises(KeyFileError, match="key is not ops's"):
        unsigned.with_signature(PartyIdentity.generate("ops"))  # another key as the operator


def test_validity_window(signed):
    a = signed.agreement
    with pytest.raises(PolicyViolation) as e:
        signed.verify(a.not_before - timedelta(seconds=1))
    assert rule_of(e) == "validity" and "not yet valid" in str(e.value)
    with pytest.raises(PolicyViolation) as e:
        signed.verify(a.not_after)
    assert rule_of(e) == "validity" and "expired" in str(e.value)
    assert "2026-01-01T00:00:00Z" in str(e.value)
    signed.verify(a.not_before)


def test_signed_agreement_is_immutable(signed):
    with pytest.raises(TypeError):
        signed.signatures["bank"] = b"x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        signed.agreement.purpose = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.pop("purpose"), "missing field purpose"),
        (lambda d: d["parties"]["bank"].pop("signing-key"), "parties.bank.signing-key"),
        (lambda d: d["parties"]["bank"].update({"id-kind": "fax"}), "parties.bank.id-kind"),
        (lambda d: d["parties"]["bank"].update({"role": "label_owner"}), "exactly one party"),
        (lambda d: d["label"].update({"owner": "bank"}), "label.owner"),
        (lambda d: d["label"].update({"result-owner": "x"}), "label.result-owner"),
        (lambda d: d["limits"].update({"min-cohort": -1}), "limits.min-cohort"),
        (lambda d: d["limits"].update({"min-paillier-bits": 1024}), "min-paillier-bits"),
        (lambda d: d["jobs"]["logistic"].update({"models": ["tree"]}), "jobs.logistic"),
        (lambda d: d["jobs"]["logistic"]["params"].update({"l2": {}}), "jobs.logistic.params.l2"),
        (lambda d: d["jobs"]["logistic"]["params"].update({"l2": {"min": 1, "max": 0}}), "empty"),
        (lambda d: d["jobs"]["logistic"]["params"].update({"l2": {"low": 1}}), "min = LOW"),
        (lambda d: d["jobs"]["logistic"]["release"].update({"x": []}), "unknown audience"),
        (lambda d: d.update({"jobs": {}}), "at least one job kind"),
        (lambda d: d.update({"not-after": d["not-before"]}), "must be earlier"),
        (lambda d: d.update({"not-after": "2026-01-01T00:00:00"}), "time zone"),
        (lambda d: d["limits"].update({"min-intersecton": 5}), "unknown field"),
        (lambda d: d["signatures"].update({"mallory": "AAAA"}), "signatures.mallory"),
        (lambda d: d["signatures"].update({"bank": "not base64!"}), "signatures.bank"),
        (lambda d: d.update({"format": "other/9"}), "format"),
    ],
)
def test_load_names_file_and_field(tmp_path: Path, signed, edit, needle):
    data = tomllib.loads(signed.to_toml())
    edit(data)
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigurationError) as e:
        SignedAgreement.load(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_load_unreadable(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="cannot read"):
        SignedAgreement.load(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("this is = = not toml")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        SignedAgreement.load(tmp_path / "x.toml")


# ---------------------------------------------------------------------------- policy checks


def test_job_roundtrip():
    j = job(features={"bank": ["PPERSAUT", "PBRAND"]}, min_intersection=500)
    assert Job.from_dict(j.to_dict()) == j
    assert Job.from_json(j.to_json()) == j and Job.from_json(j.to_json()).digest() == j.digest()
    assert j.features["bank"] == ("PPERSAUT", "PBRAND")
    assert Job.from_dict(job().to_dict()).features is None
    with pytest.raises(ConfigurationError, match="missing field kind"):
        Job.from_dict({"operation": "train"})
    with pytest.raises(ConfigurationError, match="paillier-bits"):
        Job.from_dict({**j.to_dict(), "params": {"paillier-bits": [2048]}})
    with pytest.raises(ConfigurationError, match="features"):
        Job.from_dict({**j.to_dict(), "features": {"bank": "PPERSAUT"}})


def test_check_job_ok(signed):
    check_job(signed, job(features={"bank": ["PPERSAUT"], "broker": ["MOSTYPE"]}), now=NOW)
    check_job(signed, job(operation="score", model="linear", min_intersection=100), now=NOW)


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (job(operation="export"), "operation"),
        (job(model="tree"), "job_kind"),
        (job(paillier_bits=1024), "paillier_bits"),
        (job(max_iterations=101), "params"),
        (job(max_iterations=0), "params"),
        (job(holdout_fraction=0.05), "params"),
        (job(l2=100.0), "params"),
        (job(undeclared=1), "params"),
        (job(features={"bank": ["AGE"]}), "features"),
        (job(features={"broker": ["PPERSAUT"]}), "features"),
        (job(features={"insurer": ["Purchase"]}), "features"),
        (job(features={"bank": ["email"]}), "features"),
        (job(features={"mallory": ["X"]}), "parties"),
        (job(min_intersection=10), "min_intersection"),
    ],
)
def test_check_job_refusals(signed, request_, rule):
    with pytest.raises(PolicyViolation) as e:
        check_job(signed, request_, now=NOW)
    assert rule_of(e) == rule


def test_check_job_restricted_agreement(ids):
    signed = sign_all(
        draft(
            ids, allowed_models=("linear",), allowed_operations=("train",), min_paillier_bits=3072
        ),
        ids,
    )
    for bad, rule in (
        (job(model="logistic", paillier_bits=3072), "job_kind"),
        (job(model="linear", operation="score", paillier_bits=3072), "operation"),
        (job(model="linear", paillier_bits=2048), "paillier_bits"),
    ):
        with pytest.raises(PolicyViolation) as e:
            check_job(signed, bad, now=NOW)
        assert rule_of(e) == rule
        assert "3072" in str(e.value) or rule != "paillier_bits"
    check_job(signed, job(model="linear", paillier_bits=3072), now=NOW)


def test_check_job_checks_signatures_and_validity(ids, signed):
    unsigned = SignedAgreement(draft(ids), {})
    with pytest.raises(PolicyViolation) as e:
        check_job(unsigned, job(), now=NOW)
    assert rule_of(e) == "signatures"
    with pytest.raises(PolicyViolation) as e:
        check_job(signed, job(), now=signed.agreement.not_after + timedelta(days=1))
    assert rule_of(e) == "validity"


def test_denied_feature_message(signed):
    with pytest.raises(PolicyViolation) as e:
        check_features(signed.agreement, "bank", ["PPERSAUT", "AGE"])
    assert "AGE (denied)" in str(e.value) and "PPERSAUT" not in str(e.value)


def test_check_sizes(ids, signed):
    a = signed.agreement
    check_min_intersection(100, a.min_intersection)
    with pytest.raises(PolicyViolation) as e:
        check_min_intersection(99, a.min_intersection)
    # the gate's message reveals the minimum, never the count
    assert rule_of(e) == "min_intersection" and "99" not in str(e.value)
    check_min_cohort(a.min_cohort, 20, "lift bucket 1")
    with pytest.raises(PolicyViolation) as e:
        check_min_cohort(a.min_cohort, 19, "lift bucket 1")
    assert rule_of(e) == "min_cohort" and "lift bucket 1" in str(e.value)
    small = sign_all(draft(ids, max_set_size={"bank": 1000}), ids).agreement
    check_set_size(1000, small.party("bank").max_set_size, "bank")
    with pytest.raises(PolicyViolation) as e:
        check_set_size(1001, small.party("bank").max_set_size, "bank")
    assert rule_of(e) == "max_set_size" and "bank" in str(e.value)
    check_set_size(10_000_000, small.party("broker").max_set_size, "broker")


def test_check_party_presence(signed):
    a = signed.agreement
    check_party_presence(a, ["broker", "insurer", "bank"])
    with pytest.raises(PolicyViolation) as e:
        check_party_presence(a, ["insurer", "bank"])
    assert rule_of(e) == "parties" and "missing: broker" in str(e.value)
    with pytest.raises(PolicyViolation) as e:
        check_party_presence(a, ["insurer", "bank", "broker", "mallory"])
    assert "mallory" in str(e.value)
    with pytest.raises(PolicyViolation, match="more than once: bank"):
        check_party_presence(a, ["insurer", "bank", "bank", "broker"])


def test_check_same_agreement(signed):
    h = signed.terms_hash()
    check_same_agreement(h, {"insurer": h, "bank": h, "broker": h})
    with pytest.raises(PolicyViolation) as e:
        check_same_agreement(h, {"insurer": h, "bank": "f" * 64, "broker": h})
    assert rule_of(e) == "agreement_hash" and "bank" in str(e.value)
    assert "insurer" not in str(e.value).split("hold")[0]


def test_check_identity(ids, signed):
    check_identity(signed.agreement, ids["bank"].public)
    with pytest.raises(PolicyViolation) as e:
        check_identity(signed.agreement, PartyIdentity.generate("bank").public)
    assert rule_of(e) == "identity"


def test_a_list_bound_is_a_set_of_values_never_a_range():
    from vfm_flower.policy import bound_allows

    assert bound_allows((7, 42), 7) and bound_allows((7, 42), 42)
    assert not bound_allows((7, 42), 23)
    assert bound_allows(ParamRange(7, 42), 23) and not bound_allows(ParamRange(7, 42), 43)
    assert not bound_allows(ParamRange(0, 1), True)  # a bool is never a number
    assert bound_allows("*", "anything") and bound_allows(3, 3.0) and not bound_allows(3, 4)

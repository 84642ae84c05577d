"""The governance CLI, in-process: keygen, agreement init/sign/verify/show, audit verify."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vfm_flower.audit import AuditLog
from vfm_flower.cli import main
from vfm_flower.keys import PartyIdentity

NAMES = ("insurer", "bank", "broker")
OPERATOR = "ops"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    for name in (*NAMES, OPERATOR):
        assert main(["keygen", "--party", name, "--out", str(out)]) == 0
    return out


def init_args(path: Path, keys: Path, *extra: str) -> list[str]:
    args = [
        "agreement", "init", "--out", str(path),
        "--purpose", "Caravan insurance propensity",
        "--label-owner", "insurer", "--label-column", "Purchase",
        "--id-column", "email", "--id-kind", "email",
        "--min-intersection", "200",
    ]  # fmt: skip
    for name in NAMES:
        args += ["--party", f"{name}={keys / (name + '.pub')}"]
    args += ["--operator", f"{OPERATOR}={keys / (OPERATOR + '.pub')}"]
    return args + list(extra)


@pytest.fixture
def agreement(tmp_path: Path, keys: Path, capsys) -> Path:
    path = tmp_path / "agreement.toml"
    assert main(init_args(path, keys, "--deny", "bank=AGE", "--positive-class", "1")) == 0
    capsys.readouterr()
    return path


def sign(path: Path, keys: Path, name: str, key_name: str | None = None) -> int:
    key = keys / f"{key_name or name}.key"
    return main(["agreement", "sign", str(path), "--party", name, "--key", str(key)])


def test_keygen(tmp_path: Path, capsys):
    out = tmp_path / "k"
    assert main(["keygen", "--party", "bank", "--out", str(out)]) == 0
    assert stat.S_IMODE((out / "bank.key").stat().st_mode) == 0o600
    assert (out / "bank.pub").read_text().startswith('party = "bank"')
    assert "fingerprint" in capsys.readouterr().out
    before = (out / "bank.key").read_bytes()
    assert main(["keygen", "--party", "bank", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "bank.key").read_bytes() == before
    assert main(["keygen", "--party", "bad name!", "--out", str(out)]) == 2


def test_init_writes_unsigned_agreement(agreement: Path, keys: Path, capsys):
    text = agreement.read_text()
    assert 'allowed-features = "*"' in text and "min-intersection = 200" in text
    assert "[signatures]" not in text
    # refuses to overwrite unless --force
    assert main(init_args(agreement, keys)) == 2
    assert "--force" in capsys.readouterr().err
    assert agreement.read_text() == text
    assert main(init_args(agreement, keys, "--force")) == 0
    assert agreement.read_text() != text


def test_init_refusals(tmp_path: Path, keys: Path, capsys):
    out = tmp_path / "a.toml"
    args = init_args(out, keys)
    owner = args.index("--label-owner") + 1
    args[owner] = "mallory"
    assert main(args) == 2
    assert "must be one of the --party names" in capsys.readouterr().err
    args = init_args(out, keys)
    bank = args.index(f"bank={keys / 'bank.pub'}")
    args[bank] = f"bank={keys / 'broker.pub'}"
    assert main(args) == 2
    assert "belongs to party 'broker'" in capsys.readouterr().err
    assert main(init_args(out, keys, "--min-paillier-bits", "1024")) == 2
    assert "min-paillier-bits" in capsys.readouterr().err
    assert not out.exists()


def test_sign_and_verify(agreement: Path, keys: Path, capsys):
    assert main(["agreement", "verify", str(agreement)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing signature of bank, broker, insurer, ops" in err
    assert sign(agreement, keys, "insurer") == 0
    assert "still missing: bank, broker, ops" in capsys.readouterr().out
    assert sign(agreement, keys, "bank") == 0
    assert sign(agreement, keys, "broker") == 0
    assert main(["agreement", "verify", str(agreement)]) == 1
    assert "missing signature of ops" in capsys.readouterr().err  # the operator signs too
    assert sign(agreement, keys, OPERATOR) == 0
    capsys.readouterr()
    assert main(["agreement", "verify", str(agreement)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:") and "bank, broker, insurer, ops" in out
    assert "[signatures]" in agreement.read_text()
    assert not list(agreement.parent.glob(".agreement.toml.*"))  # no temp file left


def test_sign_with_another_partys_key_refused(agreement: Path, keys: Path, tmp_path, capsys):
    before = agreement.read_text()
    assert sign(agreement, keys, "bank", key_name="insurer") == 2
    assert "belongs to party 'insurer', not 'bank'" in capsys.readouterr().err
    # a key file relabelled as the bank's still carries the insurer's key
    forged = tmp_path / "forged.key"
    forged.write_text((keys / "insurer.key").read_text().replace('"insurer"', '"bank"'))
    assert main(["agreement", "sign", str(agreement), "--party", "bank", "--key", str(forged)]) == 2
    assert "key is not bank's" in capsys.readouterr().err
    assert sign(agreement, keys, "mallory", key_name="bank") == 2
    assert "mallory" in capsys.readouterr().err
    assert agreement.read_text() == before


def test_verify_detects_tampering(agreement: Path, keys: Path, capsys):
    for name in (*NAMES, OPERATOR):
        assert sign(agreement, keys, name) == 0
    text = agreement.read_text()
    agreement.write_text(text.replace("min-intersection = 200", "min-intersection = 2"))
    capsys.readouterr()
    assert main(["agreement", "verify", str(agreement)]) == 1
    err = capsys.readouterr().err
    assert "[signatures]" in err and "does not verify" in err and err.count("\n") == 1
    # reformatting only: still valid
    agreement.write_text("# a comment\n" + text.replace(" = ", "  =  ") + "\n\n")
    assert main(["agreement", "verify", str(agreement)]) == 0


def _signed_in_the_past(path: Path, keys: Path) -> None:
    """An agreement signed while it was in force (2020), written by the library."""
    from datetime import UTC, datetime

    from vfm_flower.agreement import SignedAgreement, init_agreement

    identities = {n: PartyIdentity.load(keys / f"{n}.key", expected_party=n) for n in NAMES}
    operator = PartyIdentity.load(keys / f"{OPERATOR}.key")
    agreement = init_agreement(
        purpose="Caravan insurance propensity",
        label_owner="insurer",
        label_column="Purchase",
        id_column="email",
        id_kind="email",
        parties={n: i.public for n, i in identities.items()},
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        valid_days=30,
        operator=operator.public,
    )
    signed = SignedAgreement(agreement, {})
    for identity in (*identities.values(), operator):
        signed = signed.with_signature(identity)
    signed.save(path)


def test_an_ended_agreement_is_neither_drafted_nor_signed(tmp_path: Path, keys: Path, capsys):
    path = tmp_path / "old.toml"
    args = init_args(path, keys, "--not-before", "2020-01-01T00:00:00Z", "--valid-days", "30")
    assert main(args) == 2
    assert "[validity]" in capsys.readouterr().err and not path.exists()
    _signed_in_the_past(path, keys)
    before = path.read_bytes()
    assert sign(path, keys, "bank") == 2
    assert "ended on 2020-01-31T00:00:00Z" in capsys.readouterr().err
    assert path.read_bytes() == before
    soon = tmp_path / "soon.toml"
    assert main(init_args(soon, keys, "--valid-days", "3")) == 0
    assert "warning:" in capsys.readouterr().err and soon.exists()
    assert sign(soon, keys, "bank") == 0
    assert "ends on" in capsys.readouterr().err


def test_verify_expired_and_not_yet_valid(tmp_path: Path, keys: Path, capsys):
    path = tmp_path / "old.toml"
    _signed_in_the_past(path, keys)
    capsys.readouterr()
    assert main(["agreement", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "[validity]" in err and "expired on 2020-01-31T00:00:00Z" in err
    assert main(["agreement", "verify", str(path), "--at", "2019-12-31T00:00:00Z"]) == 1
    assert "not yet valid" in capsys.readouterr().err
    assert main(["agreement", "verify", str(path), "--at", "2020-01-15T00:00:00Z"]) == 0


def test_verify_unreadable_and_expected_hash(tmp_path: Path, agreement: Path, keys, capsys):
    assert main(["agreement", "verify", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    for name in NAMES:
        sign(agreement, keys, name)
    capsys.readouterr()
    assert main(["agreement", "verify", str(agreement), "--expect-hash", "0" * 64]) == 1
    assert "agreement_hash" in capsys.readouterr().err


def test_show(agreement: Path, keys: Path, capsys):
    assert sign(agreement, keys, "bank") == 0
    capsys.readouterr()
    assert main(["agreement", "show", str(agreement)]) == 0
    out = capsys.readouterr().out
    assert "Caravan insurance propensity" in out
    assert "bank (passive) - signed" in out
    assert "insurer (label_owner) - NOT SIGNED" in out
    assert "AGE" in out and "min intersection  200" in out
    assert "Status: NOT valid" in out


def test_show_explains_terms_labels_and_fingerprints(agreement: Path, keys: Path, capsys):
    from vfm_flower.pins import format_fingerprint

    assert main(["agreement", "show", str(agreement)]) == 0
    out = capsys.readouterr().out
    assert "linear            insurer.Purchase: numeric target" in out
    assert "logistic          insurer.Purchase: binary label (positive class '1')" in out
    assert "(alignment aborts, revealing nothing, below this many joint customers)" in out
    bank = PartyIdentity.load(keys / "bank.key").public.fingerprint
    assert len(bank) == 32 and format_fingerprint(bank) in out
    assert "confirm every key fingerprint with its owner out of band" in out
    assert "Operator (runs the server; holds no data)\n  ops - NOT SIGNED" in out


def test_sign_pins_keys_and_refuses_a_substituted_one(tmp_path: Path, keys: Path, capsys):
    first = tmp_path / "first.toml"
    assert main(init_args(first, keys)) == 0
    capsys.readouterr()
    assert sign(first, keys, "insurer") == 0
    out = capsys.readouterr().out
    assert "NEW: confirm before signing" in out and "pinned bank, broker, insurer" in out
    pins = keys / "insurer.pins.toml"
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    pinned = pins.read_text()
    # whoever circulates the next agreement lists its own key under "bank"
    forged = tmp_path / "forged"
    assert main(["keygen", "--party", "bank", "--out", str(forged)]) == 0
    second = tmp_path / "second.toml"
    args = init_args(second, keys)
    args[args.index(f"bank={keys / 'bank.pub'}")] = f"bank={forged / 'bank.pub'}"
    assert main(args) == 0
    before = second.read_bytes()
    capsys.readouterr()
    assert sign(second, keys, "insurer") == 2
    err = capsys.readouterr().err
    assert "[key_pin]" in err and "'bank'" in err and "--repin bank" in err
    assert second.read_bytes() == before and pins.read_text() == pinned
    # after confirming the new key with the bank by phone, the insurer accepts it
    key = keys / "insurer.key"
    repin = ["agreement", "sign", str(second), "--party", "insurer", "--key", str(key)]
    assert main([*repin, "--repin", "bank"]) == 0
    assert pins.read_text() != pinned
    assert main([*repin, "--repin", "nobody"]) == 2
    # the first agreement now lists a key this signer no longer pins
    capsys.readouterr()
    assert sign(first, keys, "insurer") == 2
    assert "[key_pin]" in capsys.readouterr().err


def _work_dir(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    bank = PartyIdentity.generate("bank")
    server = PartyIdentity.generate("server")
    bank_log = AuditLog.open(work / "bank" / "audit.jsonl", bank, "a" * 64)
    bank_log.record("hello", 1, "ok", sizes={"rows": 10})
    bank_log.seal()
    seq, head = bank_log.head()
    server_log = AuditLog.open(work / "server" / "audit.jsonl", server, "a" * 64)
    server_log.attest_peer_head(bank_log.signed_head(), peer_public=bank.public)
    server_log.seal()
    return work, work / "bank" / "audit.jsonl"


def test_audit_verify(tmp_path: Path, capsys):
    work, bank_log = _work_dir(tmp_path)
    assert main(["audit", "verify", str(work)]) == 0
    assert capsys.readouterr().out.count("ok ") == 2
    assert main(["audit", "verify", str(bank_log)]) == 0
    capsys.readouterr()
    lines = bank_log.read_text().splitlines(keepends=True)
    bank_log.write_text("".join(lines[:-1]))  # drop the seal
    assert main(["audit", "verify", str(work)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {bank_log}: line 3: rolled back or truncated: the log ends at entry 1" in err
    assert main(["audit", "verify", str(bank_log)]) == 1
    assert "line 3: truncated: no closing entry" in capsys.readouterr().err
    bank_log.write_text(lines[0] + lines[1].replace('"rows":10', '"rows":11') + lines[2])
    assert main(["audit", "verify", str(work)]) == 1
    assert "line 2: hash mismatch" in capsys.readouterr().err


def test_audit_verify_nothing_to_verify(tmp_path: Path, capsys):
    assert main(["audit", "verify", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path)]) == 1
    assert "no audit log" in capsys.readouterr().err


def test_audit_verify_against_agreement(tmp_path: Path, agreement: Path, keys: Path, capsys):
    from vfm_flower.agreement import SignedAgreement

    terms_hash = SignedAgreement.load(agreement).terms_hash()
    work = tmp_path / "work"
    bank = PartyIdentity.load(keys / "bank.key")
    log = AuditLog.open(work / "bank.jsonl", bank, terms_hash)
    log.seal()
    assert main(["audit", "verify", str(work), "--agreement", str(agreement)]) == 0
    impostor = PartyIdentity.generate("bank")
    AuditLog.open(work / "other.jsonl", impostor, terms_hash).seal()
    capsys.readouterr()
    assert main(["audit", "verify", str(work), "--agreement", str(agreement)]) == 1
    assert "another key than bank's" in capsys.readouterr().err


def test_init_options(tmp_path: Path, keys: Path, capsys):
    from vfm_flower.agreement import SignedAgreement

    path = tmp_path / "opts.toml"
    extra = [
        "--allow", "broker=MOSTYPE", "--allow", "broker=MAANTHUI", "--deny", "bank=AGE",
        "--models", "logistic", "--operations", "train,score", "--result-owner", "bank",
        "--min-cohort", "50", "--min-paillier-bits", "3072", "--max-iterations", "40",
        "--max-set-size", "50000", "--party-id-column", "bank=customer_id",
        "--party-id-kind", "bank=plain", "--case-insensitive", "--valid-days", "30",
    ]  # fmt: skip
    assert main(init_args(path, keys, *extra)) == 0
    a = SignedAgreement.load(path).agreement
    assert a.party("broker").allowed_features == ("MAANTHUI", "MOSTYPE")
    assert a.party("bank").denied_features == ("AGE",)
    assert a.party("bank").id_columns == ("customer_id",) and a.party("bank").id_kind == "plain"
    assert a.party("insurer").id_columns == ("email",)
    assert a.party("bank").case_sensitive is False
    assert (a.job_kinds, a.job_terms("logistic").operations, a.result_owner) == (
        ("logistic",),
        ("score", "train"),
        "bank",
    )
    assert (a.min_cohort, a.min_paillier_bits) == (50, 3072)
    assert str(a.job_terms("logistic").params["max-iterations"]) == "1..40"
    assert a.party("bank").max_set_size == 50000
    assert (a.not_after - a.not_before).days == 30
    capsys.readouterr()
    assert main(["agreement", "show", str(path)]) == 0
    assert "features        MAANTHUI, MOSTYPE" in capsys.readouterr().out


def test_init_grants_an_opt_in_release_only_when_asked(tmp_path: Path, keys: Path, capsys):
    from vfm_flower.agreement import SignedAgreement

    plain = tmp_path / "plain.toml"
    assert main(init_args(plain, keys)) == 0
    terms = SignedAgreement.load(plain).agreement.job_terms("logistic")
    assert "model-weights" not in terms.release["party"]  # encrypted by default
    granted = tmp_path / "granted.toml"
    assert main(init_args(granted, keys, "--release", "model-weights")) == 0
    a = SignedAgreement.load(granted).agreement
    for kind in ("logistic", "linear"):
        assert "model-weights" in a.job_terms(kind).release["party"]
    capsys.readouterr()
    assert main(["agreement", "show", str(granted)]) == 0
    assert "model-weights" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    assert main(init_args(bad, keys, "--release", "labels")) == 2
    assert "no job kind offers labels" in capsys.readouterr().err
    assert not bad.exists()


def test_pins_catch_a_renamed_party_and_refuse_a_foreign_pin_file(tmp_path: Path):
    from vfm_flower.errors import ConfigurationError, PolicyViolation
    from vfm_flower.pins import KeyPins

    pins = KeyPins(tmp_path / "p.toml", {"bank": "a" * 32, "broker": "b" * 32})
    with pytest.raises(PolicyViolation, match=r"\[key_pin\].*'Bank'.*differs only in case"):
        pins.check({"Bank": "c" * 32, "broker": "b" * 32})
    with pytest.raises(PolicyViolation, match=r"\[key_pin\].*pinned for 'bank'.*'bank-eu'"):
        pins.check({"bank-eu": "a" * 32})
    assert pins.check({"Bank": "c" * 32}, repin=["Bank"]) == ["Bank"]
    assert pins.check({"bank": "a" * 32, "insurer": "d" * 32}) == ["insurer"]
    pins.save()
    assert KeyPins.load(pins.path).pins == pins.pins
    pins.path.write_text('[other]\nbank = "x"\n')
    with pytest.raises(ConfigurationError, match=r"exactly a \[pins\] table"):
        KeyPins.load(pins.path)


def test_init_sets_parameter_bounds_and_a_privacy_budget(tmp_path: Path, keys: Path, capsys):
    from vfm_flower.agreement import ParamRange, SignedAgreement

    path = tmp_path / "budget.toml"
    extra = [
        "--param", "segments.target-max=500", "--param", "segments.epsilon=0..0.5",
        "--param", "segments.noise=laplace", "--privacy-epsilon", "3", "--privacy-delta", "1e-6",
    ]  # fmt: skip
    assert main(init_args(path, keys, *extra)) == 0, capsys.readouterr().err
    a = SignedAgreement.load(path).agreement
    terms = a.job_terms("segments").params
    assert terms["target-max"] == 500 and terms["epsilon"] == ParamRange(0, 0.5)
    assert (a.privacy_epsilon, a.privacy_delta) == (3.0, 1e-6)
    capsys.readouterr()
    assert main(["agreement", "show", str(path)]) == 0
    assert "epsilon 3, delta 1e-06" in capsys.readouterr().out
    assert main(init_args(tmp_path / "bad.toml", keys, "--param", "segments=1")) == 2
    assert "KIND.NAME=BOUND" in capsys.readouterr().err

import os
import stat

import pytest

from vfm_flower.errors import KeyFileError, SignatureError
from vfm_flower.keys import PartyIdentity, PublicIdentity, validate_party_name


def test_generate_save_load_roundtrip(tmp_path):
    ident = PartyIdentity.generate("bank")
    key_path, pub_path = ident.save(tmp_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    again = PartyIdentity.load(key_path, expected_party="bank")
    assert again.public == ident.public
    assert PublicIdentity.load(pub_path) == ident.public


def test_save_refuses_to_overwrite(tmp_path):
    PartyIdentity.generate("bank").save(tmp_path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        PartyIdentity.generate("bank").save(tmp_path)


def test_load_refuses_other_party_key(tmp_path):
    key_path, _ = PartyIdentity.generate("bank").save(tmp_path)
    with pytest.raises(KeyFileError, match="belongs to party 'bank'"):
        PartyIdentity.load(key_path, expected_party="insurer")


def test_signature_verifies_and_rejects_tampering():
    ident = PartyIdentity.generate("bank")
    sig = ident.sign(b"terms")
    ident.public.verify(sig, b"terms")
    with pytest.raises(SignatureError):
        ident.public.verify(sig, b"terms!")
    with pytest.raises(SignatureError):
        PartyIdentity.generate("bank").public.verify(sig, b"terms")


def test_exchange_key_is_derived_and_distinct():
    a, b = PartyIdentity.generate("a"), PartyIdentity.generate("b")
    assert a.public.exchange_key != a.public.signing_key
    shared_ab = a.exchange(b.public.exchange_public_key())
    shared_ba = b.exchange(a.public.exchange_public_key())
    assert shared_ab == shared_ba


def test_key_repr_hides_secret(tmp_path):
    ident = PartyIdentity.generate("bank")
    key_path, _ = ident.save(tmp_path)
    seed_text = key_path.read_text().split('"')[-2]
    assert seed_text not in repr(ident)


@pytest.mark.parametrize("name", ["", " bank", "bank/1", "x" * 65, "-bank"])
def test_invalid_party_names(name):
    with pytest.raises(ValueError):
        validate_party_name(name)


def test_malformed_key_files(tmp_path):
    bad = tmp_path / "x.key"
    bad.write_text('party = "x"\ned25519-seed = "not base64!"\n')
    with pytest.raises(KeyFileError):
        PartyIdentity.load(bad)
    with pytest.raises(KeyFileError, match="cannot read"):
        PartyIdentity.load(tmp_path / "missing.key")
    with pytest.raises(KeyFileError):
        PublicIdentity.from_toml("party = 'x'")

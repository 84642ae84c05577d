import pytest

from vfm_flower.envelope import ReplayGuard, open_envelope, peek_header, seal_envelope
from vfm_flower.errors import EnvelopeError
from vfm_flower.keys import PartyIdentity

BINDING = {"run_id": "run-1", "phase": "query.align", "round": 2, "topic": "psi.lo_double"}


@pytest.fixture(scope="module")
def parties():
    return {n: PartyIdentity.generate(n) for n in ("insurer", "bank", "broker")}


def seal(parties, plaintext=b"secret partial scores", **over):
    binding = {**BINDING, **over}
    return seal_envelope(parties["bank"], parties["insurer"].public, plaintext=plaintext, **binding)


def open_(parties, blob, guard=None, **over):
    binding = {**BINDING, **over}
    return open_envelope(
        blob,
        parties["insurer"],
        parties["bank"].public,
        replay_guard=guard or ReplayGuard(),
        **binding,
    )


def test_roundtrip(parties):
    assert open_(parties, seal(parties)) == b"secret partial scores"


def test_server_view_holds_no_plaintext(parties):
    plaintext = b"customer@example.com;0.731;label=1" * 20
    blob = seal(parties, plaintext=plaintext)
    assert b"customer@example.com" not in blob
    assert b"0.731" not in blob
    header = peek_header(blob)
    assert header.sender == "bank" and header.recipient == "insurer"


def test_tampered_ciphertext_refused(parties):
    blob = bytearray(seal(parties))
    blob[-80] ^= 1
    with pytest.raises(EnvelopeError, match="signature"):
        open_(parties, bytes(blob))


def test_tampered_header_refused(parties):
    blob = seal(parties)
    forged = blob.replace(b'"round":2', b'"round":3')
    assert forged != blob
    with pytest.raises(EnvelopeError):
        open_(parties, forged, round=3)


def test_resigned_by_other_party_refused(parties):
    # the broker seals claiming to be the bank: the bank's key does not verify it
    blob = seal_envelope(parties["broker"], parties["insurer"].public, plaintext=b"x", **BINDING)
    with pytest.raises(EnvelopeError, match="bad signature"):
        open_(parties, blob)


def test_replay_refused(parties):
    guard = ReplayGuard()
    blob = seal(parties)
    open_(parties, blob, guard)
    with pytest.raises(EnvelopeError, match="replayed"):
        open_(parties, blob, guard)


def test_replay_guard_survives_export(parties):
    guard = ReplayGuard()
    blob = seal(parties)
    open_(parties, blob, guard)
    restored = ReplayGuard(guard.export())
    with pytest.raises(EnvelopeError, match="replayed"):
        open_(parties, blob, restored)


@pytest.mark.parametrize(
    "field,value",
    [("run_id", "run-2"), ("phase", "train.forward"), ("round", 1), ("topic", "psi.positions")],
)
def test_envelope_bound_to_its_place(parties, field, value):
    blob = seal(parties)
    with pytest.raises(EnvelopeError, match=field):
        open_(parties, blob, **{field: value})


def test_misdirected_envelope_refused(parties):
    blob = seal_envelope(parties["bank"], parties["broker"].public, plaintext=b"x", **BINDING)
    with pytest.raises(EnvelopeError, match="recipient"):
        open_(parties, blob)


def test_garbage_refused(parties):
    with pytest.raises(EnvelopeError):
        open_(parties, b"VFE1" + b"\x00" * 10)
    with pytest.raises(EnvelopeError):
        peek_header(b"nope" * 40)


def test_a_compression_bomb_payload_is_refused_before_inflating() -> None:
    import io
    import zipfile

    import pytest

    from vfm_flower.codec import pack_payload, unpack_payload
    from vfm_flower.errors import EnvelopeError

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", b"\0" * 50_000_000)  # 50 MB of zeros in a few KB
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(EnvelopeError, match="stored, not compressed"):
        unpack_payload(buffer.getvalue())
    arrays, meta = unpack_payload(pack_payload({"a": b"abc"}, {"k": 1}))
    assert arrays["a"].tobytes() == b"abc" and meta == {"k": 1}


def test_an_envelope_header_with_a_huge_round_is_refused() -> None:
    import json

    import pytest

    from vfm_flower.envelope import EnvelopeHeader
    from vfm_flower.errors import EnvelopeError

    good = {
        "run_id": "r",
        "phase": "p",
        "round": 1,
        "topic": "t",
        "sender": "a",
        "recipient": "b",
        "envelope_id": "e",
    }
    assert EnvelopeHeader.decode(json.dumps(good).encode()).round == 1
    for bad in ("1e999", "1.5", "true", str(10**100), "-1"):
        text = json.dumps(good).replace('"round": 1', f'"round": {bad}')
        with pytest.raises(EnvelopeError, match="malformed envelope header"):
            EnvelopeHeader.decode(text.encode())

"""End-to-end protected envelopes for every party-to-party payload the server relays.

Construction (version 1):

- the sender draws an ephemeral X25519 key and agrees a secret with the recipient's X25519
  key (listed in the signed agreement);
- HKDF-SHA256 turns it into a 256-bit ChaCha20-Poly1305 key (salt: both public keys);
- the header (run id, phase, round, topic, sender, recipient, a random envelope id) is the
  AEAD's associated data, so the ciphertext is bound to exactly that place in the protocol;
- the sender signs ``header || ephemeral key || nonce || ciphertext`` with its Ed25519 key.

The recipient checks the signature against the sender's key from the agreement, checks that
the header names itself, the run, the phase, the round and the topic it expects, refuses an
envelope id it has seen before (replay), and only then decrypts. The server sees the header
(who talks to whom, when, how many bytes) and nothing else.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vfm_flower.errors import EnvelopeError, SignatureError
from vfm_flower.keys import PartyIdentity, PublicIdentity

_MAGIC = b"VFE1"
_HKDF_INFO = b"vfm-flower/v1/envelope"
_SIG_LEN = 64
_KEY_LEN = 32
_NONCE_LEN = 12


@dataclass(frozen=True)
class EnvelopeHeader:
    """Where an envelope belongs in the protocol; authenticated, not secret."""

    run_id: str
    phase: str
    round: int
    topic: str
    sender: str
    recipient: str
    envelope_id: str

    def encode(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "phase": self.phase,
                "round": self.round,
                "topic": self.topic,
                "sender": self.sender,
                "recipient": self.recipient,
                "envelope_id": self.envelope_id,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> EnvelopeHeader:
        try:
            obj = json.loads(data.decode("utf-8"))
            round_ = obj["round"]
            # a plain integer in range: 1e999, 1.5, true or 10**100 are refused, not cast
            if isinstance(round_, bool) or not isinstance(round_, int) or not 0 <= round_ < 2**31:
                raise ValueError("round out of range")
            if not all(isinstance(obj[k], str) for k in ("run_id", "phase", "topic")):
                raise TypeError("header fields must be strings")
            return cls(
                run_id=str(obj["run_id"]),
                phase=str(obj["phase"]),
                round=round_,
                topic=str(obj["topic"]),
                sender=str(obj["sender"]),
                recipient=str(obj["recipient"]),
                envelope_id=str(obj["envelope_id"]),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            UnicodeDecodeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise EnvelopeError("malformed envelope header") from exc


def _derive_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_HKDF_INFO
    ).derive(shared)


def seal_envelope(
    sender: PartyIdentity,
    recipient: PublicIdentity,
    *,
    run_id: str,
    phase: str,
    round: int,
    topic: str,
    plaintext: bytes,
) -> bytes:
    """Encrypt, bind and sign ``plaintext`` for ``recipient``.

    Returns
    -------
    bytes
        The envelope: ``magic | header length | header | ephemeral key | nonce |
        ciphertext | signature``.
    """
    header = EnvelopeHeader(
        run_id=run_id,
        phase=phase,
        round=int(round),
        topic=topic,
        sender=sender.party,
        recipient=recipient.party,
        envelope_id=os.urandom(16).hex(),
    ).encode()
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = _derive_key(
        ephemeral.exchange(recipient.exchange_public_key()), eph_pub, recipient.exchange_key
    )
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)
    body = _MAGIC + struct.pack(">I", len(header)) + header + eph_pub + nonce + ciphertext
    return body + sender.sign(body)


def peek_header(envelope: bytes) -> EnvelopeHeader:
    """Read an envelope's header without verifying it (routing and audit only)."""
    if len(envelope) < 8 + _KEY_LEN + _NONCE_LEN + 16 + _SIG_LEN or envelope[:4] != _MAGIC:
        raise EnvelopeError("not a vfm envelope (bad magic or too short)")
    (hlen,) = struct.unpack(">I", envelope[4:8])
    if 8 + hlen + _KEY_LEN + _NONCE_LEN + 16 + _SIG_LEN > len(envelope):
        raise EnvelopeError("truncated envelope")
    return EnvelopeHeader.decode(envelope[8 : 8 + hlen])


class ReplayGuard:
    """Remembers the envelope ids a party has accepted in this run.

    Its state is a plain list of hex ids so that a Flower client can keep it in
    ``context.state`` between messages.
    """

    def __init__(self, seen: Iterable[str] = ()) -> None:
        self._seen = set(seen)

    def check_and_remember(self, envelope_id: str) -> None:
        if envelope_id in self._seen:
            raise EnvelopeError(f"replayed envelope {envelope_id[:8]}... refused")
        self._seen.add(envelope_id)

    def export(self) -> list[str]:
        return sorted(self._seen)


def open_envelope(
    envelope: bytes,
    recipient: PartyIdentity,
    sender: PublicIdentity,
    *,
    run_id: str,
    phase: str,
    round: int,
    topic: str,
    replay_guard: ReplayGuard,
) -> bytes:
    """Verify and decrypt an envelope addressed to ``recipient`` by ``sender``.

    Raises
    ------
    EnvelopeError
        If the signature, the binding (run, phase, round, topic, sender, recipient), the
        AEAD tag or the replay check fails. Nothing is decrypted before all checks pass.
    """
    header = peek_header(envelope)
    body, signature = envelope[:-_SIG_LEN], envelope[-_SIG_LEN:]
    try:
        sender.verify(signature, body)
    except SignatureError as exc:
        raise EnvelopeError(
            f"envelope claiming to come from '{sender.party}' has a bad signature (tampered?)"
        ) from exc
    expected = {
        "run_id": run_id,
        "phase": phase,
        "round": int(round),
        "topic": topic,
        "sender": sender.party,
        "recipient": recipient.party,
    }
    for field, value in expected.items():
        if getattr(header, field) != value:
            raise EnvelopeError(
                f"envelope {field} is {getattr(header, field)!r}, expected {value!r} "
                "(misdirected or replayed from elsewhere)"
            )
    (hlen,) = struct.unpack(">I", body[4:8])
    offset = 8 + hlen
    eph_pub = body[offset : offset + _KEY_LEN]
    nonce = body[offset + _KEY_LEN : offset + _KEY_LEN + _NONCE_LEN]
    ciphertext = body[offset + _KEY_LEN + _NONCE_LEN :]
    replay_guard.check_and_remember(header.envelope_id)
    key = _derive_key(
        recipient.exchange(X25519PublicKey.from_public_bytes(eph_pub)),
        eph_pub,
        recipient.public.exchange_key,
    )
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, body[8:offset])
    except InvalidTag as exc:
        raise EnvelopeError("envelope does not decrypt (tampered ciphertext)") from exc

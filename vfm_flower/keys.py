"""Party identities: one Ed25519 signing key per party, and an X25519 key derived from it.

A party's private key file holds one 32-byte Ed25519 seed. The X25519 key used to receive
end-to-end encrypted envelopes is derived from that seed with HKDF (domain-separated), so a
partner manages one secret file. Both public keys are listed in the signed agreement, so every
party knows every other party's keys before any data moves.

File formats (TOML, readable by a person)::

    # NAME.key (mode 0600)
    party = "bank"
    ed25519-seed = "<base64>"

    # NAME.pub
    party = "bank"
    signing-key = "<base64 Ed25519 public key>"
    exchange-key = "<base64 X25519 public key>"
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vfm_flower.errors import KeyFileError, SignatureError

_PARTY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_X25519_INFO = b"vfm-flower/v1/x25519-exchange-key"
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def validate_party_name(name: str) -> str:
    """Return ``name`` if it is a valid party name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _PARTY_NAME.match(name):
        raise ValueError(
            f"invalid party name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{what} is not valid base64") from exc
    if len(raw) != size:
        raise KeyFileError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class PublicIdentity:
    """A party's public keys: who it is (Ed25519) and how to encrypt to it (X25519).

    Immutable; compare and hash by value.
    """

    party: str
    signing_key: bytes
    exchange_key: bytes

    def __post_init__(self) -> None:
        validate_party_name(self.party)
        if len(self.signing_key) != 32 or len(self.exchange_key) != 32:
            raise KeyFileError(f"public keys of party '{self.party}' must be 32 bytes each")

    @property
    def fingerprint(self) -> str:
        """Stable hex fingerprint of both public keys: 128 bits of SHA-256 (32 hex digits),
        enough that nobody can make another key pair with the same fingerprint, short enough
        to read aloud when signers confirm keys out of band."""
        return hashlib.sha256(self.signing_key + self.exchange_key).hexdigest()[:32]

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify an Ed25519 signature by this party; raise ``SignatureError`` if invalid."""
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_key).verify(signature, data)
        except InvalidSignature as exc:
            raise SignatureError(f"signature of party '{self.party}' does not verify") from exc

    def exchange_public_key(self) -> X25519PublicKey:
        """The X25519 public key used to encrypt envelopes to this party."""
        return X25519PublicKey.from_public_bytes(self.exchange_key)

    def to_toml(self) -> str:
        """The ``NAME.pub`` file text."""
        return (
            f'party = "{self.party}"\n'
            f'signing-key = "{_b64(self.signing_key)}"\n'
            f'exchange-key = "{_b64(self.exchange_key)}"\n'
        )

    @classmethod
    def from_toml(cls, text: str, source: str = "public key") -> PublicIdentity:
        """Parse a ``NAME.pub`` file text."""
        try:
            data = tomllib.loads(text)
            return cls(
                party=data["party"],
                signing_key=_unb64(data["signing-key"], f"{source}: signing-key", 32),
                exchange_key=_unb64(data["exchange-key"], f"{source}: exchange-key", 32),
            )
        except (tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
            raise KeyFileError(f"{source} is not a vfm public key file: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicIdentity:
        """Read a ``NAME.pub`` file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from exc
        return cls.from_toml(text, source=str(path))


class PartyIdentity:
    """A party's private identity. Never logged, never serialized except by ``save``.

    Parameters
    ----------
    party : str
        The party name, as listed in the agreement.
    seed : bytes
        The 32-byte Ed25519 private seed.
    """

    __slots__ = ("_party", "_signing", "_exchange", "_public")

    def __init__(self, party: str, seed: bytes) -> None:
        validate_party_name(party)
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 seed must be 32 bytes")
        self._party = party
        self._signing = Ed25519PrivateKey.from_private_bytes(seed)
        x_seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_X25519_INFO).derive(
            seed
        )
        self._exchange = X25519PrivateKey.from_private_bytes(x_seed)
        self._public = PublicIdentity(
            party=party,
            signing_key=self._signing.public_key().public_bytes(_RAW, _RAW_PUB),
            exchange_key=self._exchange.public_key().public_bytes(_RAW, _RAW_PUB),
        )

    def __repr__(self) -> str:
        return f"PartyIdentity(party={self._party!r}, fingerprint={self._public.fingerprint})"

    @classmethod
    def generate(cls, party: str) -> PartyIdentity:
        """Create a fresh identity from the operating system's CSPRNG."""
        return cls(party, os.urandom(32))

    @property
    def party(self) -> str:
        return self._party

    @property
    def public(self) -> PublicIdentity:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``."""
        return self._signing.sign(data)

    def exchange(self, peer_public_key: X25519PublicKey) -> bytes:
        """Raw X25519 shared secret with a peer public key (always pass it through a KDF)."""
        return self._exchange.exchange(peer_public_key)

    def _seed(self) -> bytes:
        return self._signing.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def save(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``NAME.key`` (mode 0600) and ``NAME.pub`` into ``out_dir``.

        Refuses to overwrite an existing key or public key file.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        key_path = out / f"{self._party}.key"
        pub_path = out / f"{self._party}.pub"
        for existing in (key_path, pub_path):
            if existing.exists():
                raise KeyFileError(f"{existing} exists already: refusing to overwrite a key")
        text = f'party = "{self._party}"\ned25519-seed = "{_b64(self._seed())}"\n'
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        pub_path.write_text(self._public.to_toml(), encoding="utf-8")
        return key_path, pub_path

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_party: str | None = None) -> PartyIdentity:
        """Read a ``NAME.key`` file; with ``expected_party``, refuse another party's key."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text)
            party = data["party"]
            seed = _unb64(data["ed25519-seed"], f"{path}: ed25519-seed", 32)
        except (tomllib.TOMLDecodeError, KeyError) as exc:
            raise KeyFileError(f"{path} is not a vfm private key file") from exc
        if expected_party is not None and party != expected_party:
            raise KeyFileError(
                f"key file {path} belongs to party '{party}', not '{expected_party}'"
            )
        return cls(party, seed)


def install_private_key(
    key_path: str | os.PathLike[str], directory: str | os.PathLike[str]
) -> Path:
    """Copy a private key file into ``directory`` as ``NAME.key`` (mode 0600), as an operator
    puts its key in the server work dir once; an identical copy is kept, another key there is
    refused (``KeyFileError``)."""
    key_path, directory = Path(key_path), Path(directory)
    identity = PartyIdentity.load(key_path)
    target = directory / f"{identity.party}.key"
    if target.exists():
        if target.read_bytes() != key_path.read_bytes():
            raise KeyFileError(
                f"{target} holds another key than {key_path}: that directory belongs to another "
                "key (remove it or use another directory)"
            )
        return target
    (directory / f"{identity.party}.pub").unlink(missing_ok=True)
    identity.save(directory)
    return target

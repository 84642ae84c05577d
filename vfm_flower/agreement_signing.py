"""Signed agreements: the terms and every party's detached Ed25519 signature over them.

:class:`SignedAgreement` loads a signed file, signs as one party, verifies every signature
against the keys the terms list; :func:`check_signing_window` says whether a document is
inside its validity window. File layout: :mod:`vfm_flower.agreement`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import tomli_w

from vfm_flower.agreement_document import (
    Agreement,
)
from vfm_flower.agreement_terms import (
    _SIGNATURE_LEN,
    EXPIRY_WARNING_DAYS,
    _b64,
    _now,
    _unb64,
    format_utc,
)
from vfm_flower.errors import ConfigurationError, KeyFileError, PolicyViolation, SignatureError
from vfm_flower.files import atomic_write
from vfm_flower.keys import PartyIdentity

# ----------------------------------------------------------------------------------------------
# signed agreement
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedAgreement:
    """An agreement and the parties' detached signatures over its canonical terms.

    Immutable: :meth:`with_signature` returns a new object.
    """

    agreement: Agreement
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sigs = dict(self.signatures)
        names = set(self.agreement.signer_names)
        for name, sig in sigs.items():
            if name not in names:
                raise ConfigurationError(
                    f"signatures.{name}: '{name}' is neither a party nor the operator"
                )
            if not isinstance(sig, bytes):
                raise ConfigurationError(f"signatures.{name}: must be bytes")
        object.__setattr__(self, "signatures", MappingProxyType(sigs))

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ files

    @classmethod
    def from_toml(cls, text: str, source: str = "agreement") -> SignedAgreement:
        """Parse an agreement file's text; errors name ``source`` and the field."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: not valid TOML: {exc}") from exc
        try:
            agreement = Agreement.from_toml_dict(data)
            raw_sigs = data.get("signatures", {})
            if not isinstance(raw_sigs, Mapping):
                raise ConfigurationError("signatures: must be a table of party = signature")
            sigs = {name: _unb64(value, f"signatures.{name}") for name, value in raw_sigs.items()}
            return cls(agreement, sigs)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SignedAgreement:
        """Read and validate an agreement file.

        Raises
        ------
        ConfigurationError
            If the file cannot be read, is not TOML, or a field is missing or malformed; the
            message names the file and the field.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read agreement file {path}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path}: not UTF-8 text") from exc
        return cls.from_toml(text, source=str(path))

    def to_toml(self) -> str:
        """The agreement file's text: a header comment, the terms, then ``[signatures]``."""
        data = self.agreement.to_toml_dict()
        if self.signatures:
            data["signatures"] = {n: _b64(self.signatures[n]) for n in sorted(self.signatures)}
        header = (
            "# vfm-flower collaboration agreement.\n"
            "# Every party signs the terms (not the formatting): comments, whitespace and the\n"
            "# order of tables do not matter; changing any value invalidates the signatures.\n"
            f"# terms-hash: {self.agreement.terms_hash()}\n\n"
        )
        return header + tomli_w.dumps(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the agreement file atomically (temporary file + ``os.replace``), keeping an
        existing file's permission bits."""
        path = Path(path)
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        except OSError as exc:
            raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return atomic_write(path, self.to_toml().encode("utf-8"), mode=mode)

    # ------------------------------------------------------------------ signing

    def with_signature(self, identity: PartyIdentity) -> SignedAgreement:
        """Return a copy signed by ``identity`` (replacing that party's earlier signature).

        Raises
        ------
        KeyFileError
            If ``identity`` is not a party, or its keys are not the ones the agreement lists
            for that party ("key is not NAME's").
        """
        name = identity.party
        if name not in self.agreement.signer_names:
            raise KeyFileError(
                f"'{name}' does not sign this agreement (signers: "
                f"{', '.join(self.agreement.signer_names)})"
            )
        listed = self.agreement.signer(name)
        pub = identity.public
        if pub.signing_key != listed.signing_key or pub.exchange_key != listed.exchange_key:
            raise KeyFileError(
                f"key is not {name}'s: its public key (fingerprint {pub.fingerprint}) differs "
                f"from the one the agreement lists for '{name}' "
                f"(fingerprint {listed.fingerprint})"
            )
        sigs = dict(self.signatures)
        sigs[name] = identity.sign(self.agreement.canonical_bytes())
        return SignedAgreement(self.agreement, sigs)

    def _valid_signers(self) -> tuple[list[str], list[str]]:
        message = self.agreement.canonical_bytes()
        good, bad = [], []
        for name in sorted(self.signatures):
            try:
                sig = self.signatures[name]
                if len(sig) != _SIGNATURE_LEN:
                    raise SignatureError("wrong length")
                self.agreement.signer(name).verify(sig, message)
                good.append(name)
            except SignatureError:
                bad.append(name)
        return good, bad

    def signed_by(self) -> list[str]:
        """Parties whose signature verifies over the current terms, sorted."""
        return self._valid_signers()[0]

    def missing_signatures(self) -> list[str]:
        """Signers (parties and the operator) without a signature in the file, sorted."""
        return [n for n in self.agreement.signer_names if n not in self.signatures]

    def invalid_signatures(self) -> list[str]:
        """Parties whose signature is present but does not verify, sorted."""
        return self._valid_signers()[1]

    def terms_hash(self) -> str:
        """Shortcut for ``self.agreement.terms_hash()``."""
        return self.agreement.terms_hash()

    def verify(self, now: datetime | None = None) -> None:
        """Check that every party signed the current terms and the agreement is in force.

        Raises
        ------
        PolicyViolation
            Rule ``"signatures"`` naming missing signers or signatures that do not verify;
            rule ``"validity"`` if ``now`` is before ``not_before`` or not before ``not_after``.
        """
        missing = self.missing_signatures()
        bad = self.invalid_signatures()
        if missing or bad:
            parts = []
            if missing:
                parts.append(
                    f"missing signature of {', '.join(missing)} (each party runs "
                    "'vfm agreement sign FILE --party NAME --key NAME.key')"
                )
            if bad:
                parts.append(
                    f"signature of {', '.join(bad)} does not verify over the current terms "
                    "(terms changed after signing, or signed with another key): re-sign the "
                    "agreement"
                )
            raise PolicyViolation("signatures", "; ".join(parts))
        moment = _now(now)
        a = self.agreement
        window = f"{format_utc(a.not_before)} .. {format_utc(a.not_after)}"
        if moment < a.not_before:
            raise PolicyViolation(
                "validity",
                f"agreement {a.agreement_id} is not yet valid: valid from "
                f"{format_utc(a.not_before)} (window {window}, now {format_utc(moment)}); wait "
                "or check the clock",
            )
        if moment >= a.not_after:
            raise PolicyViolation(
                "validity",
                f"agreement {a.agreement_id} expired on {format_utc(a.not_after)} (window "
                f"{window}): agree and sign a renewed agreement",
            )


def check_signing_window(agreement: Agreement, now: datetime | None = None) -> str | None:
    """The rule ``validity`` for drafting or signing: refused once the window has ended.

    Returns a warning when the window ends within :data:`EXPIRY_WARNING_DAYS` days (signers
    should know a renewal is due), else ``None``.

    Raises
    ------
    PolicyViolation
        Rule ``"validity"``: the window has ended; nobody could run the agreement.
    """
    moment = _now(now)
    if moment >= agreement.not_after:
        raise PolicyViolation(
            "validity",
            f"agreement {agreement.agreement_id} ended on {format_utc(agreement.not_after)}: "
            "nobody could run it; draft a new one (vfm agreement init ... --valid-days N)",
        )
    left = agreement.not_after - moment
    if left < timedelta(days=EXPIRY_WARNING_DAYS):
        hours = int(left.total_seconds() // 3600)
        return (
            f"warning: agreement {agreement.agreement_id} ends on "
            f"{format_utc(agreement.not_after)}, in {hours // 24} day(s) {hours % 24} hour(s): "
            "plan its renewal"
        )
    return None

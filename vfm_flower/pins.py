"""Key pins: the fingerprints a signer confirmed, so that a substituted key is caught at signing.

Whoever drafts an agreement collects every party's public key, and whoever circulates the
file for signing could replace one party's key with its own, run that party's node, and read
what was meant for it. Signatures do not help: every signer would sign the substituted key.
What helps is a check outside the file: the first time a signer signs with a party, it
confirms that party's fingerprint with it out of band (a call, a meeting, a letter), and
``vfm agreement sign`` pins it in a small local file (by default beside the signer's own key,
``NAME.pins.toml``). Every later agreement that lists *another* key under a pinned name is
refused until the signer accepts the change explicitly (``--repin NAME``), after confirming
the new fingerprint the same way.

Who learns what: nothing leaves the signer's machine; the file holds party names and public
fingerprints only (no secret).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from vfm_flower.errors import ConfigurationError, PolicyViolation
from vfm_flower.files import atomic_write

__all__ = ["KeyPins", "format_fingerprint", "pin_path_for"]

_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
_HEADER = (
    "# vfm-flower key pins: the fingerprints this signer confirmed out of band.\n"
    "# Written by `vfm agreement sign`; change one only with `--repin NAME`.\n\n"
)


def pin_path_for(key_path: str | os.PathLike[str], party: str) -> Path:
    """The default pin file of a signer: ``PARTY.pins.toml`` beside its private key."""
    return Path(key_path).resolve().parent / f"{party}.pins.toml"


class KeyPins:
    """The fingerprints one signer pinned, by party name (immutable; :meth:`pinned` makes a
    new one)."""

    __slots__ = ("_path", "_pins")

    def __init__(self, path: str | os.PathLike[str], pins: Mapping[str, str] | None = None):
        self._path = Path(path)
        self._pins = dict(pins or {})

    def __repr__(self) -> str:
        return f"KeyPins({str(self._path)!r}, {len(self._pins)} pinned)"

    @property
    def path(self) -> Path:
        """Where the pins are kept."""
        return self._path

    @property
    def pins(self) -> dict[str, str]:
        """A copy of the pins: party name -> fingerprint."""
        return dict(self._pins)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPins:
        """The pins in ``path`` (none yet if the file does not exist).

        Raises
        ------
        ConfigurationError
            The file exists but is not a pin file (a one-line reason).
        """
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"key pins {path}: not readable ({exc})") from exc
        if set(data) != {"pins"}:
            raise ConfigurationError(
                f"key pins {path}: expected exactly a [pins] table (an edited or foreign file "
                "would silently reset pinning)"
            )
        pins = data["pins"]
        if not isinstance(pins, dict) or not all(
            isinstance(v, str) and _FINGERPRINT.match(v) for v in pins.values()
        ):
            raise ConfigurationError(f"key pins {path}: [pins] must map names to fingerprints")
        return cls(path, pins)

    def check(self, listed: Mapping[str, str], *, repin: Iterable[str] = ()) -> list[str]:
        """The rule ``key_pin``: every listed key matches its pin, or its change was accepted.

        Parameters
        ----------
        listed : mapping
            Party (or operator) name -> fingerprint, as the agreement lists them.
        repin : iterable of str
            Names whose changed fingerprint the signer confirmed again and accepts.

        Returns
        -------
        list of str
            The names this signature would pin for the first time (to confirm out of band).

        Raises
        ------
        PolicyViolation
            Rule ``key_pin``: a listed fingerprint differs from the pinned one (names the
            party, both fingerprints and the remedy).
        """
        accepted = set(repin)
        by_fold = {name.casefold(): name for name in self._pins}
        by_print = {fp: name for name, fp in self._pins.items()}
        for name in sorted(listed):
            twin = by_fold.get(name.casefold())
            if twin is not None and twin != name and name not in accepted:
                raise PolicyViolation(
                    "key_pin",
                    f"the agreement lists '{name}', which differs only in case from the pinned "
                    f"'{twin}': confirm with {twin} out of band, then sign with --repin {name}",
                )
            moved = by_print.get(listed[name])
            if moved is not None and moved != name and name not in accepted:
                raise PolicyViolation(
                    "key_pin",
                    f"the key pinned for '{moved}' is listed under another name, '{name}': "
                    f"confirm out of band, then sign with --repin {name}",
                )
            pinned = self._pins.get(name)
            if pinned is not None and pinned != listed[name] and name not in accepted:
                raise PolicyViolation(
                    "key_pin",
                    f"the agreement lists another key for '{name}' (fingerprint "
                    f"{format_fingerprint(listed[name])}) than the one you pinned "
                    f"({format_fingerprint(pinned)}): someone may have substituted it. Confirm "
                    f"the new fingerprint with {name} out of band, then sign with --repin {name}",
                )
        return sorted(n for n in listed if n not in self._pins)

    def pinned(self, listed: Mapping[str, str]) -> KeyPins:
        """These pins with ``listed`` added (and accepted changes applied)."""
        return KeyPins(self._path, {**self._pins, **listed})

    def save(self) -> Path:
        """Write the pin file atomically (mode 0600: it is the signer's own record)."""
        # names are validated party names (letters, digits, '_', '-', '.'): quoted keys
        body = "[pins]\n" + "".join(f'"{n}" = "{fp}"\n' for n, fp in sorted(self._pins.items()))
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot write {self._path}: {exc.strerror or exc}") from exc
        return atomic_write(self._path, (_HEADER + body).encode("utf-8"), mode=0o600)


def format_fingerprint(fingerprint: str) -> str:
    """A fingerprint in groups of four hex digits, for reading aloud."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))

"""Option parsing shared by the CLI commands."""

from __future__ import annotations

from vfm_flower.errors import ConfigurationError


def name_value_pairs(
    values: list[str] | None, option: str, what: str = "VALUE"
) -> list[tuple[str, str]]:
    """Parse repeated ``NAME=VALUE`` options; a malformed one is a one-line error."""
    out = []
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigurationError(f"{option} expects NAME={what}, got {value!r}")
        out.append((name.strip(), rest.strip()))
    return out

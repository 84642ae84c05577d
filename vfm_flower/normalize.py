"""Customer id normalization, run by every party before private set intersection.

Two parties only find a shared customer if both turn the customer's id into the very same
string, so every party runs the same deterministic normalization on its own id column(s):

``email``
    Unicode NFC, strip surrounding white space, lower-case. A valid email has exactly one
    ``@``, a non-empty local part and domain, and no white space inside.
``phone``
    E.164 digits, written ``+<country code><number>``. Separators (space, ``-``, ``.``,
    ``/``, parentheses) are dropped; any other character is an error. A number starting with
    ``+`` or ``00`` carries its own country code (a bracketed national trunk ``(0)``, as in
    ``+44 (0)20 7946 0958``, is dropped); any other number is national: a single
    trunk ``0`` is dropped and the default country code is prepended. With the North
    American default country code ``1``, whose trunk prefix is ``1`` rather than ``0``, an
    11-digit national number starting with ``1`` keeps its digits (``1 555 123 4567`` and
    ``(555) 123-4567`` both give ``+15551234567``). The result has 7 to 15 digits.
``plain``
    Unicode NFC and strip; case-sensitive by default, case-folded with
    ``case_sensitive=False``. Integers and integral floats (pandas turns an integer column
    with a missing value into floats) are written as integers.

A composite key (several id columns) normalizes each part with the same kind and joins the
parts length-prefixed (``<length>:<part>`` per part), so no two different tuples of parts
give the same id.

Error messages name the party, the number of bad rows and the first few row numbers
(1-based data rows, header not counted), never an id value: ids must not reach logs.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vfm_flower.errors import ConfigurationError, DataError

ID_KINDS: tuple[str, ...] = ("email", "phone", "plain")
"""The id kinds this module normalizes."""

_MAX_ROWS_SHOWN = 5
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15
_COUNTRY_CODE = re.compile(r"^[1-9][0-9]{0,2}$")
_PHONE_ALLOWED = re.compile(r"^\+?[0-9 ().\-/]+$")
_PHONE_SEPARATORS = re.compile(r"[ ().\-/]")
_WHITESPACE = re.compile(r"\s")

# Reasons a value is refused; the message counts them, it never shows the value.
_EMPTY = "empty or missing"
_NOT_TEXT = "not text or an integer"
_MALFORMED = "malformed"


class _Bad(Exception):
    """Internal: one value is refused, with the reason category (never the value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r + 1) for r in rows[:_MAX_ROWS_SHOWN])
    more = ", ..." if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"{shown}{more} (1-based data rows, header not counted)"


def _default_case_sensitive(kind: str, case_sensitive: bool | None) -> bool:
    """Resolve ``case_sensitive`` for ``kind``; refuse a setting the kind cannot honour."""
    if kind == "plain":
        return True if case_sensitive is None else bool(case_sensitive)
    if case_sensitive:
        raise ConfigurationError(
            f"id kind '{kind}' is compared case-insensitively by construction; "
            "leave case_sensitive unset (or False)"
        )
    return False


def _check_kind(kind: str) -> None:
    if kind not in ID_KINDS:
        raise ConfigurationError(
            f"unknown id kind {kind!r}: use one of {', '.join(repr(k) for k in ID_KINDS)}"
        )


def _check_country_code(code: str) -> str:
    code = str(code).strip().lstrip("+")
    if not _COUNTRY_CODE.match(code):
        raise ConfigurationError(
            "default_country_code must be 1 to 3 digits without a leading 0 (e.g. '1', '44')"
        )
    return code


def _is_missing(value: object) -> bool:
    """None, NaN (Python, numpy) and pandas' NA/NaT markers."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        try:
            return math.isnan(float(value))
        except (TypeError, ValueError):
            return False
    return type(value).__name__ in {"NAType", "NaTType"}


def _as_text(value: object, *, numbers_allowed: bool) -> str:
    """The value as stripped NFC text; integers and integral floats become digits."""
    if _is_missing(value):
        raise _Bad(_EMPTY)
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        raise _Bad(_NOT_TEXT)
    elif numbers_allowed and isinstance(value, numbers.Integral):
        text = str(int(value))
    elif numbers_allowed and isinstance(value, numbers.Real):
        number = float(value)
        if not number.is_integer():
            raise _Bad(_MALFORMED)
        text = str(int(number))
    else:
        raise _Bad(_NOT_TEXT)
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise _Bad(_EMPTY)
    return text


def _normalize_email(value: object) -> str:
    text = _as_text(value, numbers_allowed=False).lower()
    if text.count("@") != 1 or _WHITESPACE.search(text):
        raise _Bad(_MALFORMED)
    local, domain = text.split("@")
    if not local or not domain:
        raise _Bad(_MALFORMED)
    return text


def _normalize_phone(value: object, country_code: str) -> str:
    text = _as_text(value, numbers_allowed=True)
    if not _PHONE_ALLOWED.match(text):
        raise _Bad(_MALFORMED)
    digits = _PHONE_SEPARATORS.sub("", text)
    if digits.startswith(("+", "00")):
        # International: '+44 (0)20 ...' writes the national trunk 0 in brackets; drop it.
        digits = _PHONE_SEPARATORS.sub("", text.replace("(0)", ""))
        digits = digits[1:] if digits.startswith("+") else digits[2:]
    else:
        if country_code == "1" and len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]  # NANP trunk prefix
        elif digits.startswith("0"):
            digits = digits[1:]  # a single trunk 0
        digits = country_code + digits
    if not _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS:
        raise _Bad(_MALFORMED)
    return "+" + digits


def _normalize_plain(value: object, case_sensitive: bool) -> str:
    text = _as_text(value, numbers_allowed=True)
    return text if case_sensitive else text.casefold()


def normalize_ids(
    columns: Sequence[Sequence[object]],
    kind: str,
    *,
    default_country_code: str = "1",
    case_sensitive: bool | None = None,
    party: str = "this party",
) -> list[str]:
    """Normalize one id per row from one or more id columns.

    Parameters
    ----------
    columns : sequence of sequences
        The id columns, each with one value per row (a composite key has several columns).
    kind : str
        ``"email"``, ``"phone"`` or ``"plain"`` (see the module docstring).
    default_country_code : str, optional
        Country code for national phone numbers (digits, e.g. ``"1"``, ``"44"``).
    case_sensitive : bool or None, optional
        ``None`` uses the kind's default: ``plain`` is case-sensitive; ``email`` and
        ``phone`` are case-insensitive by construction (``True`` is refused for them).
    party : str, optional
        The party's name, used in error messages.

    Returns
    -------
    list of str
        One normalized id per row, in row order.

    Raises
    ------
    ConfigurationError
        Unknown kind, bad country code, impossible case setting, or no column.
    DataError
        Empty table, columns of different lengths, or invalid values (the message gives the
        number of bad rows, the first row numbers and the reasons, never a value).
    """
    one = _row_normalizer(kind, default_country_code, case_sensitive)
    columns = _checked_columns(columns, party)
    bad = _BadRows()
    ids = _normalize_rows(columns, one, 0, bad)
    bad.raise_if_any(party, kind, len(columns[0]))
    return ids


def normalize_id_blocks(
    columns: Sequence[Sequence[object]],
    kind: str,
    *,
    block: int,
    default_country_code: str = "1",
    case_sensitive: bool | None = None,
    party: str = "this party",
) -> Iterator[list[str]]:
    """:func:`normalize_ids`, ``block`` rows at a time: the same ids, block after block.

    For a set too large to hold normalized whole (the streamed alignment consumes it block
    by block). Invalid ids are reported as :func:`normalize_ids` reports them (counts and
    first rows over the whole table), once every block was read: the consumer's work on the
    blocks before is then discarded with the error. The kind, the settings and the columns
    are checked at once, before the first block.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigurationError(f"normalize_id_blocks needs a block of at least 1 row: {block!r}")
    one = _row_normalizer(kind, default_country_code, case_sensitive)
    columns = _checked_columns(columns, party)
    return _normalized_blocks(columns, one, block, party, kind)


def _normalized_blocks(
    columns: list[list[object]],
    one: Callable[[object], str],
    block: int,
    party: str,
    kind: str,
) -> Iterator[list[str]]:
    bad = _BadRows()
    n_rows = len(columns[0])
    for start in range(0, n_rows, block):
        yield _normalize_rows([col[start : start + block] for col in columns], one, start, bad)
    bad.raise_if_any(party, kind, n_rows)


def _checked_columns(columns: Sequence[Sequence[object]], party: str) -> list[list[object]]:
    if isinstance(columns, str | bytes) or any(isinstance(c, str | bytes) for c in columns):
        raise ConfigurationError(
            "normalize_ids takes a sequence of id columns: pass [values] for one column"
        )
    columns = [col if isinstance(col, list) else list(col) for col in columns]
    if not columns:
        raise ConfigurationError("normalize_ids needs at least one id column")
    n_rows = len(columns[0])
    if any(len(col) != n_rows for col in columns):
        lengths = sorted({len(col) for col in columns})
        raise DataError(
            f"party '{party}': the id columns have different lengths ({lengths}); "
            "every id column needs one value per row"
        )
    if n_rows == 0:
        raise DataError(f"party '{party}': the id table is empty (no rows to align)")
    return columns


def _row_normalizer(
    kind: str, default_country_code: str, case_sensitive: bool | None
) -> Callable[[object], str]:
    _check_kind(kind)
    sensitive = _default_case_sensitive(kind, case_sensitive)
    country_code = _check_country_code(default_country_code)
    if kind == "email":
        return _normalize_email
    if kind == "phone":
        return lambda v: _normalize_phone(v, country_code)
    return lambda v: _normalize_plain(v, sensitive)


class _BadRows:
    """The invalid rows met so far, and why (reasons counted)."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.reasons: dict[str, int] = {}

    def raise_if_any(self, party: str, kind: str, n_rows: int) -> None:
        if not self.rows:
            return
        rows = sorted(set(self.rows))
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.reasons.items()))
        raise DataError(
            f"party '{party}': {len(rows)} of {n_rows} rows have an invalid {kind} id "
            f"({why}); first rows: {_rows_text(rows)}"
        )


def _normalize_rows(
    columns: list[list[object]], one: Callable[[object], str], first_row: int, bad: _BadRows
) -> list[str]:
    """One normalized id per row of ``columns`` (rows numbered from ``first_row``)."""
    parts_per_column: list[list[str]] = []
    for col in columns:
        out: list[str] = []
        append = out.append
        for row, value in enumerate(col, start=first_row):
            try:
                append(one(value))
            except _Bad as failure:
                append("")
                bad.rows.append(row)
                bad.reasons[failure.reason] = bad.reasons.get(failure.reason, 0) + 1
        parts_per_column.append(out)
    if len(parts_per_column) == 1:
        return parts_per_column[0]
    return ["".join(f"{len(p)}:{p}" for p in parts) for parts in zip(*parts_per_column)]


def check_unique(ids: Sequence[str], party: str) -> None:
    """Refuse duplicate ids (after normalization) and an empty id list.

    Parameters
    ----------
    ids : sequence of str
        Normalized ids, one per row.
    party : str
        The party's name, used in the error message.

    Raises
    ------
    DataError
        The list is empty, or some ids occur more than once: the message gives how many
        rows repeat an id seen on an earlier row, how many distinct ids are affected, and
        the first of those rows (never an id).
    """
    if len(ids) == 0:
        raise DataError(f"party '{party}': the id table is empty (no rows to align)")
    if len(set(ids)) == len(ids):
        return
    first_seen: dict[str, int] = {}
    repeated_rows: list[int] = []
    repeated_ids: set[int] = set()
    setdefault = first_seen.setdefault
    for row, value in enumerate(ids):
        first = setdefault(value, row)
        if first != row:
            repeated_rows.append(row)
            repeated_ids.add(first)
    if repeated_rows:
        raise DataError(
            f"party '{party}': {len(repeated_rows)} rows repeat an id of an earlier row "
            f"({len(repeated_ids)} distinct ids occur more than once after normalization); "
            f"first repeating rows: {_rows_text(repeated_rows)}. Deduplicate the table "
            "(one row per customer) before alignment"
        )


@dataclass(frozen=True)
class IdSpec:
    """How a party's id columns are normalized; the same for every party of an agreement.

    Parameters
    ----------
    kind : str
        ``"email"``, ``"phone"`` or ``"plain"``.
    columns : tuple of str
        The id column names (several for a composite key), in key order.
    default_country_code : str, optional
        Country code for national phone numbers.
    case_sensitive : bool or None, optional
        ``None``: the kind's default (see :func:`normalize_ids`).

    Raises
    ------
    ConfigurationError
        Unknown kind, no or duplicate column names, bad country code or case setting.
    """

    kind: str
    columns: tuple[str, ...]
    default_country_code: str = "1"
    case_sensitive: bool | None = None

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        columns = self.columns
        if isinstance(columns, str):
            columns = (columns,)
        columns = tuple(columns)
        if not columns:
            raise ConfigurationError("an id spec needs at least one id column")
        for name in columns:
            if not isinstance(name, str) or not name.strip():
                raise ConfigurationError("id column names must be non-empty strings")
        if len(set(columns)) != len(columns):
            raise ConfigurationError("an id column is listed twice in the id spec")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(
            self, "default_country_code", _check_country_code(self.default_country_code)
        )
        if self.case_sensitive is not None and not isinstance(self.case_sensitive, bool):
            raise ConfigurationError("case_sensitive must be true, false or unset")
        _default_case_sensitive(self.kind, self.case_sensitive)

    def normalize(self, table: Mapping[str, Iterable[object]] | Any, *, party: str) -> list[str]:
        """Normalize the id columns of ``table`` (a mapping or a pandas DataFrame).

        Raises
        ------
        DataError
            A listed id column is missing, or see :func:`normalize_ids`.
        """
        return normalize_ids(
            self._columns_of(table, party),
            self.kind,
            default_country_code=self.default_country_code,
            case_sensitive=self.case_sensitive,
            party=party,
        )

    def normalize_blocks(
        self, table: Mapping[str, Iterable[object]] | Any, *, party: str, block: int
    ) -> Iterator[list[str]]:
        """:meth:`normalize`, ``block`` rows at a time (:func:`normalize_id_blocks`)."""
        return normalize_id_blocks(
            self._columns_of(table, party),
            self.kind,
            block=block,
            default_country_code=self.default_country_code,
            case_sensitive=self.case_sensitive,
            party=party,
        )

    def _columns_of(self, table: Mapping[str, Iterable[object]] | Any, party: str) -> list:
        available = set(table.keys())
        missing = [c for c in self.columns if c not in available]
        if missing:
            raise DataError(
                f"party '{party}': id column(s) {', '.join(repr(c) for c in missing)} "
                "not found in the data"
            )
        return [list(table[c]) for c in self.columns]

    def to_dict(self) -> dict[str, object]:
        """A plain, TOML/JSON-friendly dict (``case_sensitive`` left out when unset)."""
        out: dict[str, object] = {
            "kind": self.kind,
            "columns": list(self.columns),
            "default_country_code": self.default_country_code,
        }
        if self.case_sensitive is not None:
            out["case_sensitive"] = self.case_sensitive
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> IdSpec:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ConfigurationError``."""
        allowed = {"kind", "columns", "default_country_code", "case_sensitive"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigurationError(f"unknown id spec key(s): {', '.join(sorted(unknown))}")
        if "kind" not in data or "columns" not in data:
            raise ConfigurationError("an id spec needs 'kind' and 'columns'")
        columns = data["columns"]
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, list | tuple):
            raise ConfigurationError("id spec 'columns' must be a list of column names")
        case = data.get("case_sensitive")
        if case is not None and not isinstance(case, bool):
            raise ConfigurationError("id spec 'case_sensitive' must be true or false")
        return cls(
            kind=str(data["kind"]),
            columns=tuple(columns),
            default_country_code=str(data.get("default_country_code", "1")),
            case_sensitive=case,
        )

"""Reading a party's CSV file, with errors that say what to fix (never the data itself)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vfm_flower.errors import DataError

#: Longest id value read (e-mail addresses stay under 254 characters; a longer value is a
#: mistake, such as a whole record in the id column, and would only cost hashing time).
MAX_ID_LENGTH = 256


def read_party_table(
    path: Path,
    *,
    party: str,
    required_columns: Sequence[str] = (),
    id_columns: Sequence[str] = (),
    id_columns_only: bool = False,
) -> pd.DataFrame:
    """Read ``path`` as CSV; id columns are read as text, exactly as written (with
    ``id_columns_only``, nothing else is read: the alignment's memory is its ids').

    Raises
    ------
    DataError
        Unreadable or empty file, a required column absent (named), or an id longer than
        :data:`MAX_ID_LENGTH` characters (its line named, never its value).
    """
    columns, width = None, None
    try:
        if id_columns_only:  # the header first: a missing id column is named below
            header = pd.read_csv(path, nrows=0).columns
            width = len(header)
            columns = [c for c in header if c in set(id_columns)] or list(header)
        frame = pd.read_csv(
            path,
            dtype={c: str for c in id_columns},
            usecols=columns,
            keep_default_na=True,
            na_values=[""],
        )
    except FileNotFoundError as exc:
        raise DataError(f"party '{party}': data file {path} does not exist") from exc
    except PermissionError as exc:
        raise DataError(f"party '{party}': data file {path} is not readable") from exc
    except (
        pd.errors.EmptyDataError,
        pd.errors.ParserError,
        UnicodeDecodeError,
        ValueError,  # id columns only: the file's header changed between its two reads
    ) as exc:
        raise DataError(f"party '{party}': {path} is not a readable CSV file ({exc})") from exc
    if len(frame) == 0:
        raise DataError(f"party '{party}': {path} has no rows")
    absent = [c for c in [*id_columns, *required_columns] if c not in frame.columns]
    if absent:
        raise DataError(
            f"party '{party}': {path} lacks column(s) {', '.join(map(repr, absent))} "
            f"(it has {width if width is not None else len(frame.columns)} columns)"
        )
    check_id_lengths(frame, id_columns, party)
    return frame


def check_id_lengths(frame: pd.DataFrame, id_columns: Sequence[str], party: str) -> None:
    """Refuse an id longer than :data:`MAX_ID_LENGTH` characters, naming its file lines (never
    its value)."""
    for column in id_columns:
        lengths = frame[column].fillna("").astype(str).str.len().to_numpy()
        long_rows = np.flatnonzero(lengths > MAX_ID_LENGTH)
        if long_rows.size:
            shown = ", ".join(str(r + 2) for r in long_rows[:5])  # file lines (header is 1)
            raise DataError(
                f"party '{party}': {long_rows.size} value(s) of id column '{column}' are longer "
                f"than {MAX_ID_LENGTH} characters (the longest: {int(lengths.max())}; lines "
                f"{shown}{', ...' if long_rows.size > 5 else ''}): not identifiers, check the file"
            )

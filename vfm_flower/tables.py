"""Reading a party's CSV file, with errors that say what to fix (never the data itself)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vfm_flower.errors import DataError


def read_party_table(
    path: Path, *, party: str, required_columns: Sequence[str] = (), id_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Read ``path`` as CSV; id columns are read as text, exactly as written.

    Raises
    ------
    DataError
        Unreadable or empty file, or a required column absent (named).
    """
    try:
        frame = pd.read_csv(
            path,
            dtype={c: str for c in id_columns},
            keep_default_na=True,
            na_values=[""],
        )
    except FileNotFoundError as exc:
        raise DataError(f"party '{party}': data file {path} does not exist") from exc
    except PermissionError as exc:
        raise DataError(f"party '{party}': data file {path} is not readable") from exc
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"party '{party}': {path} is not a readable CSV file ({exc})") from exc
    if len(frame) == 0:
        raise DataError(f"party '{party}': {path} has no rows")
    absent = [c for c in [*id_columns, *required_columns] if c not in frame.columns]
    if absent:
        raise DataError(
            f"party '{party}': {path} lacks column(s) {', '.join(map(repr, absent))} "
            f"(it has {len(frame.columns)} columns)"
        )
    return frame

"""Column preparation: each party turns its own raw columns into a numeric matrix.

A party fits a :class:`PreparationPlan` on its own rows (no other party and no label is
involved), saves it as JSON in its work dir, and applies the *same* plan at scoring time: no
statistic is ever refit on scoring data.

Rules (per requested column)
----------------------------
Missing values are ``NaN``/``None`` and, in text columns, empty strings and the tokens
``na``, ``n/a``, ``nan``, ``null``, ``none`` and ``?`` (any case, surrounding white space
ignored).

1. A column that is not in the frame, or whose values are all missing, is a
   :class:`~vfm_flower.errors.DataError` naming the party and the column.
2. Columns listed in ``categorical`` are categorical whatever their type.
3. Boolean and numeric columns are numeric; non-finite values (``inf``) count as junk.
4. A text column is numeric when at least ``1 - junk_threshold`` of its non-missing values
   parse as finite numbers; the remaining *junk* is treated as missing (a warning gives the
   count, never the values).
5. A text column that mostly parses as numbers (at least half of its non-missing values) but
   has more junk than the threshold is *plausibly categorical* only if it has at most
   ``max_levels`` distinct values (codes such as ``"12"``, ``"12A"``); otherwise it is a
   dirty numeric column and a DataError names the party, the column and the junk share.
6. Any other text column is categorical. A categorical column with more than ``max_levels``
   distinct values that are also more than half of its rows looks like an identifier or
   free text: DataError.

Numeric columns: median imputation, then standardization with the mean and standard
deviation computed *after* imputation. Categorical columns: one-hot over the levels seen at
least ``min_level_count`` times (at most ``max_levels``, most frequent first), plus two
levels always present: ``<missing>`` and ``<other>`` (rarer levels at fit time and levels
never seen at fit time, at scoring). A column that carries no information (a numeric
column with zero spread after imputation, a categorical column whose rows all fall in one
level) is dropped with a logged warning naming it.

The plan stores medians, means, standard deviations and category names of the party's own
columns: it stays in the party's own work dir.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from vfm_flower.errors import DataError

__all__ = [
    "MISSING_LEVEL",
    "OTHER_LEVEL",
    "NumericColumn",
    "CategoricalColumn",
    "PreparationPlan",
    "PreparedColumns",
    "fit_preparation",
    "apply_preparation",
    "encode_labels",
]

logger = logging.getLogger(__name__)

#: A numeric column with more than this share of missing values is imputed with a warning.
HEAVY_IMPUTATION = 0.2

MISSING_LEVEL = "<missing>"
OTHER_LEVEL = "<other>"
_PLAN_VERSION = 1
_NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class NumericColumn:
    """A numeric column: impute with ``median``, then ``(x - mean) / std``."""

    name: str
    median: float
    mean: float
    std: float
    kind: Literal["numeric"] = "numeric"

    @property
    def feature_names(self) -> list[str]:
        """One feature: the column name."""
        return [self.name]


@dataclass(frozen=True)
class CategoricalColumn:
    """A categorical column: one-hot over ``levels`` + ``<missing>`` + ``<other>``.

    ``pooled``: missing values go to the ``<other>`` slot (one of the two had fewer rows than
    the minimum cohort at fit time). ``fallback``: rows of the ``<other>`` slot (and pooled
    missing rows) go to this level instead (the pooled slot was still under the cohort).
    """

    name: str
    levels: tuple[str, ...]
    kind: Literal["categorical"] = "categorical"
    pooled: bool = False
    fallback: str | None = None

    @property
    def feature_names(self) -> list[str]:
        """``name=level`` for each level, then the missing and other levels."""
        return [f"{self.name}={lv}" for lv in (*self.levels, MISSING_LEVEL, OTHER_LEVEL)]


ColumnPlan = NumericColumn | CategoricalColumn


@dataclass(frozen=True)
class PreparationPlan:
    """Everything needed to prepare a party's columns again, without refitting.

    Attributes
    ----------
    party : str
        The party that owns the columns.
    columns : tuple
        Per kept column, a :class:`NumericColumn` or :class:`CategoricalColumn`, in order.
    dropped : tuple of str
        Requested columns dropped because they were constant.
    junk_threshold : float
        Largest share of non-numeric values tolerated in a numeric column.
    """

    party: str
    columns: tuple[ColumnPlan, ...]
    dropped: tuple[str, ...] = ()
    junk_threshold: float = 0.05

    @property
    def feature_names(self) -> list[str]:
        """Names of the prepared matrix's columns, in order."""
        return [f for col in self.columns for f in col.feature_names]

    @property
    def source_columns(self) -> list[str]:
        """Raw columns the plan reads (the kept ones)."""
        return [col.name for col in self.columns]

    def to_json(self) -> str:
        """Serialize (exact float round trip)."""
        cols: list[dict[str, Any]] = []
        for col in self.columns:
            if isinstance(col, NumericColumn):
                cols.append(
                    {
                        "kind": "numeric",
                        "name": col.name,
                        "median": col.median,
                        "mean": col.mean,
                        "std": col.std,
                    }
                )
            else:
                cols.append(
                    {
                        "kind": "categorical",
                        "name": col.name,
                        "levels": list(col.levels),
                        "pooled": col.pooled,
                        "fallback": col.fallback,
                    }
                )
        return json.dumps(
            {
                "version": _PLAN_VERSION,
                "party": self.party,
                "junk_threshold": self.junk_threshold,
                "columns": cols,
                "dropped": list(self.dropped),
            },
            indent=2,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> PreparationPlan:
        """Read a plan written by :meth:`to_json`.

        Raises
        ------
        DataError
            When the text is not a valid plan.
        """
        try:
            data = json.loads(text)
            if data.get("version") != _PLAN_VERSION:
                raise ValueError(f"unsupported plan version {data.get('version')!r}")
            columns: list[ColumnPlan] = []
            for item in data["columns"]:
                if item["kind"] == "numeric":
                    columns.append(
                        NumericColumn(
                            name=str(item["name"]),
                            median=float(item["median"]),
                            mean=float(item["mean"]),
                            std=float(item["std"]),
                        )
                    )
                elif item["kind"] == "categorical":
                    fallback = item.get("fallback")
                    columns.append(
                        CategoricalColumn(
                            name=str(item["name"]),
                            levels=tuple(str(v) for v in item["levels"]),
                            pooled=bool(item.get("pooled", False)),
                            fallback=None if fallback is None else str(fallback),
                        )
                    )
                else:
                    raise ValueError(f"unknown column kind {item['kind']!r}")
            plan = cls(
                party=str(data["party"]),
                columns=tuple(columns),
                dropped=tuple(str(v) for v in data.get("dropped", [])),
                junk_threshold=float(data["junk_threshold"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"preparation plan is malformed: {exc}") from exc
        for col in plan.columns:
            if isinstance(col, NumericColumn) and not (
                math.isfinite(col.median)
                and math.isfinite(col.mean)
                and math.isfinite(col.std)
                and col.std > 0
            ):
                raise DataError(f"preparation plan has bad statistics for column '{col.name}'")
        return plan


@dataclass
class PreparedColumns:
    """A party's prepared matrix.

    Attributes
    ----------
    matrix : numpy.ndarray, shape (n, m), float64
        The prepared values, rows in the frame's order.
    feature_names : list of str
        Names of the ``m`` columns.
    """

    matrix: np.ndarray
    feature_names: list[str]


# --------------------------------------------------------------------------- parsing helpers
def _canon(value: Any) -> str:
    """Canonical text of a non-missing value (``1.0`` -> ``"1"``, stripped)."""
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value).strip()


def _missing_mask(series: pd.Series) -> np.ndarray:
    isna = series.isna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        text = series.astype("string").str.strip().str.lower()
        tokens = text.isin(list(_NA_TOKENS)).fillna(False).to_numpy(dtype=bool)
        isna = isna | tokens
    return np.asarray(isna, dtype=bool)


def _parse_numbers(series: pd.Series, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values as float (NaN where missing or junk) and the junk mask (present, not a number)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype(float).to_numpy()
    elif pd.api.types.is_numeric_dtype(series.dtype):
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = series.astype("string").str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(values, dtype=np.float64).copy()
    values[missing] = np.nan
    junk = ~missing & ~np.isfinite(values)
    values[junk] = np.nan
    return values, junk


def _is_numeric_dtype(series: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype)


def _column(frame: pd.DataFrame, name: str, party: str) -> pd.Series:
    if name not in frame.columns:
        raise DataError(f"party '{party}': column '{name}' is not in the data file")
    col = frame[name]
    if isinstance(col, pd.DataFrame):
        raise DataError(f"party '{party}': column '{name}' appears more than once in the file")
    return col


# --------------------------------------------------------------------------- fitting
def fit_preparation(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    party: str,
    junk_threshold: float = 0.05,
    categorical: Sequence[str] = (),
    max_levels: int = 50,
    min_level_count: int = 5,
    min_cohort: int | None = None,
) -> PreparationPlan:
    """Decide and fit how each of a party's columns is prepared (see the module rules).

    Parameters
    ----------
    frame : pandas.DataFrame
        The party's rows (its own columns only).
    columns : sequence of str
        The feature columns to prepare, in order.
    party : str
        The party's name (for error messages).
    junk_threshold : float
        Largest share of non-numeric values in a numeric column, in [0, 1).
    categorical : sequence of str
        Columns to treat as categorical even if they hold numbers (codes).
    max_levels : int
        Most one-hot levels kept per categorical column (the rest goes to ``<other>``).
    min_level_count : int
        Levels seen fewer times go to ``<other>``.
    min_cohort : int, optional
        The agreement's minimum cohort (feature cohorts): no one-hot slot and no binary
        value may single out fewer customers. Levels under it go to ``<other>``;
        ``<missing>`` and ``<other>`` are pooled when either is under it, and the pooled slot
        goes to the most frequent level when it still is; a column with fewer present values,
        or a two-valued numeric column whose rarer value has fewer rows, is dropped with a
        warning naming it. Overrides ``min_level_count`` when larger.

    Returns
    -------
    PreparationPlan

    Raises
    ------
    DataError
        A requested column is absent, entirely missing, dirty numeric, or identifier-like;
        or no column is left.
    """
    if not 0.0 <= junk_threshold < 1.0:
        raise DataError(f"party '{party}': junk_threshold must be in [0, 1), got {junk_threshold}")
    if len(set(columns)) != len(columns):
        raise DataError(f"party '{party}': a feature column is listed twice")
    unknown_cat = [c for c in categorical if c not in columns]
    if unknown_cat:
        raise DataError(
            f"party '{party}': categorical column(s) {unknown_cat} are not among the features"
        )
    forced = set(categorical)
    cohort = int(min_cohort or 0)
    min_level_count = max(min_level_count, cohort)
    plans: list[ColumnPlan] = []
    dropped: list[str] = []
    for name in columns:
        series = _column(frame, name, party)
        missing = _missing_mask(series)
        n_present = int((~missing).sum())
        if n_present == 0:
            raise DataError(
                f"party '{party}': column '{name}' has no value in any of its {len(series)} rows"
            )
        if n_present < cohort:
            dropped.append(name)
            logger.warning(
                "party '%s': column '%s' has values for fewer customers than the minimum "
                "cohort (%d) and was dropped",
                party,
                name,
                cohort,
            )
            continue
        plan: ColumnPlan | None
        if name in forced:
            plan = _fit_categorical(series, missing, name, party, max_levels, min_level_count)
        else:
            values, junk = _parse_numbers(series, missing)
            n_junk = int(junk.sum())
            share_numbers = (n_present - n_junk) / n_present
            if _is_numeric_dtype(series) or share_numbers >= 1.0 - junk_threshold:
                if n_junk and n_junk > junk_threshold * n_present:
                    raise DataError(
                        f"party '{party}': column '{name}' has {n_junk} non-finite values "
                        f"({n_junk / n_present:.1%}, limit {junk_threshold:.1%}: the job "
                        "parameter junk-threshold)"
                    )
                if n_junk:
                    logger.warning(
                        "party '%s': column '%s': %d non-numeric value(s) (%.1f%%) treated as "
                        "missing",
                        party,
                        name,
                        n_junk,
                        100.0 * n_junk / n_present,
                    )
                imputed = int((~np.isfinite(values)).sum())
                if imputed > HEAVY_IMPUTATION * len(values):
                    logger.warning(
                        "party '%s': column '%s': %d of %d values (%.0f%%) are missing or not "
                        "numbers, imputed with the median: check the column, or leave it out",
                        party,
                        name,
                        imputed,
                        len(values),
                        100.0 * imputed / len(values),
                    )
                plan = _fit_numeric(values, name)
                if plan is not None and cohort and _isolates_few(values, cohort):
                    dropped.append(name)
                    logger.warning(
                        "party '%s': two-valued column '%s' has a value held by fewer "
                        "customers than the minimum cohort (%d) and was dropped",
                        party,
                        name,
                        cohort,
                    )
                    continue
            else:
                n_distinct = series[~missing].map(_canon).nunique()
                if share_numbers >= 0.5 and n_distinct > max_levels:
                    raise DataError(
                        f"party '{party}': column '{name}' looks numeric but "
                        f"{n_junk / n_present:.1%} of its {n_present} values are not numbers "
                        f"(limit {junk_threshold:.1%}); clean the column, raise the job "
                        "parameter junk-threshold (within the agreement's bound), or leave the "
                        "column out"
                    )
                plan = _fit_categorical(series, missing, name, party, max_levels, min_level_count)
        if isinstance(plan, CategoricalColumn) and cohort:
            plan = _cohort_safe(plan, series, missing, cohort, party)
        if plan is None:
            dropped.append(name)
            logger.warning("party '%s': column '%s' is constant and was dropped", party, name)
        else:
            plans.append(plan)
    if not plans:
        raise DataError(f"party '{party}': no usable feature column left (all constant)")
    return PreparationPlan(
        party=party, columns=tuple(plans), dropped=tuple(dropped), junk_threshold=junk_threshold
    )


def _isolates_few(values: np.ndarray, cohort: int) -> bool:
    """A numeric column with two distinct values, the rarer one held by < ``cohort`` rows."""
    present = values[np.isfinite(values)]
    distinct, counts = np.unique(present, return_counts=True)
    return distinct.size == 2 and int(counts.min()) < cohort


def _cohort_safe(
    plan: CategoricalColumn, series: pd.Series, missing: np.ndarray, cohort: int, party: str
) -> CategoricalColumn | None:
    """Pool ``<missing>`` and ``<other>`` (and fall back to the mode) so no slot is small."""
    text = series[~missing].map(_canon)
    counts = text.value_counts()
    n_missing = int(missing.sum())
    n_other = int(text.size) - int(sum(int(counts[lv]) for lv in plan.levels))
    pooled = 0 < n_missing < cohort or 0 < n_other < cohort
    fallback = None
    if pooled and 0 < n_missing + n_other < cohort and plan.levels:
        fallback = max(plan.levels, key=lambda lv: (int(counts[lv]), lv))
    if pooled:
        logger.warning(
            "party '%s': column '%s': rare and missing values pooled%s (minimum cohort %d)",
            party,
            plan.name,
            f" into level '{fallback}'" if fallback else "",
            cohort,
        )
    used = len(plan.levels) + int(n_missing + n_other > 0 and fallback is None)
    if used <= 1:
        return None
    return CategoricalColumn(plan.name, plan.levels, pooled=pooled, fallback=fallback)


def _fit_numeric(values: np.ndarray, name: str) -> NumericColumn | None:
    present = values[np.isfinite(values)]
    median = float(np.median(present))
    filled = np.where(np.isfinite(values), values, median)
    mean = float(filled.mean())
    std = float(filled.std())
    if not (std > 1e-12 * max(1.0, abs(mean))) or not math.isfinite(std):
        return None
    return NumericColumn(name=name, median=median, mean=mean, std=std)


def _fit_categorical(
    series: pd.Series,
    missing: np.ndarray,
    name: str,
    party: str,
    max_levels: int,
    min_level_count: int,
) -> CategoricalColumn | None:
    text = series[~missing].map(_canon)
    counts = text.value_counts()
    n_present = int(text.size)
    if counts.size > max_levels and counts.size > 0.5 * n_present:
        raise DataError(
            f"party '{party}': column '{name}' has {counts.size} distinct values for "
            f"{n_present} rows: it looks like an identifier or free text, not a feature"
        )
    frequent = counts[counts >= max(min_level_count, 1)]
    ordered = sorted(frequent.index, key=lambda lv: (-int(frequent[lv]), lv))[:max_levels]
    levels = tuple(sorted(ordered))
    # The column is constant when every row falls in a single one-hot slot.
    n_missing = int(missing.sum())
    n_other = n_present - int(sum(int(counts[lv]) for lv in levels))
    used = len(levels) + int(n_missing > 0) + int(n_other > 0)
    if used <= 1:
        return None
    return CategoricalColumn(name=name, levels=levels)


# --------------------------------------------------------------------------- applying
def apply_preparation(plan: PreparationPlan, frame: pd.DataFrame) -> PreparedColumns:
    """Prepare rows with a saved plan (no statistic is refit).

    Parameters
    ----------
    plan : PreparationPlan
        The plan fitted on the party's training rows.
    frame : pandas.DataFrame
        Rows to prepare (training or scoring), with the plan's columns.

    Returns
    -------
    PreparedColumns

    Raises
    ------
    DataError
        A plan column is absent, or a numeric column has more junk than the plan allows.
    """
    n = len(frame)
    blocks: list[np.ndarray] = []
    for col in plan.columns:
        series = _column(frame, col.name, plan.party)
        missing = _missing_mask(series)
        if isinstance(col, NumericColumn):
            values, junk = _parse_numbers(series, missing)
            n_junk = int(junk.sum())
            n_present = int((~missing).sum())
            if n_junk:
                if n_junk > plan.junk_threshold * max(n_present, 1):
                    raise DataError(
                        f"party '{plan.party}': numeric column '{col.name}' has {n_junk} "
                        f"non-numeric value(s) ({n_junk / max(n_present, 1):.1%}, "
                        f"limit {plan.junk_threshold:.1%})"
                    )
                logger.warning(
                    "party '%s': column '%s': %d non-numeric value(s) treated as missing",
                    plan.party,
                    col.name,
                    n_junk,
                )
            filled = np.where(np.isfinite(values), values, col.median)
            blocks.append(((filled - col.mean) / col.std).reshape(n, 1))
        else:
            width = len(col.levels) + 2
            index = {lv: i for i, lv in enumerate(col.levels)}
            slots = np.full(n, width - 1, dtype=np.int64)  # <other> unless known
            present = ~missing
            if present.any():
                known = series[present].map(_canon).map(index)
                slots[present] = known.fillna(width - 1).to_numpy(dtype=np.int64)
            slots[missing] = width - 1 if col.pooled else width - 2
            if col.fallback is not None:
                slots[slots >= width - 2] = index[col.fallback]
            onehot = np.zeros((n, width))
            onehot[np.arange(n), slots] = 1.0
            blocks.append(onehot)
    matrix = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return PreparedColumns(
        matrix=np.ascontiguousarray(matrix, dtype=np.float64), feature_names=plan.feature_names
    )


# --------------------------------------------------------------------------- labels
_TRUE_LIKE = frozenset({"1", "true"})
_FALSE_LIKE = frozenset({"0", "false"})


def encode_labels(
    values: Sequence[Any] | pd.Series | np.ndarray,
    positive_class: str | None,
    *,
    party: str,
) -> np.ndarray:
    """Encode a label column as 0/1.

    Parameters
    ----------
    values : sequence
        The label column, in row order.
    positive_class : str or None
        The value meaning "positive" (compared on stripped text, ``1.0`` equals ``"1"``);
        every other value is negative. ``None``: the labels must be 0/1, ``"0"``/``"1"`` or
        True/False.
    party : str
        The label owner's name (for error messages).

    Returns
    -------
    numpy.ndarray of int8

    Raises
    ------
    DataError
        A label is missing, only one class occurs, or (without ``positive_class``) the
        labels are not a 0/1 coding. Messages give counts, never label values of rows.
    """
    series = pd.Series(list(values) if not isinstance(values, pd.Series) else values.to_numpy())
    if series.size == 0:
        raise DataError(f"party '{party}': the label column is empty")
    missing = _missing_mask(series.astype(object))
    if missing.any():
        raise DataError(
            f"party '{party}': {int(missing.sum())} of {series.size} rows have no label; "
            f"remove or fill them"
        )
    text = series.map(_canon)
    if positive_class is not None:
        positive = _canon(positive_class)
        labels = (text == positive).to_numpy()
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            hint = " (check the spelling and case of the positive class)" if n_pos == 0 else ""
            raise DataError(
                f"party '{party}': only one class: {n_pos} of {labels.size} rows are the "
                f"positive class{hint}"
            )
        n_classes = int(text.nunique())
        if n_classes > 2:
            logger.info(
                "party '%s': %d label values, the positive class against the %d others",
                party,
                n_classes,
                n_classes - 1,
            )
        return labels.astype(np.int8)
    lowered = text.str.lower()
    counts = sorted((int(c) for c in lowered.value_counts().to_numpy()), reverse=True)
    if len(counts) == 1:
        raise DataError(f"party '{party}': only one class: all {series.size} rows have one label")
    if len(counts) > 2:
        raise DataError(
            f"party '{party}': the label column has {len(counts)} distinct values "
            f"(row counts {counts}); give the positive class to train positive vs. rest"
        )
    distinct = set(lowered.unique())
    if not distinct <= (_TRUE_LIKE | _FALSE_LIKE) or len(distinct & _TRUE_LIKE) != 1:
        raise DataError(
            f"party '{party}': the label column has 2 values (row counts {counts}) that are "
            f"not a 0/1 coding; say which one is the positive class"
        )
    return lowered.isin(list(_TRUE_LIKE)).to_numpy().astype(np.int8)

"""Audience segments: rank scored rows into bands and summarise each band.

Who learns what: the party that holds the scores (the result owner, at scoring) puts each row
in a segment by the rank of its score and writes the summaries next to its audience export
(``scores.segments.json``). A summary releases rows, share and (given labels) response rate or
mean and lift per segment; a segment below the agreement's minimum cohort is withheld (its
name kept, marked ``suppressed``), with complementary suppression so that the withheld rows
cannot be recovered from the released totals (see :func:`segment_summaries`).

The names are re-exported by :mod:`vfm_flower.report` (``from vfm_flower.report import
assign_segments`` keeps working).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vfm_flower.errors import ConfigurationError
from vfm_flower.policy import withhold_small_cells
from vfm_flower.report_figures import _check_min_cohort_value, _vector

__all__ = ["assign_segments", "parse_segments", "segment_summaries"]

_TOKEN = re.compile(r"^(?:top(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)|rest)$")


def _num(x: float) -> str:
    return f"{x:g}"


def parse_segments(spec: str) -> list[tuple[str, float, float]]:
    """The bands of a segment spec (``deciles`` or ``top10,10-30,rest``): ``(name, from %,
    to %)``; a spec that is not understood is a ``ConfigurationError`` saying why."""
    text = str(spec).strip().lower()
    if text == "deciles":
        return [(f"decile {k}", 10.0 * (k - 1), 10.0 * k) for k in range(1, 11)]
    tokens = [re.sub(r"[\s%]", "", t) for t in text.split(",")]
    out: list[tuple[str, float, float]] = []
    prev = 0.0
    for i, tok in enumerate(tokens):
        m = _TOKEN.match(tok)
        if not m:
            raise ConfigurationError(
                f"segment '{tok}' in {spec!r} is not understood: use 'deciles' or bands such "
                "as 'top10,10-30,rest' (percent of rows ranked by score)"
            )
        if tok == "rest":
            if i != len(tokens) - 1:
                raise ConfigurationError(f"'rest' must be the last segment in {spec!r}")
            lo, hi, name = prev, 100.0, "rest"
        elif m.group(1) is not None:
            lo, hi = 0.0, float(m.group(1))
            name = f"top {_num(hi)}%"
        else:
            lo, hi = float(m.group(2)), float(m.group(3))
            name = f"{_num(lo)}-{_num(hi)}%"
        if lo != prev:
            raise ConfigurationError(
                f"segments in {spec!r} must be contiguous from 0%: '{tok}' starts at "
                f"{_num(lo)}%, expected {_num(prev)}%"
            )
        if not lo < hi <= 100.0:
            raise ConfigurationError(f"segment '{tok}' in {spec!r} is empty or beyond 100%")
        out.append((name, lo, hi))
        prev = hi
    if prev != 100.0:
        raise ConfigurationError(
            f"segments in {spec!r} end at {_num(prev)}%: end at 100 or with 'rest'"
        )
    return out


def assign_segments(
    scores: np.ndarray, segments: str = "deciles"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Put each row in a segment by the rank of its score (best first).

    Parameters
    ----------
    scores : numpy.ndarray
        One score per row, higher meaning better.
    segments : str
        ``"deciles"`` (``"decile 1"`` = the best 10 % of rows ... ``"decile 10"``) or
        comma-separated bands of percent of rows: ``"top10,10-30,rest"`` gives ``"top 10%"``,
        ``"10-30%"`` and ``"rest"``. Bands must be contiguous from 0 and reach 100 (``rest``
        reaches it).

    Returns
    -------
    (segment_of_row, segments) : tuple
        A string array with the segment name of each row (row order), and one dict per
        segment, best first: ``segment``, ``from_percent``, ``to_percent``, ``rows``.
        Band boundaries fall at ``round(percent * n / 100)`` rows; ties in score are broken
        by row position (earlier row first), so the result is deterministic.

    Raises
    ------
    ConfigurationError
        An unreadable segment specification.
    ValueError
        Non-finite scores.
    """
    bands = parse_segments(segments)
    s = _vector("scores", scores)
    n = s.size
    order = np.argsort(-s, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ends = np.array([int(np.rint(hi * n / 100.0)) for _, _, hi in bands], dtype=np.int64)
    index = np.searchsorted(ends, position, side="right")
    names = [name for name, _, _ in bands]
    width = max(len(x) for x in names)
    segment_of_row = np.array(names, dtype=f"<U{width}")[index]
    counts = np.bincount(index, minlength=len(bands))
    specs = [
        {"segment": name, "from_percent": lo, "to_percent": hi, "rows": int(counts[i])}
        for i, (name, lo, hi) in enumerate(bands)
    ]
    return segment_of_row, specs


def _segment_order_key(name: str) -> tuple[float, str]:
    m = re.fullmatch(r"decile (\d+)", name)
    if m:
        return float(m.group(1)), name
    if name.startswith("top "):
        return 0.0, name
    if name == "rest":
        return 100.0, name
    m = re.match(r"(\d+(?:\.\d+)?)-", name)
    if m:
        return float(m.group(1)), name
    return math.inf, name


def segment_summaries(
    segment_of_row: Any,
    labels_or_none: Any,
    min_cohort: int,
    *,
    segments: Sequence[Mapping[str, Any] | str] | None = None,
) -> list[dict[str, Any]]:
    """Rows, share and (with labels) response rate and lift per segment.

    Parameters
    ----------
    segment_of_row : array_like
        Segment name of each row (from :func:`assign_segments`).
    labels_or_none : array_like or None
        Outcomes of the same rows (0/1 gives ``response_rate``; other numbers give ``mean``),
        or ``None`` for rows and share only.
    min_cohort : int
        Segments with fewer rows are withheld (name kept, ``suppressed: True``, no figures),
        plus further segments, smallest first, until the withheld ones together cover at
        least ``min_cohort`` rows (otherwise the totals would reveal them).
    segments : sequence, optional
        The segment list of :func:`assign_segments` (or names): fixes the order and lists
        empty segments too. Default: the names present, in band order.

    Returns
    -------
    list of dict
        Per segment: ``segment``, ``suppressed`` and, unless suppressed, ``rows``, ``share``
        and with labels ``response_rate`` (or ``mean``) and ``lift`` (segment rate / overall
        rate, ``None`` when the overall rate is 0). Suppressed ones carry ``reason``.
    """
    min_cohort = _check_min_cohort_value(min_cohort)
    seg = np.asarray(segment_of_row).astype(str).ravel()
    n = seg.size
    if segments is not None:
        names = [str(s["segment"]) if isinstance(s, Mapping) else str(s) for s in segments]
        unknown = set(np.unique(seg).tolist()) - set(names)
        if unknown:
            raise ValueError(f"rows belong to {len(unknown)} segment(s) not in the segment list")
    else:
        names = sorted(set(np.unique(seg).tolist()), key=_segment_order_key)
    labels: np.ndarray | None = None
    binary = False
    if labels_or_none is not None:
        labels = _vector("labels", labels_or_none, n)
        binary = bool(np.all((labels == 0) | (labels == 1)))
    overall = float(labels.mean()) if labels is not None and n else None
    rows = [int(np.sum(seg == name)) for name in names]
    primary, secondary = withhold_small_cells(rows, min_cohort)
    out: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        if i in primary or i in secondary:
            out.append(
                {
                    "segment": name,
                    "suppressed": True,
                    "reason": f"fewer than {min_cohort} rows (minimum cohort)"
                    if i in primary
                    else "withheld with the small segment(s): the totals would reveal them",
                }
            )
            continue
        entry: dict[str, Any] = {
            "segment": name,
            "suppressed": False,
            "rows": rows[i],
            "share": rows[i] / n,
        }
        if labels is not None:
            rate = float(labels[seg == name].mean())
            entry["response_rate" if binary else "mean"] = rate
            entry["lift"] = rate / overall if overall else None
        out.append(entry)
    return out

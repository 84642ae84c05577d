"""The segment statistics report: customers and target per segment, as the result owner reads it.

Content (``segments.json``): the job header, the segment column (party, column), the target
(the label's rate, or a numeric column's mean, with its clipping bounds), the noise (none:
exact figures; or the mechanism, epsilon and delta spent and the scales), and per value of
the column: ``customers`` and ``rate`` or ``mean``, or ``suppressed`` with the reason. It is
what the label owner released (:func:`vfm_flower.segment_stats.release_cells`), nothing more.
The page (``segments.html``) shows the same table; it opens offline, every value escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from vfm_flower.agreement import Agreement
    from vfm_flower.jobs import Job
    from vfm_flower.jobs_builtin import SegmentParams

SEGMENTS_JSON = "segments.json"
SEGMENTS_HTML = "segments.html"

__all__ = ["SEGMENTS_HTML", "SEGMENTS_JSON", "build_segment_report", "write_segment_report"]


def build_segment_report(
    cells: Sequence[Mapping[str, Any]], params: SegmentParams, agreement: Agreement, job: Job
) -> dict[str, Any]:
    """The report's content from the released cells and the job's parameters."""
    from vfm_flower.privacy import NoiseSpec
    from vfm_flower.report import report_header

    label = params.target_party == agreement.label_owner and not params.target_column
    noise: dict[str, Any] | None = None
    if params.noised:
        half = NoiseSpec(params.noise, params.epsilon, params.delta).halves()
        noise = {
            "mechanism": params.noise,
            "epsilon": params.epsilon,
            "delta": params.delta if params.noise == "gaussian" else 0.0,
            "count_scale": half.scale(1),
            "sum_scale": half.scale(params.target_max - params.target_min),
            "sum_sensitivity": params.target_max - params.target_min,
        }
    return {
        "kind": "segments",
        "header": report_header(agreement, job),
        "segment": {"party": params.segment_party, "column": params.segment_column},
        "target": {
            "party": params.target_party,
            "column": params.target_column or agreement.label_column,
            "statistic": "rate" if label else "mean",
            "clipped_to": [params.target_min, params.target_max],
        },
        "min_cohort": agreement.min_cohort,
        "noise": noise,
        "cells": [dict(c) for c in cells],
        "released": sum(1 for c in cells if not c["suppressed"]),
    }


def render_segment_html(report: Mapping[str, Any]) -> str:
    from vfm_flower.report_render import _e, _header_block, _page, _table

    target = report["target"]
    statistic = target["statistic"]
    rows = []
    for cell in report["cells"]:
        if cell["suppressed"]:
            rows.append([cell["segment"], "withheld", "", cell.get("reason", "")])
            continue
        value = cell.get(statistic)
        shown = (
            ""
            if value is None
            else (f"{100 * value:.1f}%" if statistic == "rate" else f"{value:,.2f}")
        )
        rows.append([cell["segment"], f"{cell['customers']:,}", shown, ""])
    noise = report.get("noise")
    how = (
        "Exact figures: every released cell equals the plain group-by over the shared customers."
        if not noise
        else f"Noised with {noise['mechanism']} noise, epsilon {noise['epsilon']:g}"
        + (f", delta {noise['delta']:g}" if noise.get("delta") else "")
        + f" (count scale {noise['count_scale']:.3g}, sum scale {noise['sum_scale']:.3g}),"
        " charged to the agreement's privacy budget."
    )
    body = [
        "<h1>Segment statistics</h1>",
        f'<p class="sub">{_e(target["statistic"].capitalize())} of {_e(target["party"])}\'s '
        f"'{_e(target['column'])}' (clipped to {_e(target['clipped_to'])}) per value of "
        f"{_e(report['segment']['party'])}'s '{_e(report['segment']['column'])}', over the "
        "customers every party holds, computed under encryption.</p>",
        _header_block(report.get("header", {})),
        f'<p class="muted">{_e(how)} Cells under the minimum cohort of '
        f"{int(report['min_cohort']):,} customers are withheld.</p>",
        _table(["Value", "Customers", statistic.capitalize(), "Withheld because"], rows),
        "<footer>vfm-flower segment statistics.</footer>",
    ]
    return _page("Segment statistics", "".join(body))


def write_segment_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``segments.json`` and ``segments.html`` (page rendered first, both atomically)."""
    from vfm_flower.report_render import _write_pair

    return _write_pair(report, render_segment_html, Path(out_dir), SEGMENTS_JSON, SEGMENTS_HTML)

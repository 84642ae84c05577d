"""The overlap report: how many customers the parties share, as the result owner reads it.

Content (``overlap.json``): the job header, every party's customer count (from the signed
hellos), the overlap of each partner with the label owner and across all parties with their
match rates (a figure below the minimum intersection is ``null``: withheld), the gate's
verdict, and, if the job named a segment column, its cells (customers every party holds per
value; cells under the minimum cohort withheld, with complementary suppression). Nothing in
it identifies a customer: it is what :func:`vfm_flower.overlap.release_overlap` released.

The page (``overlap.html``) draws the same figures and nothing else: plain-language lines, a
table, a Venn-style chart (inline SVG: each circle's area is proportional to its party's
customers, each partner's overlap with the label owner to the area of its lens) and the
segment table. It opens offline, every value escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from vfm_flower.agreement import Agreement
    from vfm_flower.jobs import Job
    from vfm_flower.overlap import OverlapRelease

OVERLAP_JSON = "overlap.json"
OVERLAP_HTML = "overlap.html"

__all__ = [
    "OVERLAP_HTML",
    "OVERLAP_JSON",
    "build_overlap_report",
    "overlap_summary",
    "venn_svg",
    "write_overlap_report",
]


def build_overlap_report(release: OverlapRelease, agreement: Agreement, job: Job) -> dict[str, Any]:
    """The report's content: the header and the released figures, with plain-language lines."""
    from vfm_flower.report import report_header

    report = {"kind": "overlap", "header": report_header(agreement, job), **release.to_dict()}
    report["summary"] = overlap_summary(report)
    return report


def _count(n: Any) -> str:
    return "withheld" if n is None else f"{int(n):,}"


def _rate(r: Any, whose: str = "its") -> str:
    return "" if r is None else f" ({100 * float(r):.1f}% of {whose} customers)"


def overlap_summary(report: Mapping[str, Any]) -> list[str]:
    """Plain-language lines: each partner's overlap, all parties', the verdict."""
    lo = report["label_owner"]
    minimum = int(report["min_intersection"])
    whose = f"{lo}'s"
    lines = []
    for party, entry in report["with_label_owner"].items():
        n = entry["customers"]
        if n is None:
            lines.append(
                f"{party} shares fewer than {minimum:,} customers with {lo} (the minimum "
                "intersection): the exact figure is withheld."
            )
        else:
            rate = _rate(entry["match_rate"], whose)
            lines.append(f"{party} shares {n:,} customers with {lo}{rate}.")
    total = report["all_parties"]["customers"]
    if total is None:
        lines.append(
            f"All parties share fewer than {minimum:,} customers, the agreement's minimum "
            "intersection: a model cannot be trained on their joint customers."
        )
    else:
        lines.append(
            f"All parties share {total:,} customers"
            f"{_rate(report['all_parties']['match_rate'], whose)}"
            f": at least the minimum intersection of {minimum:,}, enough to train a model."
        )
    segment = report.get("segment")
    if segment:
        kept = [c for c in segment["cells"] if not c["suppressed"]]
        line = (
            f"By {segment['party']}'s column '{segment['column']}': {len(kept)} of "
            f"{len(segment['cells'])} values released"
        )
        if len(kept) < len(segment["cells"]):
            line += f" (the minimum cohort is {int(report['min_cohort']):,} customers)"
        lines.append(line + ".")
    return lines


def _share(rate: Any) -> str:
    return "withheld" if rate is None else f"{100 * float(rate):.1f}%"


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two circles of radii ``r1``, ``r2`` at distance ``d``."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = r1 * r1 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    k = 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return a1 + a2 - k


def _distance_for(r1: float, r2: float, area: float) -> float:
    """The centre distance at which two circles overlap by ``area`` (bisection)."""
    lo, hi = abs(r1 - r2), r1 + r2
    for _ in range(60):
        mid = (lo + hi) / 2
        if _lens_area(r1, r2, mid) > area:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def venn_svg(report: Mapping[str, Any], size: int = 600) -> str:
    """The Venn-style chart: the label owner's circle in the middle, one circle per partner
    around it overlapping it by that partner's released overlap (a withheld overlap is drawn
    as touching circles, labelled withheld). Areas are proportional to customers."""
    from vfm_flower.report_render import _e

    sizes = {p: int(n) for p, n in report["set_sizes"].items()}
    lo = report["label_owner"]
    partners = list(report["with_label_owner"])
    biggest = max(max(sizes.values()), 1)
    # px^2 of area per customer: the biggest circle has radius 0.17 size
    scale = math.pi * (size * 0.17) ** 2 / biggest
    radius = {p: max(math.sqrt(scale * sizes[p] / math.pi), 6.0) for p in sizes}
    cx = cy = 0.0
    colours = ["#e07b1a", "#2a9d8f", "#8e5bb5", "#c23b4a", "#4f7d2b", "#b08a12"]
    circles = [(cx, cy, radius[lo], "#1f5fa8", 0.30)]
    labels = [(cx, cy - radius[lo] - 10, f"{lo}: {sizes[lo]:,}", "#1f5fa8", 600)]
    for i, party in enumerate(partners):
        n = report["with_label_owner"][party]["customers"]
        area = 0.0 if n is None else scale * int(n)
        d = _distance_for(radius[lo], radius[party], area)
        angle = 2 * math.pi * i / max(len(partners), 1)
        px, py = cx + d * math.cos(angle), cy + d * math.sin(angle)
        colour = colours[i % len(colours)]
        circles.append((px, py, radius[party], colour, 0.28))
        labels.append((px, py - radius[party] - 10, f"{party}: {sizes[party]:,}", colour, 600))
        lens = (radius[lo] + d - radius[party]) / 2 if d > 0 else 0.0
        labels.append(
            (cx + lens * math.cos(angle), cy + lens * math.sin(angle), _count(n), "#1d2430", 700)
        )
    total = report["all_parties"]["customers"]
    labels.append((cx, cy + radius[lo] + 22, f"all parties: {_count(total)}", "#1d2430", 700))
    margin = 90.0
    left = min(x - r for x, _, r, _, _ in circles) - margin
    top = min(y - r for _, y, r, _, _ in circles) - 30.0
    width = max(x + r for x, _, r, _, _ in circles) + margin - left
    height = max(y + r for _, y, r, _, _ in circles) + 40.0 - top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{left:.1f} {top:.1f} {width:.1f} '
        f'{height:.1f}" width="{width:.0f}" height="{height:.0f}" role="img" '
        'aria-label="overlap of the parties\' customers" style="display:block;margin:0 auto">'
    ]
    for x, y, r, colour, opacity in circles:
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}" '
            f'fill-opacity="{opacity}" stroke="{colour}" stroke-width="2"/>'
        )
    for x, y, text, colour, weight in labels:
        parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" font-size="14" '
            f'font-family="Arial, sans-serif" font-weight="{weight}" fill="{colour}">'
            f"{_e(text)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_overlap_html(report: Mapping[str, Any]) -> str:
    """The overlap page, from the report's JSON alone."""
    from vfm_flower.report_render import _e, _header_block, _page, _table

    lo = report["label_owner"]
    rows = [
        [p, f"{n:,}", "label owner" if p == lo else "partner"]
        for p, n in report["set_sizes"].items()
    ]
    overlaps = [
        [
            f"{p} and {lo}",
            _count(e["customers"]),
            _share(e["match_rate"]),
        ]
        for p, e in report["with_label_owner"].items()
    ]
    everyone = report["all_parties"]
    overlaps.append(
        [
            "all parties",
            _count(everyone["customers"]),
            "withheld"
            if everyone["match_rate"] is None
            else f"{100 * everyone['match_rate']:.1f}%",
        ]
    )
    verdict = (
        "enough joint customers to train a model"
        if report["verdict"] == "ok"
        else "below the minimum intersection: no model can be trained on these joint customers"
    )
    body = [
        "<h1>Customer overlap</h1>",
        f'<p class="sub">How many customers the parties share: counts only; no party, the '
        f"label owner included, learned which customers they are. Verdict: "
        f"<b>{_e(verdict)}</b> (minimum intersection {int(report['min_intersection']):,}).</p>",
        _header_block(report.get("header", {})),
        '<div class="summary">'
        + "".join(f"<p>{_e(line)}</p>" for line in report.get("summary", []))
        + "</div>",
        "<h2>Customers per party</h2>",
        _table(["Party", "Customers", "Role"], rows),
        "<h2>Overlap</h2>",
        _table(["Shared by", "Customers", f"Share of {lo}'s customers"], overlaps),
        '<figure id="venn">' + venn_svg(report) + "<figcaption>Circle areas are proportional "
        f"to each party's customers; each partner's lens with {_e(lo)} to their overlap. "
        "Partners' overlaps with each other are not measured.</figcaption></figure>",
    ]
    segment = report.get("segment")
    if segment:
        cells = [
            [c["segment"], "withheld", "", c.get("reason", "")]
            if c["suppressed"]
            else [c["segment"], f"{c['customers']:,}", f"{100 * c['share']:.1f}%", ""]
            for c in segment["cells"]
        ]
        body += [
            f"<h2>Overlap by {_e(segment['party'])}'s column '{_e(segment['column'])}'</h2>",
            '<p class="muted">Customers every party holds, per value; values under the '
            f"minimum cohort of {int(report['min_cohort']):,} are withheld.</p>",
            _table(["Value", "Customers", "Share", "Withheld because"], cells),
        ]
    body.append(
        "<footer>vfm-flower overlap report: private set intersection cardinality; the "
        "figures are exact, and every released one passed the agreement's gates.</footer>"
    )
    return _page("Customer overlap", "".join(body))


def write_overlap_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``overlap.json`` and ``overlap.html`` (page rendered first, both atomically)."""
    from vfm_flower.report_render import _write_pair

    return _write_pair(report, render_overlap_html, Path(out_dir), OVERLAP_JSON, OVERLAP_HTML)

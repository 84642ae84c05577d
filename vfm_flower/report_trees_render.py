"""``tree_report.json`` / ``tree_report.html`` of the trees (multiclass page; binary and
squared error use the shared marketing page of :mod:`vfm_flower.report_render`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vfm_flower.report_render import (
    _e,
    _f,
    _header_block,
    _page,
    _table,
    _write_pair,
    trees_block,
    write_released_report,
)

TREE_REPORT_JSON = "tree_report.json"
TREE_REPORT_HTML = "tree_report.html"


def write_tree_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write the trees' report from the released JSON alone (atomically): the multiclass page,
    or the shared marketing page (``report.json`` / ``report.html``) for the other objectives."""
    if report.get("model") != "multiclass":
        return write_released_report(report, out_dir)
    return _write_pair(
        report, _render_multiclass, Path(out_dir), TREE_REPORT_JSON, TREE_REPORT_HTML
    )


def _pct(value: Any) -> str:
    return "withheld" if value is None else f"{100 * float(value):.1f}%"


def _render_multiclass(report: Mapping[str, Any]) -> str:
    party = str(report["party"])
    mc = int(report["min_cohort"])
    top = report.get("top_k_accuracy", {})
    parts = [
        "<h1>Federated gradient-boosted trees: next-best-offer report</h1>",
        f'<p class="sub">Result owner: {_e(party)}. Evaluated on {_f(report["holdout_rows"])} '
        "hold-out rows that were not used for training.</p>",
        _header_block(report.get("header", {})),
        '<div class="cards">',
        f'<div class="card"><b>{_f(report.get("macro_auc"))}</b>macro AUC</div>',
        f'<div class="card"><b>{_pct(report.get("accuracy"))}</b>first pick right</div>',
        *(
            f'<div class="card"><b>{_pct(v)}</b>in the top {k}</div>'
            for k, v in top.items()
            if k != "1"
        ),
        "</div>",
        f'<p class="summary" id="summary">{_e(report.get("summary", ""))}</p>',
        '<h2 id="classes">Per offer</h2>',
        _table(
            ["Offer", "Customers", "Share", "AUC (one vs rest)", "Top-decile lift"],
            [
                [
                    c["class"],
                    _f(c.get("rows")) if c.get("rows") else "withheld",
                    _pct(c.get("rate")) if c.get("rows") else "withheld",
                    _f(c.get("auc")) if c.get("rows") else "withheld",
                    f"{float(c['top_decile_lift']):.2f}x" if c.get("rows") else "withheld",
                ]
                for c in report.get("per_class", [])
            ],
        ),
        '<h2 id="confusion">Confusion matrix (rows: actual, columns: predicted)</h2>',
    ]
    confusion = report.get("confusion", {})
    classes = confusion.get("classes", [])
    if confusion.get("counts") is None:
        parts.append(
            '<p class="muted">Withheld: a cell holds fewer customers than the '
            "minimum cohort (see below).</p>"
        )
    else:
        parts.append(
            _table(
                ["actual \\ predicted", *classes],
                [
                    [a, *(_f(v) for v in row)]
                    for a, row in zip(classes, confusion["counts"], strict=False)
                ],
            )
        )
    gain = report.get("gain_over_own_data")
    if gain:
        parts.append('<h2 id="contribution">What the partners add</h2>')
        parts.append(
            _table(
                ["Model", "macro AUC"],
                [
                    ["Federated model (all parties)", _f(gain["federated"])],
                    [f"{party}'s own data alone", _f(gain["label_owner_only"])],
                    ["Gain from the partners' data", f"{float(gain['gain']):+.3f}"],
                ],
            )
        )
    parts.append(trees_block(report.get("trees", {})))
    suppressed = report.get("suppressed", [])
    parts.append('<h2 id="suppressed">Withheld figures</h2>')
    parts.append(
        _table(
            ["Aggregate", "Item", "Reason"],
            [[s["aggregate"], s["item"], s["reason"]] for s in suppressed],
            left=3,
        )
        if suppressed
        else f'<p class="muted">None: every figure covers at least {mc} rows.</p>'
    )
    return _page(f"Next-best-offer report ({party})", "".join(parts))

"""Drawing and writing the reports: charts, HTML pages and atomic file writes.

What a report *contains*, and so what a party learns, is decided in :mod:`vfm_flower.report`;
this module only draws and writes that content, from the released JSON alone (nothing in a
page is not in its JSON):

- charts drawn with :class:`matplotlib.figure.Figure` objects (no pyplot, no global backend
  state), embedded as PNG data URIs; matplotlib is imported on the first chart, not with this
  module. A chart whose figures were withheld under the minimum cohort says so instead;
- HTML pages that open offline (no external resource, no script), every value escaped;
- the writers, which put ``<name>.json`` and ``<name>.html`` side by side, each through a
  temporary file and an atomic rename, so a reader never sees half a report.

The writers are re-exported by :mod:`vfm_flower.report`, which imports this module on first
use only, so that importing the report content stays light.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfm_flower.files import atomic_write
from vfm_flower.report import (
    PARTY_REPORT_HTML,
    PARTY_REPORT_JSON,
    REPORT_HTML,
    REPORT_JSON,
    EvaluationInputs,
    check_report_matches,
    headline,
)
from vfm_flower.report_charts import (
    PARTY_CHART_FEATURES,
    calibration_chart,
    deciles_chart,
    gain_chart,
    group_name,
    lift_chart,
    roc_chart,
    training_chart,
    weights_chart,
)
from vfm_flower.report_figures import _pct, _plain

if TYPE_CHECKING:
    pass

__all__ = ["add_job_outcome", "write_party_report", "write_released_report", "write_report"]

# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _json_bytes(report: Mapping[str, Any]) -> bytes:
    """``report`` as indented UTF-8 JSON (its JSON-native copy: non-finite numbers are null)."""
    text = json.dumps(_plain(report), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_report(
    report: Mapping[str, Any], inputs: EvaluationInputs, out_dir: Path
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``.

    Parameters
    ----------
    report : Mapping
        Content built by :func:`vfm_flower.report.build_shared_report` from ``inputs``.
    inputs : EvaluationInputs
        The inputs of the report: checked to match it (party, model, hold-out rows), and
        their feature names checked to be absent from it. Nothing else is read from them:
        the page shows only what the JSON releases.
    out_dir : Path
        Created if needed.

    Returns
    -------
    (json_path, html_path) : tuple of Path
    """
    check_report_matches(report, inputs)
    return write_released_report(report, out_dir)


def write_released_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` from the released JSON alone (atomically).

    This is how a result owner that is not the label owner writes the report it received:
    the page is rendered only from what the JSON releases.

    Parameters
    ----------
    report : Mapping
        Shared report content (:func:`vfm_flower.report.build_shared_report`).
    out_dir : Path
        Created if needed.

    Returns
    -------
    (json_path, html_path) : tuple of Path
    """
    return _write_pair(report, _render_shared_html, Path(out_dir), REPORT_JSON, REPORT_HTML)


def write_party_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``party_report.json`` and ``party_report.html`` atomically into ``out_dir``.

    Parameters
    ----------
    report : Mapping
        A party's own report (:func:`vfm_flower.report.build_party_report`).
    out_dir : Path
        Created if needed.

    Returns
    -------
    (json_path, html_path) : tuple of Path
    """
    return _write_pair(
        report, _render_party_html, Path(out_dir), PARTY_REPORT_JSON, PARTY_REPORT_HTML
    )


def add_job_outcome(
    out_dir: Path, outcome: str, released: Mapping[str, Any], *, written_since: float
) -> Path | None:
    """Add the job's outcome and released figures to the party report in ``out_dir`` (both
    files, atomically), if one was written at or after ``written_since`` (a ``time.time()``:
    the job's start). Returns the JSON path, or ``None`` when there is no report of the job.
    """
    from vfm_flower.report_party import with_job_outcome

    path = Path(out_dir) / PARTY_REPORT_JSON
    try:
        if not path.is_file() or path.stat().st_mtime < written_since:
            return None
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    json_path, _ = write_party_report(with_job_outcome(report, outcome, released), Path(out_dir))
    return json_path


def _write_pair(
    report: Mapping[str, Any],
    render: Callable[[Mapping[str, Any]], str],
    out_dir: Path,
    json_name: str,
    html_name: str,
) -> tuple[Path, Path]:
    """Render the page first (a failure writes nothing), then write JSON and page atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / json_name
    html_path = out_dir / html_name
    page = render(_plain(report))
    atomic_write(json_path, _json_bytes(report))
    atomic_write(html_path, page.encode("utf-8"))
    return json_path, html_path


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
margin:0;background:#f4f6f9;color:#1d2430;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.7em;margin:0.2em 0}
h2{font-size:1.2em;margin:1.6em 0 0.5em;border-bottom:1px solid #d5dae1;padding-bottom:4px}
.sub{color:#5a6372;margin:0 0 1em}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;margin:18px 0}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 3px rgba(0,0,0,.12);
border-top:4px solid #1f5fa8}
.card .big{font-size:1.8em;font-weight:700;color:#1f5fa8}
.card .txt{font-size:0.92em;color:#38404d}
.summary{background:#fff;border-left:4px solid #e07b1a;padding:12px 16px;border-radius:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{background:#fff;margin:0;padding:10px;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:0.85em;color:#5a6372;margin-top:6px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:0.92em}
th,td{border:1px solid #d5dae1;padding:5px 10px;text-align:right}
th{background:#e9edf3}
td.l,th.l{text-align:left}
.muted{color:#5a6372;font-size:0.88em}
footer{margin-top:32px;color:#5a6372;font-size:0.82em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "withheld"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{float(value):,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig_id: str, uri: str, alt: str, caption: str) -> str:
    return (
        f'<figure id="{_e(fig_id)}"><img src="{uri}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _cards(report: Mapping[str, Any]) -> str:
    lines = headline(report)
    if report["model"] == "logistic":
        lift = report.get("top_decile_lift")
        bigs = [
            f"AUC {report['auc']:.3f}",
            "withheld" if lift is None else f"{lift:.1f}x",
            f"{report['aligned_rows']:,}",
        ]
    else:
        bigs = [
            f"R\u00b2 {report['r2']:.3f}",
            f"RMSE {report['rmse']:,.4g}",
            f"{report['aligned_rows']:,}",
        ]
    cards = "".join(
        f'<div class="card"><div class="big">{_e(b)}</div><div class="txt">{_e(t)}</div></div>'
        for b, t in zip(bigs, lines)
    )
    return f'<section class="cards" id="headline">{cards}</section>'


def _render_shared_html(report: Mapping[str, Any]) -> str:
    """The ``report.html`` page of a shared report (JSON-native content, see
    :func:`vfm_flower.report.build_shared_report`)."""
    logistic = report["model"] == "logistic"
    party = str(report["party"])
    mc = int(report["min_cohort"])
    groups = int(report.get("rank_groups", 10) or 10)
    name, share = group_name(groups), f"{100 / groups:.0f}%"
    parts = [
        f"<h1>Federated {_e(report.get('model_label', report['model']))} model: marketing "
        "report</h1>",
        f'<p class="sub">Result owner: {_e(party)}. Evaluated on '
        f"{_f(report['holdout_rows'])} hold-out rows that were not used for training.</p>",
        _header_block(report.get("header", {})),
        _cards(report),
        f'<p class="summary" id="summary">{_e(report.get("summary", ""))}</p>',
        "<h2>Charts</h2>",
        '<div class="grid">',
    ]
    if logistic:
        gl = report.get("gain_lift", [])
        own_gl = report.get("gain_lift_label_owner_only", [])
        auc = float(report["auc"])
        parts += [
            _figure(
                "fig-gain",
                gain_chart(gl, mc, own_gl, party),
                "Cumulative gain chart: share of all positives reached against the share of "
                f"customers targeted, best scores first, for the federated model and for "
                f"{party}'s own data alone, compared with random targeting.",
                "Cumulative gain: how many of all positives the best-scored customers contain "
                f"(orange: a model on {party}'s own columns alone, same rows).",
            ),
            _figure(
                "fig-lift",
                lift_chart(gl, mc, own_gl, party),
                f"Lift by {name}: bars give each {name}'s response rate divided by the "
                "average rate; the lines give the cumulative lift of the federated model and "
                f"of {party}'s own data alone.",
                f"Lift by {name} (1 = the best-scored {share}).",
            ),
            _figure(
                "fig-calibration",
                calibration_chart(report.get("calibration", []), mc),
                "Calibration plot: mean predicted probability against the observed rate in "
                "equal-count bins, with the diagonal of perfect calibration.",
                "Calibration: points on the diagonal mean the predicted probabilities are "
                "right on average.",
            ),
            _figure(
                "fig-roc",
                roc_chart(report.get("roc_curve", []), auc),
                f"ROC curve of the federated model, AUC {auc:.3f}, against the diagonal of "
                "random ranking.",
                f"ROC curve (each step covers at least {mc} rows).",
            ),
        ]
    else:
        parts.append(
            _figure(
                "fig-deciles",
                deciles_chart(report.get("deciles", []), mc),
                "Bar chart of mean predicted and mean actual value per decile of prediction.",
                "Predicted vs actual by decile (1 = highest predictions).",
            )
        )
    parts.append(
        _figure(
            "fig-training",
            training_chart(report.get("training_curve", {})),
            "Training curve: training objective and hold-out loss per iteration.",
            "Training curve: the hold-out loss shows whether the model generalises.",
        )
    )
    parts.append("</div>")

    parts.append("<h2>Model quality</h2>")
    if logistic:
        rows = [
            ["AUC, federated model", _f(report["auc"])],
            [f"AUC, {party}'s own data alone", _f(report["auc_label_owner_only"])],
            ["Log loss (hold-out)", _f(report["log_loss"], 4)],
            ["Hold-out response rate", _f(report["holdout_response_rate"], 4)],
            ["Top-decile lift", _f(report.get("top_decile_lift"), 2)],
            [f"Threshold (probability, {report['threshold_rule']})", _f(report["threshold"], 4)],
            ["Precision at the threshold", _f(report.get("precision"))],
            ["Recall at the threshold", _f(report.get("recall"))],
        ]
    else:
        rows = [
            ["R\u00b2, federated model", _f(report["r2"])],
            [f"R\u00b2, {party}'s own data alone", _f(report["r2_label_owner_only"])],
            ["RMSE, federated model", _f(report["rmse"], 4)],
            [f"RMSE, {party}'s own data alone", _f(report["rmse_label_owner_only"], 4)],
            ["Hold-out mean", _f(report["holdout_mean"], 4)],
        ]
    parts.append(_table(["Metric", "Value"], rows))

    if logistic:
        parts.append('<h2 id="confusion">Confusion matrix at the threshold</h2>')
        c = report.get("confusion")
        if c is None:
            parts.append(f'<p class="muted">Withheld: a cell would cover fewer than {mc} rows.</p>')
        else:
            parts.append(
                _table(
                    ["", "Predicted positive", "Predicted negative"],
                    [
                        ["Actual positive", _f(c["tp"]), _f(c["fn"])],
                        ["Actual negative", _f(c["fp"]), _f(c["tn"])],
                    ],
                )
            )
        gl = report.get("gain_lift", [])
        if gl:
            parts.append(f"<h2>Gain and lift by {_e(name)}</h2>")
            parts.append(
                _table(
                    [
                        name.capitalize(),
                        "Rows",
                        "Response rate",
                        "Lift",
                        "Cumulative lift",
                        "Cumulative gain",
                    ],
                    [
                        [
                            d["decile"],
                            _f(d["rows"]),
                            _f(d["response_rate"], 4),
                            _f(d["lift"], 2),
                            _f(d["cumulative_lift"], 2),
                            _pct(d["cumulative_gain"]),
                        ]
                        for d in gl
                    ],
                )
            )
    else:
        dec = report.get("deciles", [])
        if dec:
            parts.append(f"<h2>Predicted vs actual by {_e(name)}</h2>")
            parts.append(
                _table(
                    [name.capitalize(), "Rows", "Mean predicted", "Mean actual"],
                    [
                        [
                            d["decile"],
                            _f(d["rows"]),
                            _f(d["mean_predicted"], 4),
                            _f(d["mean_actual"], 4),
                        ]
                        for d in dec
                    ],
                )
            )

    parts.append('<h2 id="rows">Rows</h2>')
    row_table = [[p, _f(r)] for p, r in report.get("rows_per_party", {}).items()]
    row_table += [
        ["Aligned (all parties)", _f(report["aligned_rows"])],
        ["Training", _f(report["training_rows"])],
        ["Hold-out", _f(report["holdout_rows"])],
    ]
    parts.append(_table(["Party / set", "Rows"], row_table))

    if report.get("trees"):
        parts.append(trees_block(report["trees"]))
    parts.append('<h2 id="contribution">What the partners add</h2>')
    parts.append(_contribution_block(report, party, logistic))

    suppressed = report.get("suppressed", [])
    parts.append('<h2 id="suppressed">Withheld figures</h2>')
    if suppressed:
        parts.append(
            _table(
                ["Aggregate", "Item", "Reason"],
                [
                    [s.get("aggregate", ""), s.get("item", ""), s.get("reason", "")]
                    for s in suppressed
                ],
                left=3,
            )
        )
    else:
        parts.append(f'<p class="muted">None: every figure covers at least {mc} rows.</p>')
    parts.append(
        f"<footer>vfm-flower shared report. Every figure covers at least {mc} rows (the "
        "agreement's minimum cohort). This report holds no feature names or weights of any "
        "party; each party receives its own feature weights separately.</footer>"
    )
    return _page(f"Marketing report ({party})", "".join(parts))


def trees_block(trees: Mapping[str, Any]) -> str:
    """The trees' section: count, depth and each party's share of the splits and the gain."""
    out = [
        '<h2 id="trees">The trees</h2>',
        f"<p>{_f(trees.get('trees'))} trees of depth {_f(trees.get('depth'))}, "
        f"{_f(trees.get('rounds_per_tree'))} rounds each.</p>",
    ]
    importance = trees.get("importance") or {}
    if importance:
        out.append(
            _table(
                ["Party", "Splits", "Share of the total gain"],
                [
                    [p, _f(v["splits"]), f"{100 * float(v['gain_share']):.1f}%"]
                    for p, v in sorted(importance.items(), key=lambda kv: -kv[1]["gain_share"])
                ],
            )
        )
        out.append(
            '<p class="muted">Each party sees the split count and gain of its own features in '
            "its own work dir (tree-importance.json); no feature name is in this report.</p>"
        )
    return "".join(out)


def _header_block(header: Mapping[str, Any]) -> str:
    """Purpose, agreement, date, parties and job parameters (the report's ``header``)."""
    if not header:
        return ""
    job = header.get("job", {})
    parties = ", ".join(f"{p} ({role})" for p, role in header.get("parties", {}).items())
    rows = [
        ["Purpose", header.get("purpose", "")],
        [
            "Agreement",
            f"{header.get('agreement_id', '')} (terms {header.get('agreement_hash', '')})",
        ],
        ["Date", header.get("date", "")],
        ["Parties", parties],
        ["Operator", header.get("operator", "")],
        [
            "Job",
            f"{job.get('kind', '')} {job.get('operation', '')}"
            + (f", data set '{job['data_set']}'" if job.get("data_set") else ""),
        ],
    ]
    params = ", ".join(f"{k}={v}" for k, v in job.get("params", {}).items())
    if params:
        rows.append(["Parameters", params])
    body = "".join(
        f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in rows
    )
    return f'<section id="job-header"><table><tbody>{body}</tbody></table></section>'


def _contribution_block(report: Mapping[str, Any], party: str, logistic: bool) -> str:
    """The partners' contribution as the gain over the label owner's own data (retrained on
    its own columns, same rows), then the parts of the trained model left out."""
    metric = "AUC" if logistic else "R\u00b2"
    out: list[str] = []
    gain = report.get("gain_over_own_data")
    if gain:
        partners = ", ".join(gain.get("partners", [])) or "the partners"
        out.append(
            _table(
                ["Model", metric],
                [
                    ["Federated model (all parties)", _f(gain["federated"])],
                    [
                        f"{party}'s own data alone (trained on its own columns)",
                        _f(gain["label_owner_only"]),
                    ],
                    [f"Gain from the partners' data ({partners})", f"{float(gain['gain']):+.3f}"],
                ],
            )
        )
        out.append(
            f'<p class="muted">The gain is what the partners\' columns add over the best model '
            f"{_e(party)} can train on its own columns, on the same customers and hold-out "
            "rows. It is the figure to compare partners by.</p>"
        )
    contribution = report.get("contribution", {})
    if contribution:
        key_wo, key_drop = ("auc_without", "auc_drop") if logistic else ("r2_without", "r2_drop")
        ordered = sorted(contribution.items(), key=lambda kv: -float(kv[1][key_drop]))
        out.append("<h3>Parts of the trained model left out (not retrained)</h3>")
        out.append(
            _table(
                ["Part left out", f"{metric} without it", f"{metric} drop"],
                [[label, _f(v[key_wo]), _f(v[key_drop])] for label, v in ordered],
            )
        )
        out.append(
            f'<p class="muted">{metric} of the federated model with that part of its score '
            "removed and nothing retrained: the other parts were trained to work alongside it, "
            "so the drop overstates what that part adds on its own. Use the gain above.</p>"
        )
    if not out:
        out.append('<p class="muted">No contribution figures were computed.</p>')
    return "".join(out)


def _outcome_block(outcome: Mapping[str, Any]) -> str:
    """A party page's job outcome: how the job ended and the figures it released."""
    if not outcome:
        return ""
    released = outcome.get("released", {})
    rows = [[k, _f(v) if isinstance(v, float) else v] for k, v in released.items()]
    table = _table(["Released figure", "Value"], rows) if rows else ""
    return (
        '<h2 id="outcome">Outcome of the job</h2>'
        f'<p class="summary">{_e(outcome.get("outcome", ""))}</p>{table}'
        '<p class="muted">The figures the parties released to the server under the agreement, '
        "as the operator relayed them to every party at the close of the job.</p>"
    )


def _render_party_html(report: Mapping[str, Any]) -> str:
    """The ``party_report.html`` page of a party report
    (:func:`vfm_flower.report.build_party_report`)."""
    party = str(report["party"])
    features = report.get("features", [])
    if report.get("weights_encrypted"):
        return _page(
            f"Features ({party})",
            "".join(
                [
                    f"<h1>{_e(party)}: own features in the federated model</h1>",
                    f'<p class="sub">Federated {_e(report["model"])} model; '
                    f"{_f(report['aligned_rows'])} rows of {_e(party)}. "
                    f"{_e(report.get('note', ''))}</p>",
                    _header_block(report.get("header", {})),
                    _outcome_block(report.get("job_outcome", {})),
                    "<h2>Features</h2>",
                    _table(
                        ["Rank", "Feature"],
                        [[f["rank"], f["feature"]] for f in features],
                        left=2,
                    ),
                    f"<footer>vfm-flower party report for {_e(party)} only.</footer>",
                ]
            ),
        )
    parts = [
        f"<h1>{_e(party)}: own feature weights</h1>",
        f'<p class="sub">Federated {_e(report["model"])} model trained on '
        f"{_f(report['aligned_rows'])} aligned rows. {_e(report.get('note', ''))}</p>",
        _header_block(report.get("header", {})),
        _outcome_block(report.get("job_outcome", {})),
        '<div class="grid" style="grid-template-columns:1fr">',
        _figure(
            "fig-weights",
            weights_chart(features, party),
            f"Horizontal bar chart of the {min(len(features), PARTY_CHART_FEATURES)} "
            f"features of {party} with the largest absolute weights.",
            "Top features by absolute weight.",
        ),
        "</div>",
        "<h2>All features</h2>",
        _table(
            ["Rank", "Feature", "Weight", "Relative importance"],
            [
                [f["rank"], f["feature"], _f(f["weight"], 4), _pct(f["relative_importance"])]
                for f in features
            ],
            left=2,
        ),
        f"<footer>vfm-flower party report for {_e(party)} only.</footer>",
    ]
    return _page(f"Feature weights ({party})", "".join(parts))

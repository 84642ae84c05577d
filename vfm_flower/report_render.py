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

import base64
import html
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.files import atomic_write
from vfm_flower.report import (
    PARTY_REPORT_HTML,
    PARTY_REPORT_JSON,
    REPORT_HTML,
    REPORT_JSON,
    EvaluationInputs,
    _pct,
    _plain,
    check_report_matches,
    headline,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_party_report", "write_released_report", "write_report"]

_PARTY_CHART_FEATURES = 20


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
# Charts (PNG data URIs)
# --------------------------------------------------------------------------------------------

_BLUE = "#1f5fa8"
_ORANGE = "#e07b1a"
_GREY = "#8a8f98"
_RED = "#c0392b"
_GREEN = "#2e8b57"


def _new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    """A new constrained-layout Figure (not registered with pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _data_uri(fig: Figure) -> str:
    """``fig`` as a PNG data URI (without matplotlib's ``Software`` tag)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finish(
    fig: Figure,
    ax: Axes,
    title: str,
    xlabel: str,
    ylabel: str | None = None,
    *,
    grid: str = "both",
    legend: str | None = None,
) -> str:
    """Title, label, grid (and legend at ``legend``) ``ax``; ``fig`` as a PNG data URI."""
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis=grid, alpha=0.3)
    if legend is not None:
        ax.legend(loc=legend)
    return _data_uri(fig)


def _withheld_chart(title: str, message: str) -> str:
    """An empty chart titled ``title`` that shows ``message`` instead of figures."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color=_GREY, fontsize=12)
    return _data_uri(fig)


def _gain_chart(gain_lift: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    """Cumulative gain by decile (``gain_lift`` of the shared report) vs random targeting."""
    if not gain_lift:
        return _withheld_chart("Cumulative gain", f"Withheld: deciles below {min_cohort} rows")
    x = [0.0] + [10.0 * d["decile"] for d in gain_lift]
    y = [0.0] + [100.0 * d["cumulative_gain"] for d in gain_lift]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", color=_BLUE, label="Federated model")
    ax.plot([0, 100], [0, 100], linestyle="--", color=_GREY, label="Random targeting")
    ax.fill_between(x, y, x, color=_BLUE, alpha=0.08)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    return _finish(
        fig,
        ax,
        "Cumulative gain",
        "Customers targeted, best scores first (%)",
        "Share of all positives reached (%)",
        legend="lower right",
    )


def _lift_chart(gain_lift: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    """Lift of each decile (bars) and cumulative lift (line), from ``gain_lift``."""
    if not gain_lift:
        return _withheld_chart("Lift by decile", f"Withheld: deciles below {min_cohort} rows")
    deciles = [int(d["decile"]) for d in gain_lift]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(deciles, [d["lift"] for d in gain_lift], color=_BLUE, label="Lift of the decile")
    ax.plot(
        deciles,
        [d["cumulative_lift"] for d in gain_lift],
        marker="o",
        color=_ORANGE,
        label="Cumulative lift",
    )
    ax.axhline(1.0, linestyle="--", color=_GREY, label="Average (lift 1)")
    ax.set_xticks(deciles)
    return _finish(
        fig,
        ax,
        "Lift by decile",
        "Decile of score (1 = best 10%)",
        "Response rate / average rate",
        grid="y",
        legend="upper right",
    )


def _calibration_chart(calibration: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    """Mean predicted probability vs observed rate per calibration bin."""
    points = [b for b in calibration if b.get("mean_predicted") is not None]
    if not points:
        return _withheld_chart("Calibration", f"Withheld: bins below {min_cohort} rows")
    xs = [b["mean_predicted"] for b in points]
    ys = [b["observed_rate"] for b in points]
    top = max(max(xs), max(ys)) * 1.1 or 1.0
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, top], [0, top], linestyle="--", color=_GREY, label="Perfectly calibrated")
    ax.plot(xs, ys, marker="o", color=_BLUE, label="Federated model (equal-count bins)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    return _finish(
        fig, ax, "Calibration", "Mean predicted probability", "Observed rate", legend="upper left"
    )


def _training_chart(curve: Mapping[str, Sequence[float | None]]) -> str:
    """Training objective and hold-out loss per iteration (``None`` points are gaps)."""
    objective = [v for v in curve.get("objective", [])]
    holdout = [v for v in curve.get("holdout_loss", [])]
    if not any(v is not None for v in objective + holdout):
        return _withheld_chart("Training curve", "No training curve was recorded")
    fig = _new_figure()
    ax = fig.add_subplot()
    if objective:
        ax.plot(
            range(len(objective)),
            [np.nan if v is None else v for v in objective],
            marker=".",
            color=_BLUE,
            label="Training objective",
        )
    if holdout:
        ax.plot(
            range(len(holdout)),
            [np.nan if v is None else v for v in holdout],
            marker=".",
            color=_ORANGE,
            label="Hold-out loss",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, "Training curve", "Iteration", "Loss", legend="upper right")


def _roc_chart(roc: Sequence[Mapping[str, float]], auc: float) -> str:
    """The ROC curve of the shared report (on its rank grid), labelled with ``auc``."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(
        [p["fpr"] for p in roc],
        [p["tpr"] for p in roc],
        color=_BLUE,
        label=f"Federated model (AUC {auc:.3f})",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, label="Random (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    return _finish(
        fig, ax, "ROC curve", "False positive rate", "True positive rate", legend="lower right"
    )


def _deciles_chart(deciles: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    """Linear model: mean predicted vs mean actual value per decile of prediction."""
    if not deciles:
        return _withheld_chart(
            "Predicted vs actual by decile", f"Withheld: deciles below {min_cohort} rows"
        )
    k = np.array([d["decile"] for d in deciles], dtype=float)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(
        k - 0.2,
        [d["mean_predicted"] for d in deciles],
        width=0.4,
        color=_BLUE,
        label="Mean predicted",
    )
    ax.bar(
        k + 0.2, [d["mean_actual"] for d in deciles], width=0.4, color=_ORANGE, label="Mean actual"
    )
    ax.set_xticks(k)
    return _finish(
        fig,
        ax,
        "Predicted vs actual by decile",
        "Decile of prediction (1 = highest 10%)",
        "Mean value",
        grid="y",
        legend="upper right",
    )


def _weights_chart(features: Sequence[Mapping[str, Any]], party: str) -> str:
    """A party's largest weights (at most :data:`_PARTY_CHART_FEATURES`), sign by colour."""
    shown = list(features[:_PARTY_CHART_FEATURES])[::-1]
    height = max(2.5, 0.32 * len(shown) + 1.2)
    fig = _new_figure(7.0, height)
    ax = fig.add_subplot()
    weights = [f["weight"] for f in shown]
    ax.barh(range(len(shown)), weights, color=[_GREEN if w >= 0 else _RED for w in weights])
    ax.set_yticks(range(len(shown)), [str(f["feature"]) for f in shown])
    ax.axvline(0.0, color=_GREY, linewidth=1)
    return _finish(
        fig,
        ax,
        f"Top {len(shown)} features of {party} by |weight|",
        "Weight (green raises the score, red lowers it)",
        grid="x",
    )


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
    parts = [
        f"<h1>Federated {_e(report['model'])} model: marketing report</h1>",
        f'<p class="sub">Result owner: {_e(party)}. Evaluated on '
        f"{_f(report['holdout_rows'])} hold-out rows that were not used for training.</p>",
        _cards(report),
        f'<p class="summary" id="summary">{_e(report.get("summary", ""))}</p>',
        "<h2>Charts</h2>",
        '<div class="grid">',
    ]
    if logistic:
        gl = report.get("gain_lift", [])
        auc = float(report["auc"])
        parts += [
            _figure(
                "fig-gain",
                _gain_chart(gl, mc),
                "Cumulative gain chart: share of all positives reached against the share of "
                "customers targeted, best scores first, compared with random targeting.",
                "Cumulative gain: how many of all positives the best-scored customers contain.",
            ),
            _figure(
                "fig-lift",
                _lift_chart(gl, mc),
                "Lift by decile: bars give each decile's response rate divided by the "
                "average rate; the line gives the cumulative lift.",
                "Lift by decile (1 = the best-scored 10%).",
            ),
            _figure(
                "fig-calibration",
                _calibration_chart(report.get("calibration", []), mc),
                "Calibration plot: mean predicted probability against the observed rate in "
                "equal-count bins, with the diagonal of perfect calibration.",
                "Calibration: points on the diagonal mean the predicted probabilities are "
                "right on average.",
            ),
            _figure(
                "fig-roc",
                _roc_chart(report.get("roc_curve", []), auc),
                f"ROC curve of the federated model, AUC {auc:.3f}, against the diagonal of "
                "random ranking.",
                f"ROC curve (each step covers at least {mc} rows).",
            ),
        ]
    else:
        parts.append(
            _figure(
                "fig-deciles",
                _deciles_chart(report.get("deciles", []), mc),
                "Bar chart of mean predicted and mean actual value per decile of prediction.",
                "Predicted vs actual by decile (1 = highest predictions).",
            )
        )
    parts.append(
        _figure(
            "fig-training",
            _training_chart(report.get("training_curve", {})),
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
            parts.append("<h2>Gain and lift by decile</h2>")
            parts.append(
                _table(
                    [
                        "Decile",
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
            parts.append("<h2>Predicted vs actual by decile</h2>")
            parts.append(
                _table(
                    ["Decile", "Rows", "Mean predicted", "Mean actual"],
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

    parts.append('<h2 id="contribution">Contribution of each party</h2>')
    contribution = report.get("contribution", {})
    if contribution:
        metric, key_wo, key_drop = (
            ("AUC", "auc_without", "auc_drop") if logistic else ("R\u00b2", "r2_without", "r2_drop")
        )
        ordered = sorted(contribution.items(), key=lambda kv: -float(kv[1][key_drop]))
        parts.append(
            _table(
                ["Left out", f"{metric} without it", f"{metric} drop"],
                [[label, _f(v[key_wo]), _f(v[key_drop])] for label, v in ordered],
            )
        )
        parts.append(
            f'<p class="muted">{metric} of the federated model when that part of the model '
            "is left out; a larger drop means a larger contribution.</p>"
        )
    else:
        parts.append('<p class="muted">No contribution figures were computed.</p>')

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
        '<div class="grid" style="grid-template-columns:1fr">',
        _figure(
            "fig-weights",
            _weights_chart(features, party),
            f"Horizontal bar chart of the {min(len(features), _PARTY_CHART_FEATURES)} "
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

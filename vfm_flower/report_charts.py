"""The report charts: matplotlib figures as PNG data URIs, drawn from released JSON only.

Each function takes a released table of a report (:mod:`vfm_flower.report`) and returns a
``data:image/png`` URI; a chart whose figures were withheld under the minimum cohort says so
instead. Figures are :class:`matplotlib.figure.Figure` objects (no pyplot, no global backend
state), and matplotlib is imported on the first chart, not with this module.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "group_name",
    "calibration_chart",
    "deciles_chart",
    "gain_chart",
    "lift_chart",
    "roc_chart",
    "training_chart",
    "weights_chart",
]

#: A party report's chart shows at most this many features (its table lists them all).
PARTY_CHART_FEATURES = 20

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


#: The name of one group of the score ranking, by the number of groups.
GROUP_NAMES = {10: "decile", 5: "quintile", 4: "quartile", 2: "half"}


def group_name(groups: int) -> str:
    """``"decile"``, ``"quintile"``, ``"quartile"`` or ``"half"``."""
    return GROUP_NAMES.get(int(groups), "group")


def _shares(table: Sequence[Mapping[str, Any]]) -> list[float]:
    """Cumulative share of customers (%) at each group's end, from 0."""
    total = float(table[-1]["cumulative_rows"])
    return [0.0] + [100.0 * float(d["cumulative_rows"]) / total for d in table]


def gain_chart(
    gain_lift: Sequence[Mapping[str, Any]],
    min_cohort: int,
    own: Sequence[Mapping[str, Any]] = (),
    owner: str = "",
) -> str:
    """Cumulative gain per group of score (``gain_lift`` of the shared report) vs random
    targeting, with the label owner's own-data model (``own``, its own ranking) beside it."""
    if not gain_lift:
        return _withheld_chart("Cumulative gain", f"Withheld: groups below {min_cohort} rows")
    x = _shares(gain_lift)
    y = [0.0] + [100.0 * d["cumulative_gain"] for d in gain_lift]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", color=_BLUE, label="Federated model")
    if own:
        ax.plot(
            _shares(own),
            [0.0] + [100.0 * d["cumulative_gain"] for d in own],
            marker="s",
            color=_ORANGE,
            label=f"{owner}'s own data alone" if owner else "Own data alone",
        )
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


def lift_chart(
    gain_lift: Sequence[Mapping[str, Any]],
    min_cohort: int,
    own: Sequence[Mapping[str, Any]] = (),
    owner: str = "",
) -> str:
    """Lift of each group (bars) and cumulative lift (line), from ``gain_lift``; the label
    owner's own-data model's cumulative lift (``own``) beside it."""
    if not gain_lift:
        return _withheld_chart("Lift", f"Withheld: groups below {min_cohort} rows")
    groups = [int(d["decile"]) for d in gain_lift]
    name = group_name(len(groups))
    share = f"{100 / len(groups):.0f}%"
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(groups, [d["lift"] for d in gain_lift], color=_BLUE, label=f"Lift of the {name}")
    ax.plot(
        groups,
        [d["cumulative_lift"] for d in gain_lift],
        marker="o",
        color=_GREEN,
        label="Cumulative lift, federated",
    )
    if own:
        ax.plot(
            [int(d["decile"]) for d in own],
            [d["cumulative_lift"] for d in own],
            marker="s",
            color=_ORANGE,
            label=f"Cumulative lift, {owner}'s own data" if owner else "Cumulative lift, own data",
        )
    ax.axhline(1.0, linestyle="--", color=_GREY, label="Average (lift 1)")
    ax.set_xticks(groups)
    return _finish(
        fig,
        ax,
        f"Lift by {name}",
        f"{name.capitalize()} of score (1 = best {share})",
        "Response rate / average rate",
        grid="y",
        legend="upper right",
    )


def calibration_chart(calibration: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
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


def training_chart(curve: Mapping[str, Sequence[float | None]]) -> str:
    """Training objective and hold-out loss per iteration (``None`` points are gaps)."""
    objective = [v for v in curve.get("objective", [])]
    holdout = [v for v in curve.get("holdout_loss", [])]
    if not any(v is not None for v in objective + holdout):
        return _withheld_chart("Training curve", "No training curve was recorded")
    fig = _new_figure()
    ax = fig.add_subplot()
    for values, color, label in (
        (objective, _BLUE, "Training objective"),
        (holdout, _ORANGE, "Hold-out loss"),
    ):
        if values:
            ax.plot(
                range(len(values)),
                [np.nan if v is None else v for v in values],
                marker=".",
                color=color,
                label=label,
            )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, "Training curve", "Iteration", "Loss", legend="upper right")


def roc_chart(roc: Sequence[Mapping[str, float]], auc: float) -> str:
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


def deciles_chart(deciles: Sequence[Mapping[str, Any]], min_cohort: int) -> str:
    """Linear model: mean predicted vs mean actual value per decile of prediction."""
    if not deciles:
        return _withheld_chart("Predicted vs actual", f"Withheld: groups below {min_cohort} rows")
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
        f"Predicted vs actual by {group_name(len(deciles))}",
        f"{group_name(len(deciles)).capitalize()} of prediction "
        f"(1 = highest {100 / len(deciles):.0f}%)",
        "Mean value",
        grid="y",
        legend="upper right",
    )


def weights_chart(features: Sequence[Mapping[str, Any]], party: str) -> str:
    """A party's largest weights (at most :data:`PARTY_CHART_FEATURES`), sign by colour."""
    shown = list(features[:PARTY_CHART_FEATURES])[::-1]
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

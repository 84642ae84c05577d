"""The HTML reports rendered by a real headless Chromium (offline, no console errors).

Needs the ``chromium`` binary (Debian: ``apt-get install -y chromium``); skipped without it.
The screenshot of the shared report is kept under the pytest base temp dir
(``<basetemp>/vfm-report-screenshot.png``) and copied to ``/tmp/vfm-report-screenshot.png``.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vfm_flower.report import (
    EvaluationInputs,
    build_party_report,
    build_shared_report,
    write_party_report,
    write_report,
)

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no 'chromium' binary on PATH (Debian: apt-get install -y chromium)",
)

LEAD_COPY = Path("/tmp/vfm-report-screenshot.png")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Belt and braces for "opens offline": any host name would fail to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
]
SHARED_FIGURES = {"fig-gain", "fig-lift", "fig-calibration", "fig-roc", "fig-training"}
SECRET_FEATURES = {"A_secret_income_band": 0.123456789}


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _console_problems(stderr: str) -> list[str]:
    # This Chromium logs console.error() as INFO:CONSOLE, so any console line counts: the
    # pages have no script, so Chromium has nothing to say on the console.
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line or "Uncaught" in line or "ERROR:CONSOLE" in line
    ]


class _Dom(HTMLParser):
    """Figures (id -> list of image sources / svg flags) and figcaption/alt texts."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, list[dict[str, str]]] = {}
        self._current: str | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "figure":
            self._current = a.get("id", "")
            self.figures[self._current] = []
        elif tag in ("img", "svg") and self._current is not None:
            self.figures[self._current].append({"tag": tag, **a})

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._current = None


def _image_stats(png: bytes) -> tuple[tuple[int, int], int, float]:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    arr = np.asarray(img)
    packed = arr.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours = int(np.unique(packed).size)
    non_white = float(np.mean(np.any(arr < 245, axis=2)))
    return img.size, colours, non_white


def _check_dom(dom_text: str, expected: set[str]) -> _Dom:
    dom = _Dom()
    dom.feed(dom_text)
    assert expected <= set(dom.figures), f"figures in the DOM: {sorted(dom.figures)}"
    assert "script" not in dom.tags and "link" not in dom.tags
    for fig_id in expected:
        media = dom.figures[fig_id]
        assert media, f"figure {fig_id} has no <img>/<svg>"
        for m in media:
            assert m["tag"] == "img"
            assert m.get("alt", "").strip(), f"figure {fig_id} has no alt text"
            src = m.get("src", "")
            prefix = "data:image/png;base64,"
            assert src.startswith(prefix), f"figure {fig_id} loads an external resource"
            size, colours, non_white = _image_stats(base64.b64decode(src[len(prefix) :]))
            assert size[0] >= 300 and size[1] >= 200
            assert colours > 20 and non_white > 0.02, f"figure {fig_id} looks blank"
    return dom


HEADER = {
    "purpose": "Caravan propensity",
    "agreement_id": "caravan-2026",
    "agreement_hash": "0123456789abcdef",
    "date": "2026-12-01 21:00 UTC",
    "parties": {"insurer": "label owner", "bank": "partner", "broker": "partner"},
    "operator": "ops",
    "job": {"kind": "logistic", "operation": "train", "data_set": None, "params": {"l2": 0.001}},
}


def _inputs(n: int = 1400) -> EvaluationInputs:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    z = -2.5 + 1.2 * x[:, 0] + 0.9 * x[:, 1] + 0.7 * x[:, 2]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    return EvaluationInputs(
        model="logistic",
        party="insurer",
        y_holdout=y,
        score_holdout=z,
        score_own_only=-2.5 + 1.2 * x[:, 0],
        score_without={
            "bank": -2.5 + 1.2 * x[:, 0] + 0.7 * x[:, 2],
            "broker": -2.5 + 1.2 * x[:, 0] + 0.9 * x[:, 1],
        },
        objective_curve=[0.69, 0.41, 0.33, 0.31, 0.305, 0.304],
        holdout_loss_curve=[0.69, 0.43, 0.35, 0.34, 0.338, 0.338],
        aligned_rows=4650,
        rows_per_party={"insurer": 5600, "bank": 5200, "broker": 5400},
        training_rows=3250,
        min_cohort=20,
        own_feature_weights=SECRET_FEATURES,
        outcome="buy",
        header=HEADER,
    )


def test_shared_report_renders_in_chromium(tmp_path: Path, tmp_path_factory):
    inputs = _inputs()
    _, html_path = write_report(build_shared_report(inputs), inputs, tmp_path / "out")
    source = html_path.read_text()
    assert "http://" not in source and "https://" not in source and "<script" not in source
    url = html_path.as_uri()

    screenshot = tmp_path_factory.getbasetemp() / "vfm-report-screenshot.png"
    shot = _chromium(
        url, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1200,3000"
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    size, colours, non_white = _image_stats(screenshot.read_bytes())
    assert size == (1200, 3000)
    assert colours > 500, f"screenshot has only {colours} colours: blank page?"
    assert non_white > 0.2
    assert not _console_problems(shot.stderr), _console_problems(shot.stderr)
    shutil.copyfile(screenshot, LEAD_COPY)
    print(f"\nshared report screenshot: {screenshot} (copy: {LEAD_COPY})")

    dump = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert not _console_problems(dump.stderr), _console_problems(dump.stderr)
    _check_dom(dump.stdout, SHARED_FIGURES)
    for text in (
        "Confusion matrix",
        "What the partners add",
        "Gain from the partners' data (bank, broker)",
        "not retrained",
        "as often as average",
        "ranks buyers better",
        "Caravan propensity",
        "caravan-2026",
        "l2=0.001",
    ):
        assert text in dump.stdout
    assert "A_secret_income_band" not in dump.stdout


def test_a_small_holdout_renders_coarser_groups_in_chromium(tmp_path: Path):
    inputs = _inputs(n=120)  # deciles of 12 rows under a minimum cohort of 20: quintiles of 24
    report = build_shared_report(inputs)
    assert report["rank_groups"] == 5
    _, html_path = write_report(report, inputs, tmp_path / "out")
    dump = _chromium(html_path.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    _check_dom(dump.stdout, SHARED_FIGURES)
    assert "Gain and lift by quintile" in dump.stdout and "top 20% by score" in dump.stdout


def test_party_report_renders_in_chromium(tmp_path: Path):
    weights = {f"P_product_{i}": float(np.sin(i)) for i in range(25)}
    report = build_party_report("bank", "logistic", weights, min_cohort=20, aligned_rows=4650)
    _, html_path = write_party_report(report, tmp_path / "out")
    dump = _chromium(html_path.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert not _console_problems(dump.stderr), _console_problems(dump.stderr)
    _check_dom(dump.stdout, {"fig-weights"})
    assert "P_product_11" in dump.stdout and "insurer" not in dump.stdout


def test_a_passive_partys_report_shows_the_released_outcome_in_chromium(tmp_path: Path):
    from vfm_flower.report import build_encrypted_party_report, with_job_outcome

    report = build_encrypted_party_report(
        "bank", "logistic", ["P_a", "P_b"], min_cohort=20, rows=5200, header=HEADER
    )
    report = with_job_outcome(report, "done", {"auc": 0.7412, "top_decile_lift": 3.3})
    _, html_path = write_party_report(report, tmp_path / "out")
    dump = _chromium(html_path.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    for text in ("Outcome of the job", "0.741", "top_decile_lift", "Caravan propensity"):
        assert text in dump.stdout

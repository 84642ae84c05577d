"""The operator's stream: progress events and outcomes as one readable line each."""

from __future__ import annotations

import logging

from vfm_flower.strategies.operator_log import OperatorFormatter, format_event


def test_progress_events_read_as_sentences() -> None:
    assert format_event("phase", {"phase": "align"}) == "phase align started"
    line = format_event(
        "iteration",
        {"iteration": 3, "max_iterations": 30, "seconds_per_iteration": 2.5, "eta_seconds": 67.5},
    )
    assert line == "iteration 3/30 (2.5 s each, about 67.5 s left)"
    assert format_event("hello", {"rows": {"bank": 10, "lo": 12}}) == (
        "parties ready: bank (10 rows), lo (12 rows)"
    )


def test_records_are_prefixed_and_errors_say_so() -> None:
    formatter = OperatorFormatter()
    info = logging.LogRecord("vfm_flower.x", logging.INFO, "", 0, "job done (%s)", ("a",), None)
    error = logging.LogRecord("vfm_flower.x", logging.ERROR, "", 0, "job aborted", (), None)
    assert formatter.format(info) == "[vfm] job done (a)"
    assert formatter.format(error) == "[vfm] error: job aborted"

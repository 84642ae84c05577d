"""What the operator sees in ``flwr run --stream``: one line per phase, iteration and outcome.

In the Deployment Engine Flower forwards the ServerApp process's standard output to the
operator's ``flwr run --stream`` (it mirrors ``sys.stdout``); Python log records of
vfm-flower go nowhere unless a handler prints them. Every ``VerticalSession`` (the built-in
ServerApp's and one in a team's own ServerApp) attaches this handler there when it starts on a
real Grid (not in-process, where the CLI draws its own progress). ``vfm app run`` reads the
outcome lines (``[vfm] job done``, ``[vfm] error:``) for its exit code.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_MARK = "_vfm_operator_handler"


def format_event(event: str, details: dict[str, Any]) -> str:
    """One readable line for a progress event of :func:`strategies.session.log_progress`."""
    if event == "phase":
        return f"phase {details.get('phase')} started"
    if event == "phase-done":
        sizes = ", ".join(f"{k} {v}" for k, v in details.items() if k != "phase")
        return f"phase {details.get('phase')} done ({sizes})"
    if event == "iteration":
        return (
            f"iteration {details.get('iteration')}/{details.get('max_iterations')} "
            f"({details.get('seconds_per_iteration')} s each, "
            f"about {details.get('eta_seconds')} s left)"
        )
    if event == "align":
        return f"alignment round {details.get('round')}/{details.get('of')}"
    if event == "hello":
        rows = details.get("rows", {})
        return "parties ready: " + ", ".join(f"{p} ({rows.get(p)} rows)" for p in rows)
    return f"{event} {details}"


class OperatorFormatter(logging.Formatter):
    """Progress events as sentences; other records as their message (warnings and errors
    with their level)."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "vfm_event", None)
        if event is not None:
            return "[vfm] " + format_event(str(event), dict(getattr(record, "vfm_details", {})))
        if record.levelno > logging.INFO:
            return f"[vfm] {record.levelname.lower()}: {record.getMessage()}"
        return f"[vfm] {record.getMessage()}"


def stream_to_operator() -> None:
    """Print vfm-flower's INFO records to this process's standard output (once)."""
    logger = logging.getLogger("vfm_flower")
    if any(getattr(h, _MARK, False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OperatorFormatter())
    # the session's own "phase ... done" line says more than the event (seconds, bytes)
    handler.addFilter(lambda record: getattr(record, "vfm_event", None) != "phase-done")
    handler.setLevel(logging.INFO)
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

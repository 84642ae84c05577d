"""Progress display for long phases: a log handler that renders the strategy's events.

The strategy emits progress as log records (logger ``vfm_flower.progress``) so that the same
events show as a progress display in the CLI and as log lines (rate and ETA) in deployment.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console


class ProgressHandler(logging.Handler):
    """Renders phase starts/ends and training iterations on a rich console."""

    def __init__(self, console: Console) -> None:
        super().__init__(level=logging.INFO)
        self.console = console
        self._phase_started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "vfm_event", None)
        details: dict[str, Any] = getattr(record, "vfm_details", {}) or {}
        if event is None:
            return
        if event == "hello":
            rows = ", ".join(f"{p}: {n:,} rows" for p, n in details.get("rows", {}).items())
            self.console.print(f"[bold]hello[/] every party present, agreement verified ({rows})")
        elif event == "phase":
            self._phase_started[details["phase"]] = time.monotonic()
            self.console.print(f"[bold]{details['phase']}[/] ...")
        elif event == "phase-done":
            phase = details.get("phase", "?")
            took = time.monotonic() - self._phase_started.get(phase, time.monotonic())
            extra = ", ".join(f"{k}={v}" for k, v in details.items() if k not in {"phase"})
            self.console.print(f"[bold]{phase}[/] done in {took:.1f}s ({extra})")
        elif event == "iteration":
            it, total = details.get("iteration", 0), details.get("max_iterations", 0)
            elapsed = time.monotonic() - self._phase_started.get("train", time.monotonic())
            rate = elapsed / max(it, 1)
            eta = rate * max(total - it, 0)
            loss = details.get("train_loss")
            loss_text = f" loss {loss:.4f}" if isinstance(loss, float) else ""
            self.console.print(
                f"  iteration {it}/{total}{loss_text} ({rate:.1f}s/it, ETA <= {eta:.0f}s)"
            )


def attach_progress(quiet: bool) -> Console:
    console = Console(quiet=quiet, highlight=False)
    logger = logging.getLogger("vfm_flower.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, ProgressHandler):
            logger.removeHandler(handler)
    logger.addHandler(ProgressHandler(console))
    return console

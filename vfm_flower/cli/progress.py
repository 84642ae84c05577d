"""Progress display for long phases: a log handler that renders the strategy's events.

The strategy emits progress as log records (logger ``vfm_flower.progress``), so the same
events drive a progress bar in the CLI and appear as log lines (with rate and ETA) in
deployment, where the ServerApp's logs go to the SuperLink.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressHandler(logging.Handler):
    """Renders phase starts/ends as lines and training iterations as a progress bar."""

    def __init__(self, console: Console) -> None:
        super().__init__(level=logging.INFO)
        self.console = console
        self._phase_started: dict[str, float] = {}
        self._bar: Progress | None = None
        self._task: Any = None

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

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
            self._stop_bar()
            phase = details.get("phase", "?")
            took = time.monotonic() - self._phase_started.get(phase, time.monotonic())
            extra = ", ".join(f"{k}={v}" for k, v in details.items() if k != "phase")
            self.console.print(f"[bold]{phase}[/] done in {took:.1f}s ({extra})")
        elif event == "iteration":
            self._iteration(details)

    def _iteration(self, details: dict[str, Any]) -> None:
        total = int(details.get("max_iterations", 0)) or None
        if self._bar is None:
            self._bar = Progress(
                TextColumn("  training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, loss="")
            self._bar.start()
        loss = details.get("train_loss")
        self._bar.update(
            self._task,
            completed=int(details.get("iteration", 0)),
            loss=f"objective {loss:.5f}" if isinstance(loss, float) else "",
        )


def attach_progress(quiet: bool) -> Console:
    """Route progress events to a console (silent with ``quiet``); returns the console."""
    console = Console(quiet=quiet, highlight=False)
    logger = logging.getLogger("vfm_flower.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(ProgressHandler(console))
    return console

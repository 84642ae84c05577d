"""The operator's stream: progress events and outcomes as one readable line each."""

from __future__ import annotations

import json
import logging
import os

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


def _fake_flwr(bin_dir, lines: list[str], code: int = 0) -> None:
    """A stand-in for the `flwr` command printing a ServerApp's stream (the real stream is
    checked by the deployment tests; this checks the wrapper's reading of it)."""
    bin_dir.mkdir()
    script = bin_dir / "flwr"
    body = "".join(f"echo {json.dumps(line)}\n" for line in lines)
    script.write_text(f'#!/bin/sh\necho "args: $*"\n{body}exit {code}\n')
    script.chmod(0o755)


def _run_wrapper(tmp_path, monkeypatch, capsys, lines, code=0):
    from vfm_flower.cli import main
    from vfm_flower.cli.app import write_app

    _fake_flwr(tmp_path / "bin", lines, code)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    write_app(tmp_path / "app")
    rc = main(["app", "run", str(tmp_path / "app"), "conn", "--run-config", 'job="train"'])
    return rc, capsys.readouterr()


def test_app_run_exits_zero_only_on_the_job_done_line(tmp_path, monkeypatch, capsys) -> None:
    rc, out = _run_wrapper(
        tmp_path, monkeypatch, capsys, ["[vfm] parties ready: a (3 rows)", "[vfm] job done (x)"]
    )
    assert rc == 0
    assert '--stream --run-config job="train"' in out.out
    assert "[vfm] parties ready" in out.out and out.err == ""


def test_app_run_exits_non_zero_with_the_abort_reason(tmp_path, monkeypatch, capsys) -> None:
    reason = "[vfm] error: job aborted in phase train: party 'bank' did not answer"
    rc, out = _run_wrapper(tmp_path, monkeypatch, capsys, ["[vfm] phase align started", reason])
    assert rc == 1
    assert out.err.strip() == "error: job aborted in phase train: party 'bank' did not answer"


def test_app_run_without_an_outcome_line_fails(tmp_path, monkeypatch, capsys) -> None:
    rc, out = _run_wrapper(tmp_path, monkeypatch, capsys, ["Starting run"], code=0)
    assert rc == 1
    assert "without the ServerApp's job-done line" in out.err
    rc, out = _run_wrapper_again(tmp_path, monkeypatch, capsys)
    assert rc == 1 and "(flwr run exited 3)" in out.err


def _run_wrapper_again(tmp_path, monkeypatch, capsys):
    import shutil

    shutil.rmtree(tmp_path / "bin")
    shutil.rmtree(tmp_path / "app")
    return _run_wrapper(tmp_path, monkeypatch, capsys, ["Connection unavailable"], code=3)


def test_app_run_names_a_missing_app(tmp_path, capsys) -> None:
    from vfm_flower.cli import main

    assert main(["app", "run", str(tmp_path / "none"), "conn"]) == 2
    assert "vfm app init" in capsys.readouterr().err

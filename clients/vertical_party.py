"""The Flower party: routes message types to protocol steps and keeps per-run state.

Every message is translated into a ``StepRequest`` for the Flower-free ``PartyRuntime`` and its
``StepReply`` back into a Flower reply. Per-run state lives in ``context.state`` (a ConfigRecord
of scalars and an ArrayRecord of numpy arrays): in the Deployment Engine each message runs in a
fresh process, so nothing survives in Python globals. Arrays of 1 MiB or more (blinded ids, a
feature matrix) live in files of the party's work directory instead, referenced and checked by
digest (``vfm_flower.state.StateFiles``): the SuperNode, which keeps ``context.state`` in
memory and ships it with every message, holds no set-sized array.

A partner's private settings come from its SuperNode's node-config (see
``vfm_flower.party.NODE_CONFIG_KEYS``). Under Flower's simulation engine, node-config only holds
``partition-id``; then the run-config key ``demo-dir`` (a directory made by
``vfm demo --prepare-only``) maps partition ``i`` to the ``i``-th party of the demo.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message

from vfm_flower.errors import (
    ConfigurationError,
    DataError,
    PolicyViolation,
    ProtocolAbort,
    VfmError,
)
from vfm_flower.jobs import JobRegistry
from vfm_flower.party import DataLoader, PartyRuntime, PartySettings, StepRegistry
from vfm_flower.runtime import wire
from vfm_flower.state import PartyState, StateFiles, run_directory

logger = logging.getLogger(__name__)

_VALUES = "vfm.values"
_ARRAYS = "vfm.arrays"
_FILES = "vfm.files"
#: The run's last message (the audit seal): the state files go after it.
SEAL = "query.seal"
_MARK = "_vfm_partner_handler"


def demo_node_config(demo_dir: Path, party: str) -> dict[str, str]:
    """The node-config of one party of a prepared demo directory."""
    base = demo_dir / "parties" / party
    return {
        "party": party,
        "data-path": str(base / f"{party}.csv"),
        "key-path": str(base / f"{party}.key"),
        "agreement-path": str(demo_dir / "agreement.toml"),
        "work-dir": str(base / "work"),
    }


def settings_from_context(context: Context, *, data_file: bool = True) -> PartySettings:
    """Read and validate the partner's settings (or the simulation demo's)."""
    node_config: dict[str, Any] = dict(context.node_config)
    if "party" not in node_config and "partition-id" in node_config:
        demo_dir = str(context.run_config.get("demo-dir", "")).strip()
        if not demo_dir:
            raise ConfigurationError(
                "running under the simulation engine without node-config: set run-config "
                "'demo-dir' to a directory made by `vfm demo --prepare-only DIR`"
            )
        from vfm_flower.demo_data import DEMO_PARTIES

        index = int(node_config["partition-id"])
        if index >= len(DEMO_PARTIES):
            raise ConfigurationError(
                f"simulation has more SuperNodes than demo parties ({len(DEMO_PARTIES)})"
            )
        node_config = demo_node_config(Path(demo_dir), DEMO_PARTIES[index])
    return PartySettings.from_node_config(node_config, data_file=data_file)


def load_state(context: Context, files: StateFiles | None = None) -> PartyState:
    """The party's state of this run: ``context.state``'s records and its state files.

    ``files`` (default: this party's, from its node-config) is where the referenced files
    must be; files the record no longer references are removed (:meth:`StateFiles.collect`).
    """
    values = context.state.get(_VALUES)
    arrays = context.state.get(_ARRAYS)
    references = {k: str(v) for k, v in (context.state.get(_FILES) or {}).items()}
    loaded = {k: v.numpy() for k, v in arrays.items()} if arrays is not None else {}
    if references or files is not None:
        if files is None:
            files = state_files(settings_from_context(context, data_file=False), context)
        files.collect(references)
        # each file is read (and checked) when a step first asks for its array
        return PartyState(
            values=dict(values) if values is not None else {},
            arrays=files.load_lazily(references, loaded),
        )
    return PartyState(values=dict(values) if values is not None else {}, arrays=loaded)


def state_files(settings: PartySettings, context: Context) -> StateFiles:
    """Where this run's large state arrays live: ``work-dir/state/run-<run id>``."""
    return StateFiles(run_directory(settings.work_dir, int(context.run_id)))


def save_state(context: Context, state: PartyState, files: StateFiles | None = None) -> None:
    """Store the state in ``context.state``; with ``files``, arrays of 1 MiB or more go to
    files there and only their references to the record (no set-sized array in the
    SuperNode's memory)."""
    from flwr.app import Array

    arrays = {k: state.arrays[k] for k in state.arrays}  # no files: every array in the record
    references: dict[str, str] = {}
    if files is not None:
        arrays, references = files.store(state.arrays)
    context.state[_VALUES] = ConfigRecord(dict(state.values))
    context.state[_ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    context.state[_FILES] = ConfigRecord(references)


def end_of_run_state(context: Context, state: PartyState, files: StateFiles) -> None:
    """After the run's seal: the state files go (the run directory is removed), the record
    keeps the scalars and small arrays (the audit and result steps are done)."""
    from flwr.app import Array

    files.discard()
    memory = state.arrays.in_memory()
    small = {k: v for k, v in memory.items() if v.nbytes < files.min_bytes}
    context.state[_VALUES] = ConfigRecord(dict(state.values))
    context.state[_ARRAYS] = ArrayRecord({k: Array(v) for k, v in small.items()})
    context.state[_FILES] = ConfigRecord({})


def show_partner_lines() -> None:
    """Print the partner's job lines (:mod:`vfm_flower.job_summary`) on standard error when
    nobody configured logging in this process: a SuperNode's ClientApp process, whose output
    the SuperNode shows. A CLI or a test that configured logging keeps its own handlers."""
    partner = logging.getLogger("vfm_flower.partner")
    if logging.getLogger().handlers or any(getattr(h, _MARK, False) for h in partner.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[vfm] %(message)s"))
    handler.setLevel(logging.INFO)
    setattr(handler, _MARK, True)
    partner.addHandler(handler)
    partner.setLevel(logging.INFO)


def _error_code(exc: VfmError) -> int:
    if isinstance(exc, PolicyViolation):
        return wire.ERROR_CODE_POLICY
    if isinstance(exc, ConfigurationError):
        return wire.ERROR_CODE_CONFIG
    if isinstance(exc, DataError):
        return wire.ERROR_CODE_DATA
    return wire.ERROR_CODE_PROTOCOL


class VerticalParty:
    """Routes one Flower message to the registered step of its kind and answers it.

    Parameters
    ----------
    steps : StepRegistry
        The steps this party runs (the plugin's protocol steps and the jobs' steps).
    jobs : JobRegistry
        The job kinds this party knows; a job of another kind is refused.
    data_loader : callable, optional
        ``loader(settings) -> DataFrame``: this party's rows, instead of the CSV file at
        node-config ``data-path`` (``settings.node_config`` holds every node-config key).
    """

    def __init__(
        self, steps: StepRegistry, jobs: JobRegistry, data_loader: DataLoader | None = None
    ) -> None:
        self.steps = steps
        self.jobs = jobs
        self.data_loader = data_loader

    def __call__(self, message: Message, context: Context) -> Message:
        show_partner_lines()
        kind = message.metadata.message_type
        party = str(context.node_config.get("party", "")) or None
        try:
            settings = settings_from_context(context, data_file=self.data_loader is None)
            party = settings.party
            files = state_files(settings, context)
            files.sweep_stale_runs()
            state = load_state(context, files)
            runtime = PartyRuntime(
                settings,
                state,
                steps=self.steps,
                jobs=self.jobs,
                data_loader=self.data_loader,
                flower_run_id=int(context.run_id),
            )
            try:
                request = wire.decode_request(kind, message.content)
            except ProtocolAbort as exc:  # refused before any step: audited all the same
                runtime.audit.record(kind, 0, "abort", detail=exc.reason[:200])
                raise
            reply = runtime.handle(request)
            if kind == SEAL:
                end_of_run_state(context, state, files)
            else:
                save_state(context, state, files)
            return Message(wire.encode_reply(reply), reply_to=message)
        except VfmError as exc:
            logger.error("%s refused: %s", kind, exc)
            reason = str(exc) if not isinstance(exc, ProtocolAbort) else exc.reason
            return Message(
                Error(code=_error_code(exc), reason=wire.error_reason(party, reason)),
                reply_to=message,
            )

"""What a party step is: the request it serves, the reply it signs, and the registry of steps.

Steps are registered in a :class:`StepRegistry` under the message kind they serve
(``"query.hello"``, ``"train.forward"``, ...), each declaring the job kinds and operations it
belongs to; :class:`vfm_flower.party.PartyRuntime` refuses a step of another job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.errors import ConfigurationError
from vfm_flower.jobs import ANY, Job
from vfm_flower.session import SessionInfo

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from vfm_flower.context import PartyContext
    from vfm_flower.party_settings import PartySettings


@dataclass
class StepRequest:
    """One message from the server, in protocol terms."""

    kind: str
    step: int
    session: SessionInfo | None
    job: Job
    agreement_hash: str
    params: dict[str, Any] = field(default_factory=dict)
    inbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    #: the request's place among the requests of its run (increasing), and the operator's
    #: signature over it (:func:`vfm_flower.session.request_signing_bytes`)
    sequence: int = 0
    operator_signature: bytes = b""


@dataclass
class StepReply:
    """One party's answer: public (signed) facts, envelopes to relay, masked vectors to sum."""

    party: str
    public: dict[str, Any] = field(default_factory=dict)
    outbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    signature: bytes = b""


StepHandler = Callable[["PartyContext"], None]
ResultReceiver = Callable[["PartyContext", bytes], None]
DataLoader = Callable[["PartySettings"], "pd.DataFrame"]

#: Public facts of the plugin's own protocol steps (hello, alignment, close): not job releases.
PROTOCOL_FACTS = ("step",)


@dataclass(frozen=True)
class StepSpec:
    """One registered step.

    Parameters
    ----------
    kind : str
        The message kind it serves (``"train.forward"``).
    handler : callable
        ``handler(ctx: PartyContext) -> None``.
    jobs : tuple of str
        The job kinds it belongs to (``("*",)``: every job, for the plugin's protocol steps).
    operations : tuple of str or None
        The operations it serves (``None``: every operation of its kinds).
    public : tuple of str
        Protocol facts it may put in its signed reply: only for the plugin's own protocol
        steps (``jobs=("*",)``); a job step's every public fact is on the release list.
    """

    kind: str
    handler: StepHandler
    jobs: tuple[str, ...]
    operations: tuple[str, ...] | None = None
    public: tuple[str, ...] = ()


_MESSAGE_KIND = re.compile(r"^(train|evaluate|query)\.[a-z][a-z0-9_]*$")


class StepRegistry:
    """Steps by message kind. Registering a kind twice is an error.

    >>> steps = StepRegistry()
    >>> @steps.step("query.stats", jobs=("segment_stats",))
    ... def stats(ctx): ...

    Receivers take what the label owner delivered to the result owner under a name
    (``ctx.deliver(name, payload)``), at the job's close.
    """

    def __init__(self, *registries: StepRegistry) -> None:
        self._steps: dict[str, StepSpec] = {}
        self._receivers: dict[tuple[str, str], ResultReceiver] = {}
        for registry in registries:
            for spec in registry:
                self.add(spec)
            for (name, kind), receiver in registry._receivers.items():
                self._add_receiver(name, kind, receiver)

    def _add_receiver(self, name: str, kind: str, receiver: ResultReceiver) -> None:
        if (name, kind) in self._receivers:
            raise ConfigurationError(f"a receiver of '{name}' for job '{kind}' is registered twice")
        self._receivers[(name, kind)] = receiver

    def receiver(
        self, name: str, *, jobs: tuple[str, ...] | list[str]
    ) -> Callable[[ResultReceiver], ResultReceiver]:
        """Decorator: ``receiver(ctx, payload)`` takes the delivered result ``name``."""

        def register(func: ResultReceiver) -> ResultReceiver:
            for kind in jobs:
                self._add_receiver(name, kind, func)
            return func

        return register

    def get_receiver(self, name: str, job_kind: str) -> ResultReceiver | None:
        return self._receivers.get((name, job_kind))

    def add(self, spec: StepSpec) -> StepSpec:
        if not _MESSAGE_KIND.match(spec.kind):
            raise ConfigurationError(
                f"step kind {spec.kind!r} must be '<train|evaluate|query>.<name>' "
                "(Flower message types allow no further dots)"
            )
        if spec.kind in self._steps:
            raise ConfigurationError(f"step '{spec.kind}' is registered twice")
        if not spec.jobs:
            raise ConfigurationError(f"step '{spec.kind}' must name the job kinds it belongs to")
        if spec.public and ANY not in spec.jobs:
            raise ConfigurationError(
                f"step '{spec.kind}': only protocol steps declare public facts; a job step "
                "publishes what the agreement's release list names"
            )
        self._steps[spec.kind] = spec
        return spec

    def step(
        self,
        kind: str,
        *,
        jobs: tuple[str, ...] | list[str],
        operations: tuple[str, ...] | list[str] | None = None,
        public: tuple[str, ...] = (),
    ) -> Callable[[StepHandler], StepHandler]:
        """Decorator: register ``handler`` for message ``kind`` of the given job kinds."""

        def register(handler: StepHandler) -> StepHandler:
            self.add(
                StepSpec(
                    kind=kind,
                    handler=handler,
                    jobs=tuple(jobs),
                    operations=tuple(operations) if operations is not None else None,
                    public=tuple(public),
                )
            )
            return handler

        return register

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._steps.values())

    def __contains__(self, kind: object) -> bool:
        return kind in self._steps

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._steps))

    def get(self, kind: str) -> StepSpec | None:
        return self._steps.get(kind)

"""``VerticalClientApp``: a Flower ``ClientApp`` whose handlers are governed job steps.

::

    app = VerticalClientApp(jobs=[SEGMENT_STATS])

    @app.step("query.segment_sums", jobs=("segment_stats",), operations=("run",))
    def segment_sums(ctx: PartyContext) -> None:
        ...

It is a real ``flwr.clientapp.ClientApp`` (Flower's loader, Mods and lifespan work as usual).
Every app answers the plugin's own protocol steps (hello, alignment, close); each registered
step gets one route, named by its message kind. A message kind registered twice is an error.
Around every step the plugin checks the agreement, the job and the session, opens and seals
envelopes, signs the reply, checks the release list and writes the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from vfm_flower.clients.vertical_party import VerticalParty
from vfm_flower.jobs import JobKind, JobRegistry
from vfm_flower.party import DataLoader, ResultReceiver, StepHandler, StepRegistry, StepSpec


class VerticalClientApp(ClientApp):
    """A ClientApp for vertical jobs.

    Parameters
    ----------
    jobs : iterable of JobKind
        The job kinds this app runs (a job of another kind is refused).
    builtin_jobs : bool
        Also run the built-in kinds (logistic and linear regression) and their steps.
    data_loader : callable, optional
        ``loader(settings) -> pandas.DataFrame``: this party's rows, instead of the CSV file
        at node-config ``data-path`` (``settings.node_config`` holds every node-config key).
    mods : list of Mod, optional
        Flower Mods around every handler, as for any ``ClientApp``.
    """

    def __init__(
        self,
        jobs: Iterable[JobKind] = (),
        *,
        builtin_jobs: bool = False,
        data_loader: DataLoader | None = None,
        mods: list[Mod] | None = None,
    ) -> None:
        super().__init__(mods=mods)
        from vfm_flower.steps import builtin_steps, protocol_steps

        kinds = list(jobs)
        if builtin_jobs:
            from vfm_flower.jobs_builtin import BUILTIN_JOB_KINDS

            kinds = [*BUILTIN_JOB_KINDS, *kinds]
        self.jobs = JobRegistry(kinds)
        self.steps = StepRegistry(builtin_steps() if builtin_jobs else protocol_steps())
        self.party = VerticalParty(self.steps, self.jobs, data_loader)
        for spec in self.steps:
            self._route(spec.kind)

    def _route(self, kind: str) -> None:
        category, _, action = kind.partition(".")

        def route(message: Message, context: Context) -> Message:
            return self.party(message, context)

        getattr(ClientApp, category)(self, action)(route)

    def step(
        self,
        kind: str,
        *,
        jobs: Iterable[str] | None = None,
        operations: Iterable[str] | None = None,
    ) -> Callable[[StepHandler], StepHandler]:
        """Register ``handler(ctx)`` for message ``kind`` (``"query.NAME"`` / ``"train.NAME"``)
        of the given job kinds (default: every kind of this app) and operations. ``operations``
        may be left out only when each of the kinds has a single operation: a step must not
        run, say, in a scoring job when it was written for training."""
        job_kinds = tuple(jobs) if jobs is not None else self.jobs.names()
        unknown = [k for k in job_kinds if k not in self.jobs]
        if unknown:
            from vfm_flower.errors import ConfigurationError

            raise ConfigurationError(
                f"step '{kind}' names job kind(s) {', '.join(unknown)} this app does not run"
            )

        ops = _operations_of(kind, [self.jobs.get(k) for k in job_kinds], operations)

        def register(handler: StepHandler) -> StepHandler:
            self.steps.add(
                StepSpec(
                    kind=kind,
                    handler=handler,
                    jobs=job_kinds,
                    operations=ops,
                )
            )
            self._route(kind)
            return handler

        return register

    def receiver(
        self, name: str, *, jobs: Iterable[str] | None = None
    ) -> Callable[[ResultReceiver], ResultReceiver]:
        """Register ``receiver(ctx, payload)`` for the result ``name`` delivered to the
        result owner (``ctx.deliver(name, payload)``), for the given job kinds (default:
        every kind of this app)."""
        return self.steps.receiver(
            name, jobs=tuple(jobs) if jobs is not None else self.jobs.names()
        )


def _operations_of(
    kind: str, job_kinds: list[JobKind], operations: Iterable[str] | None
) -> tuple[str, ...]:
    """The operations a step serves: given, or the single operation of every kind."""
    from vfm_flower.errors import ConfigurationError

    if operations is not None:
        ops = tuple(operations)
        for job_kind in job_kinds:
            unknown = sorted(set(ops) - set(job_kind.operations))
            if unknown:
                raise ConfigurationError(
                    f"step '{kind}': job kind '{job_kind.name}' has no operation(s) "
                    f"{', '.join(unknown)}"
                )
        return ops
    several = [k.name for k in job_kinds if len(k.operations) > 1]
    if several:
        raise ConfigurationError(
            f"step '{kind}': say which operations it serves (job kind(s) {', '.join(several)} "
            "have several)"
        )
    return tuple(sorted({op for k in job_kinds for op in k.operations}))

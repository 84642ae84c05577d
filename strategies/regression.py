"""Vertical logistic and linear regression (server side), on the session's public API.

Training (``train``, or ``evaluate``, which keeps no model): prepare (all parties, once), then
per iteration forward (passive parties, pairwise-masked), residual (label owner), backward
(passive parties), decrypt (label owner): four rounds; finish (all parties). Scoring: partial
scores (all parties, masked), combine (label owner). See ``vfm_flower.steps.training`` and
``vfm_flower.steps.scoring`` for what each party computes and learns.
"""

from __future__ import annotations

import time
from typing import Any

from vfm_flower.agreement import SignedAgreement
from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs_builtin import RegressionParams
from vfm_flower.strategies.base import VerticalStrategy
from vfm_flower.strategies.session import VerticalSession
from vfm_flower.strategies.settings import ServerSettings


class VerticalRegression(VerticalStrategy):
    """Align, then train (with hold-out evaluation) or score, for a generalized linear model."""

    model_kind = "logistic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.job.kind != self.model_kind:
            raise ConfigurationError(
                f"{type(self).__name__} runs job kind '{self.model_kind}', the job is "
                f"'{self.job.kind}'"
            )
        self.params = RegressionParams.from_job(self.job)

    def run(self, session: VerticalSession) -> None:
        session.align()
        if self.job.operation in ("train", "evaluate"):
            self.train(session)
        elif self.job.operation == "score":
            self.score(session)
        else:
            raise ConfigurationError(f"unknown operation '{self.job.operation}'")

    def score(self, session: VerticalSession) -> None:
        """Partial scores from every party's slice, masked sum, result owner combines."""
        lo, passives = session.label_owner, session.passive_parties
        with session.phase("score") as sizes:
            partial = session.send("query.score")
            models = {p: r.public.get("model_id") for p, r in partial.items()}
            for party, model_id in models.items():
                if model_id != models[lo]:
                    raise ProtocolAbort(
                        "score",
                        party,
                        "its model slice comes from another training run than the "
                        "label owner's: retrain or restore matching slices",
                    )
            sums = {}
            if passives:
                sums["score"] = session.secure_sum({p: partial[p] for p in passives}, "score")
            combined = session.send("query.combine", to=[lo], sums=sums)
            scored = int(combined[lo].public.get("scored_rows", 0))
            session.publish(scored_rows=scored)
            sizes["scored_rows"] = scored

    def train(self, session: VerticalSession) -> None:
        """Prepare, iterate (4 rounds each), finish: see ``vfm_flower.steps.training``."""
        lo, passives = session.label_owner, session.passive_parties
        with session.phase("train") as sizes:
            prepared = session.send("train.prepare", step=0)
            joint = {p: int(r.public.get("joint_rows", -1)) for p, r in prepared.items()}
            for party, count in joint.items():
                if count != joint[lo]:
                    raise ProtocolAbort(
                        "train", party, f"holds {count} aligned rows, the label owner {joint[lo]}"
                    )
            limit = self.params.max_iterations
            started = time.monotonic()
            t = 0
            while True:
                sums = {}
                if passives:
                    forward = session.send("train.forward", to=passives, step=t)
                    sums["forward"] = session.secure_sum(forward, "forward")
                residual = session.send("train.residual", to=[lo], step=t, sums=sums)[lo]
                rate = (time.monotonic() - started) / (t + 1)
                session.progress(
                    "iteration",
                    {
                        "iteration": t,
                        "max_iterations": limit,
                        "seconds_per_iteration": round(rate, 2),
                        "eta_seconds": round(rate * max(limit - t, 0), 1),
                    },
                )
                if residual.public.get("stop"):
                    break
                if t >= limit:
                    raise ProtocolAbort(
                        "train", lo, f"did not stop within max-iterations={limit} (job parameter)"
                    )
                session.send("train.backward", to=passives, step=t)
                session.send("train.decrypt", to=[lo], step=t)
                t += 1
            finished = session.send("train.finish", step=t)
            session.publish(**finished[lo].public)
            session.publish(
                iterations=t,
                rounds_per_iteration=4 if passives else 1,
                train_rounds=session.result.phases["train"].rounds,
            )
            sizes["iterations"] = t


class VerticalLogisticRegression(VerticalRegression):
    """Vertical logistic regression: exact sigmoid, encrypted backward pass."""

    model_kind = "logistic"


class VerticalLinearRegression(VerticalRegression):
    """Vertical linear (ridge) regression."""

    model_kind = "linear"


STRATEGIES = {
    "logistic": VerticalLogisticRegression,
    "linear": VerticalLinearRegression,
}


def build_strategy(agreement: SignedAgreement, settings: ServerSettings) -> VerticalRegression:
    try:
        cls = STRATEGIES[settings.job.kind]
    except KeyError as exc:
        raise ConfigurationError(
            f"unknown job kind '{settings.job.kind}': use one of {', '.join(STRATEGIES)}"
        ) from exc
    return cls(
        agreement,
        settings.job,
        job_kind=settings.job_kind,
        workdir=settings.workdir,
        round_timeout=settings.round_timeout,
        party_wait_timeout=settings.party_wait_timeout,
    )

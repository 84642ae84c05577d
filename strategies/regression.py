"""Vertical logistic and linear regression (server side), on the session's public API.

Training (``train``, or ``evaluate``, which keeps no model): prepare (all parties, once), then
per iteration the passive parties' encrypted round and the label owner's round: two rounds
(in each, the party that would wait computes the encryption randomness of its next message);
then finish (passive parties: final encrypted image, slices) and evaluate (label owner).
Scoring: encrypted images (passive parties) and partial score (label owner), combine (label
owner). Every payload is a sealed envelope the server relays; see
``vfm_flower.steps.training`` and ``vfm_flower.steps.scoring`` for what each party computes
and learns.
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
        """Encrypted images from every passive slice, the result owner's side combines."""
        lo = session.label_owner
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
            combined = session.send("query.combine", to=[lo])
            scored = int(combined[lo].public.get("scored_rows", 0))
            session.publish(scored_rows=scored)
            sizes["scored_rows"] = scored

    def train(self, session: VerticalSession) -> None:
        """Prepare, iterate (2 rounds each), finish and evaluate."""
        lo, passives = session.label_owner, session.passive_parties
        with session.phase("train") as sizes:
            session.send("train.prepare", step=0)
            limit = self.params.max_iterations
            started = time.monotonic()
            t = 0
            while True:
                # each round, the party that would wait computes its next randomness
                if passives:
                    session.send_each({"train.passive": passives, "train.precompute": [lo]}, step=t)
                decided = session.send_each(
                    {"train.label_owner": [lo], "train.precompute": passives}, step=t
                )[lo]
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
                t += 1
                if decided.public.get("stop"):
                    break
                if t > limit:
                    raise ProtocolAbort(
                        "train", lo, f"did not stop within max-iterations={limit} (job parameter)"
                    )
            if passives:
                session.send("train.finish", to=passives, step=t)
            evaluated = session.send("train.evaluate", to=[lo], step=t)
            if passives and self.releases_passive_weights():
                session.send("train.release", to=passives, step=t)
            session.publish(**evaluated[lo].public)
            session.publish(
                iterations=t,
                rounds_per_iteration=2 if passives else 1,
                train_rounds=session.result.phases["train"].rounds,
            )
            sizes["iterations"] = t

    def releases_passive_weights(self) -> bool:
        """Whether the agreement releases the passive parties' weights to them (opt-in)."""
        terms = self.agreement.job_terms(self.job.kind)
        return self.job.operation == "train" and "model-weights" in terms.release.get("party", ())


class VerticalLogisticRegression(VerticalRegression):
    """Vertical logistic regression: exact sigmoid, encrypted backward pass."""

    model_kind = "logistic"


class VerticalLinearRegression(VerticalRegression):
    """Vertical linear (ridge) regression."""

    model_kind = "linear"


def _strategies() -> dict[str, type[VerticalStrategy]]:
    from vfm_flower.strategies.overlap import VerticalOverlap
    from vfm_flower.strategies.segments import VerticalSegments
    from vfm_flower.strategies.trees import VerticalSecureBoost

    return {
        "logistic": VerticalLogisticRegression,
        "linear": VerticalLinearRegression,
        "overlap": VerticalOverlap,
        "segments": VerticalSegments,
        "secureboost": VerticalSecureBoost,
    }


STRATEGIES = _strategies()


def build_strategy(agreement: SignedAgreement, settings: ServerSettings) -> VerticalStrategy:
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
        align_chunk_ids=settings.align_chunk_ids,
    )

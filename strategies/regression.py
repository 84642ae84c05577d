"""Vertical logistic and linear regression strategies (server side)."""

from __future__ import annotations

import time
from typing import Any

from strategies.base import VerticalStrategy
from strategies.settings import ServerSettings
from vfm_flower.agreement import SignedAgreement
from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.masking import sum_masked


class VerticalRegression(VerticalStrategy):
    """Align, then train (with hold-out evaluation) or score, for a generalized linear model."""

    model_kind = "logistic"

    def __init__(
        self,
        *args: Any,
        l2: float = 1e-3,
        holdout_fraction: float = 0.3,
        outcome: str = "respond",
        holdout_seed: int = 0,
        early_stopping: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.early_stopping = int(early_stopping)
        self.outcome = outcome
        self.holdout_seed = int(holdout_seed)
        self.l2 = float(l2)
        self.holdout_fraction = float(holdout_fraction)
        if self.job.model != self.model_kind:
            raise ConfigurationError(
                f"{type(self).__name__} runs model '{self.model_kind}', the job asks for "
                f"'{self.job.model}'"
            )

    def run_phases(self) -> None:
        self.align()
        if self.job.operation in ("train", "evaluate"):
            self.train()
        elif self.job.operation == "score":
            self.score()
        else:
            raise ConfigurationError(f"unknown operation '{self.job.operation}'")

    def score(self) -> None:
        """Partial scores from every party's slice, masked sum, result owner combines."""
        self.begin_phase("score")
        lo = self.agreement.label_owner
        passives = list(self.agreement.passive_parties)
        partial = self.exchange(
            "query.score",
            {p: self.request("query.score", 1, inbox=self.take_carry(p)) for p in self.parties},
        )
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
            sums["score"] = sum_masked([partial[p].masked["score"] for p in passives])
        inboxes = self.relay(partial.values())
        combined = self.exchange(
            "query.combine",
            {lo: self.request("query.combine", 1, sums=sums, inbox=inboxes[lo])},
        )
        self.carry = self.relay(combined.values())
        self.deliveries = [{"topic": "result.scores", "phase": "query.combine", "round": 1}]
        scored = int(combined[lo].public.get("scored_rows", 0))
        self.result.public["scored_rows"] = scored
        self.end_phase("score", scored_rows=scored)

    @property
    def training_params(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "holdout_fraction": self.holdout_fraction,
            "holdout_seed": self.holdout_seed,
            "patience": self.early_stopping,
        }

    def train(self) -> None:
        """Prepare, iterate (4 rounds each), finish: see ``vfm_flower.steps.training``."""
        self.begin_phase("train")
        lo = self.agreement.label_owner
        passives = list(self.agreement.passive_parties)
        params = self.training_params
        prepared = self.exchange(
            "train.prepare",
            {
                p: self.request("train.prepare", 0, params=params, inbox=self.take_carry(p))
                for p in self.parties
            },
        )
        joint = {p: int(r.public.get("joint_rows", -1)) for p, r in prepared.items()}
        for party, count in joint.items():
            if count != joint[lo]:
                raise ProtocolAbort(
                    "train",
                    party,
                    f"holds {count} aligned rows, the label owner {joint[lo]}",
                )
        pending: dict[str, dict[tuple[str, str], bytes]] = {}
        inboxes: dict[str, dict[tuple[str, str], bytes]] = {}
        limit = int(self.job.max_iterations)
        started = time.monotonic()
        t = 0
        while True:
            sums = {}
            if passives:
                forward = self.exchange(
                    "train.forward",
                    {
                        p: self.request("train.forward", t, params=params, inbox=pending.get(p))
                        for p in passives
                    },
                )
                sums["forward"] = sum_masked([forward[p].masked["forward"] for p in passives])
            residual = self.exchange(
                "train.residual",
                {lo: self.request("train.residual", t, params=params, sums=sums)},
            )[lo]
            elapsed = time.monotonic() - started
            rate = elapsed / (t + 1)
            self.progress(
                "iteration",
                {
                    "iteration": t,
                    "max_iterations": limit,
                    "seconds_per_iteration": round(rate, 2),
                    "eta_seconds": round(rate * max(limit - t, 0), 1),
                },
            )
            inboxes = self.relay([residual])
            if residual.public.get("stop"):
                break
            if t >= limit:
                raise ProtocolAbort(
                    "train",
                    lo,
                    f"did not stop within max-iterations={limit} (agreement term)",
                )
            backward = self.exchange(
                "train.backward",
                {
                    p: self.request("train.backward", t, params=params, inbox=inboxes[p])
                    for p in passives
                },
            )
            inboxes = self.relay(backward.values())
            decrypted = self.exchange(
                "train.decrypt",
                {lo: self.request("train.decrypt", t, params=params, inbox=inboxes[lo])},
            )
            pending = self.relay(decrypted.values())
            t += 1
        finish_params = {
            **params,
            "rows_per_party": dict(self.result.rows),
            "outcome": self.outcome,
        }
        finished = self.exchange(
            "train.finish",
            {
                p: self.request("train.finish", t, params=finish_params, inbox=inboxes.get(p))
                for p in self.parties
            },
        )
        stats = self.result.phases["train"]
        self.carry = self.relay(finished.values())
        self.deliveries = [{"topic": "result.report", "phase": "train.finish", "round": t}]
        self.result.public.update(finished[lo].public)
        self.result.public["iterations"] = t
        self.result.public["rounds_per_iteration"] = 4 if passives else 1
        self.result.public["train_rounds"] = stats.rounds
        self.end_phase("train", iterations=t)


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
        cls = STRATEGIES[settings.job.model]
    except KeyError as exc:
        raise ConfigurationError(
            f"unknown model '{settings.job.model}': use one of {', '.join(STRATEGIES)}"
        ) from exc
    return cls(
        agreement,
        settings.job,
        workdir=settings.workdir,
        round_timeout=settings.round_timeout,
        party_wait_timeout=settings.party_wait_timeout,
        l2=settings.l2,
        holdout_fraction=settings.holdout_fraction,
        outcome=settings.outcome,
        holdout_seed=settings.holdout_seed,
        early_stopping=settings.early_stopping,
    )

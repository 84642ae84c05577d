"""Vertical logistic and linear regression strategies (server side)."""

from __future__ import annotations

from strategies.base import VerticalStrategy
from strategies.settings import ServerSettings
from vfm_flower.agreement import SignedAgreement
from vfm_flower.errors import ConfigurationError


class VerticalRegression(VerticalStrategy):
    """Align, then train (with hold-out evaluation) or score, for a generalized linear model."""

    model_kind = "logistic"

    def __init__(self, *args, l2: float = 1e-3, holdout_fraction: float = 0.3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.l2 = float(l2)
        self.holdout_fraction = float(holdout_fraction)
        if self.job.model != self.model_kind:
            raise ConfigurationError(
                f"{type(self).__name__} runs model '{self.model_kind}', the job asks for "
                f"'{self.job.model}'"
            )

    def run_phases(self) -> None:
        self.align()


class VerticalLogisticRegression(VerticalRegression):
    """Vertical logistic regression: exact sigmoid, encrypted backward pass."""

    model_kind = "logistic"


class VerticalLinearRegression(VerticalRegression):
    """Vertical linear (ridge) regression."""

    model_kind = "linear"


STRATEGIES = {"logistic": VerticalLogisticRegression, "linear": VerticalLinearRegression}


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
    )

"""Differential privacy: the collaboration's budget and the noise of a release.

An agreement may set a budget (``[limits] privacy-epsilon``, and ``privacy-delta`` for
Gaussian noise). A job whose kind releases noised statistics declares its cost (epsilon and
delta: :func:`job_cost`); at hello, before it reads any data, every party and the server
compare the cost with what its *own* audit log says was spent under the agreement (basic
composition: epsilons add, deltas add), refuse a job that does not fit (rule
``privacy_budget``, :func:`vfm_flower.policy.check_privacy_budget`) and record the charge in
that log (a ``privacy`` event). A job charged and then aborted stays charged: the budget
never undercounts.

The noise: integer (discrete) Laplace or Gaussian noise from OpenDP's samplers (exact
discrete samplers over the operating system's CSPRNG; floating-point Laplace noise leaks
through its low bits, Mironov 2012). A release of counts and sums over disjoint cells (every
customer in one cell) splits its epsilon (and delta) in half between the counts
(sensitivity 1) and the sums (sensitivity ``hi - lo`` of the clipped, shifted target, in
fixed point). The scales:

- Laplace: ``b = sensitivity / epsilon`` (pure epsilon-DP);
- Gaussian: ``sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` (Dwork and Roth,
  Theorem A.1, for ``epsilon < 1``), sampled as a discrete Gaussian (Canonne, Kamath and
  Steinke 2020).

Who adds the noise: the party that computes an encrypted aggregate and never decrypts it
(so the party that decrypts sees only noised figures); see the segment statistics job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vfm_flower.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from vfm_flower.jobs import Job

__all__ = [
    "MECHANISMS",
    "NoiseSpec",
    "PrivacyCost",
    "integer_noise",
    "job_cost",
]

MECHANISMS = ("laplace", "gaussian")

#: Tolerance when comparing spent and budgeted epsilons (sums of floats).
_SLACK = 1e-9


@dataclass(frozen=True)
class PrivacyCost:
    """What one release spends: epsilon and delta (zero for an exact release)."""

    epsilon: float = 0.0
    delta: float = 0.0

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(self.epsilon + other.epsilon, self.delta + other.delta)

    @property
    def is_free(self) -> bool:
        return self.epsilon == 0 and self.delta == 0

    def fits(self, spent: PrivacyCost, epsilon: float, delta: float) -> bool:
        """Whether spending this after ``spent`` stays within the budget."""
        return (
            spent.epsilon + self.epsilon <= epsilon + _SLACK
            and spent.delta + self.delta <= delta + _SLACK * max(delta, 1e-12)
        )

    def to_detail(self) -> str:
        """The audit entry's text (``epsilon=0.5 delta=0``), read back by :meth:`from_detail`."""
        return f"epsilon={self.epsilon!r} delta={self.delta!r}"

    @classmethod
    def from_detail(cls, text: str) -> PrivacyCost:
        values = dict(item.split("=", 1) for item in text.split() if "=" in item)
        return cls(float(values.get("epsilon", 0)), float(values.get("delta", 0)))


@dataclass(frozen=True)
class NoiseSpec:
    """The noise of one release: mechanism and its share of epsilon and delta."""

    mechanism: str
    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigurationError(
                f"noise {self.mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigurationError("noise: epsilon must be a positive number")
        if self.mechanism == "gaussian":
            if not 0 < self.delta < 1:
                raise ConfigurationError("gaussian noise needs a delta in (0, 1) (job: delta)")
            if self.epsilon >= 1:
                raise ConfigurationError(
                    "gaussian noise: the classic calibration holds for epsilon < 1 per "
                    "release (counts and sums get half the job's epsilon each): lower "
                    "epsilon or use laplace"
                )

    def scale(self, sensitivity: float) -> float:
        """The noise scale for a query of this L1 (Laplace) or L2 (Gaussian) sensitivity:
        the Laplace ``b`` or the Gaussian ``sigma``."""
        if self.mechanism == "laplace":
            return sensitivity / self.epsilon
        return sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon

    def halves(self) -> NoiseSpec:
        """The spec of one of two releases that share this budget (counts and sums)."""
        return NoiseSpec(self.mechanism, self.epsilon / 2, self.delta / 2)


def integer_noise(spec: NoiseSpec, sensitivity: float, count: int) -> np.ndarray:
    """``count`` draws of integer noise at :meth:`NoiseSpec.scale` for ``sensitivity``
    (discrete Laplace or discrete Gaussian, OpenDP), as Python ints in an object array."""
    import opendp.prelude as dp

    # OpenDP gates its samplers behind its "contrib" flag (its own setting, not ours).
    dp.enable_features("contrib")
    scale = float(spec.scale(sensitivity))
    domain = dp.vector_domain(dp.atom_domain(T=int))
    if spec.mechanism == "laplace":
        measurement = dp.m.make_laplace(domain, dp.l1_distance(T=int), scale=scale)
    else:
        measurement = dp.m.make_gaussian(domain, dp.l2_distance(T=int), scale=scale)
    return np.array([int(v) for v in measurement([0] * int(count))], dtype=object)


def job_cost(job: Job) -> PrivacyCost:
    """What ``job`` spends: its ``epsilon`` and ``delta`` parameters if its kind has them
    (zero: an exact release), else nothing."""
    params = job.params
    if "epsilon" not in params:
        return PrivacyCost()
    epsilon = float(params["epsilon"])
    delta = float(params.get("delta", 0.0)) if params.get("noise") == "gaussian" else 0.0
    return PrivacyCost(epsilon, delta) if epsilon > 0 else PrivacyCost()


def needs_noise(job: Job) -> bool:
    """Whether ``job`` releases statistics about customers' attributes that a privacy budget
    must cover: a noised kind's job (an ``epsilon`` parameter), or an overlap per segment
    (exact counts per value of a column)."""
    return "epsilon" in job.params or bool(job.params.get("segment-party"))


def total_spent(details: Sequence[str]) -> PrivacyCost:
    """The sum of the charges recorded in an audit log (their ``detail`` texts)."""
    spent = PrivacyCost()
    for text in details:
        spent = spent + PrivacyCost.from_detail(text)
    return spent

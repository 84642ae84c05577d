"""The operator's settings for a vertical job, read from Flower's run-config.

run-config is shipped to every node and identical everywhere: it holds the job description
and server-side paths only, never a secret or a party's private path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfm_flower.agreement import JobRequest
from vfm_flower.errors import ConfigurationError

RUN_CONFIG_KEYS = {
    "agreement-path": "the operator's copy of the signed agreement (TOML)",
    "server-workdir": "where the server writes its audit log and result.json",
    "job": "train or score",
    "model": "logistic or linear",
    "max-iterations": "training iterations at most (the agreement may allow fewer)",
    "paillier-bits": "Paillier modulus bits (>= the agreement's minimum, >= 2048)",
    "l2": "L2 regularization strength",
    "holdout-fraction": "share of the aligned rows the label owner holds out",
    "round-timeout": "seconds to wait for the replies of one round",
    "party-wait-timeout": "seconds to wait for every party to come online",
    "early-stopping": "stop after this many iterations without hold-out improvement (0: off)",
    "holdout-seed": "seed of the label owner's hold-out split (0: random, from the CSPRNG)",
    "outcome": "verb for the positive label in the report's plain language (e.g. buy)",
    "demo-dir": "simulation only: a directory made by `vfm demo --prepare-only`",
}


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key, default)
    return default if value == "" else value


@dataclass(frozen=True)
class ServerSettings:
    agreement_path: Path
    workdir: Path
    job: JobRequest
    l2: float
    holdout_fraction: float
    round_timeout: float
    party_wait_timeout: float
    outcome: str = "respond"
    holdout_seed: int = 0
    early_stopping: int = 0

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ServerSettings:
        unknown = sorted(set(config) - set(RUN_CONFIG_KEYS))
        if unknown:
            raise ConfigurationError(
                f"unknown run-config key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(RUN_CONFIG_KEYS))}"
            )
        demo_dir = str(_get(config, "demo-dir", "")).strip()
        agreement = str(_get(config, "agreement-path", "")).strip()
        if not agreement and demo_dir:
            agreement = str(Path(demo_dir) / "agreement.toml")
        if not agreement:
            raise ConfigurationError(
                "run-config 'agreement-path' is not set: pass --run-config "
                "'agreement-path=\"/path/agreement.toml\"'"
            )
        workdir = str(_get(config, "server-workdir", "")).strip()
        if not workdir:
            workdir = str(Path(demo_dir) / "server") if demo_dir else "vfm-server"
        try:
            job = JobRequest(
                operation=str(_get(config, "job", "train")),
                model=str(_get(config, "model", "logistic")),
                paillier_bits=int(_get(config, "paillier-bits", 2048)),
                max_iterations=int(_get(config, "max-iterations", 30)),
                features=None,
            )
            settings = cls(
                agreement_path=Path(agreement).expanduser(),
                workdir=Path(workdir).expanduser(),
                job=job,
                l2=float(_get(config, "l2", 1e-3)),
                holdout_fraction=float(_get(config, "holdout-fraction", 0.3)),
                round_timeout=float(_get(config, "round-timeout", 600.0)),
                party_wait_timeout=float(_get(config, "party-wait-timeout", 120.0)),
                outcome=str(_get(config, "outcome", "respond")),
                holdout_seed=int(_get(config, "holdout-seed", 0)),
                early_stopping=int(_get(config, "early-stopping", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"run-config has a malformed value: {exc}") from exc
        if not settings.agreement_path.is_file():
            raise ConfigurationError(
                f"run-config 'agreement-path': {settings.agreement_path} does not exist"
            )
        if not 0.0 < settings.holdout_fraction < 0.9:
            raise ConfigurationError("run-config 'holdout-fraction' must be in (0, 0.9)")
        return settings

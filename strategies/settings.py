"""The operator's settings for a built-in vertical job, read from Flower's run-config.

run-config is shipped to every node and identical everywhere: it holds the job description
and server-side paths only, never a secret or a party's private path. The job's parameters
are the job kind's own (``vfm_flower.jobs_builtin``): their names, defaults and hard ranges are
declared there once; every party checks the values against the agreement's signed bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfm_flower.errors import ConfigurationError, PolicyViolation
from vfm_flower.jobs import Job, JobKind, JobRegistry
from vfm_flower.jobs_builtin import builtin_registry
from vfm_flower.psi_chunks import DEFAULT_CHUNK_IDS, check_chunk_ids

#: The run-config keys of the built-in ServerApp itself (job parameters come on top).
RUN_CONFIG_KEYS = {
    "agreement-path": "the operator's copy of the signed agreement (TOML)",
    "server-workdir": "where the server writes its audit log and result.json",
    "job": "the operation (train, evaluate or score for the models; empty: the kind's own, "
    "train for the models, run for overlap)",
    "model": "the job kind: logistic, linear or overlap",
    "data-set": "the data set every party uses, by the name its node-config gives it "
    "(data-sets or data-dir); empty: each party's data-path",
    "round-timeout": "seconds to wait for the replies of one round",
    "party-wait-timeout": "seconds to wait for every party to come online",
    "align-chunk-ids": "blinded ids per alignment message (a larger set takes more rounds)",
    "demo-dir": "simulation only: a directory made by `vfm demo --prepare-only`",
}

DEFAULT_ROUND_TIMEOUT = 600.0
DEFAULT_PARTY_WAIT_TIMEOUT = 120.0

#: The defaults a Flower App declares for those keys (Flower refuses a --run-config key its
#: app does not declare, so `vfm app init` writes these and every job parameter's default).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "agreement-path": "",
    "server-workdir": "",
    "job": "",
    "model": "logistic",
    "data-set": "",
    "round-timeout": DEFAULT_ROUND_TIMEOUT,
    "party-wait-timeout": DEFAULT_PARTY_WAIT_TIMEOUT,
    "align-chunk-ids": DEFAULT_CHUNK_IDS,
    "demo-dir": "",
}


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key, default)
    return default if value == "" else value


def align_chunk_ids_of(config: Mapping[str, Any], value: int | None = None) -> int:
    """The alignment's ids per message: ``value``, else run-config ``align-chunk-ids``, else
    the default; out of range is a ``ConfigurationError`` naming the key."""
    raw = value if value is not None else _get(config, "align-chunk-ids", DEFAULT_CHUNK_IDS)
    try:
        return check_chunk_ids(raw)
    except PolicyViolation as exc:
        raise ConfigurationError(f"run-config 'align-chunk-ids': {exc}") from exc


def job_from_config(config: Mapping[str, Any], kind: JobKind) -> Job:
    """Bind ``kind`` to the operation and parameters named in ``config`` (run-config keys)."""
    operation = str(_get(config, "job", "")).strip()
    return kind.bind_config(config, operation or None)


@dataclass(frozen=True)
class ServerSettings:
    agreement_path: Path
    workdir: Path
    job: Job
    job_kind: JobKind
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    party_wait_timeout: float = DEFAULT_PARTY_WAIT_TIMEOUT
    align_chunk_ids: int = DEFAULT_CHUNK_IDS

    @classmethod
    def from_run_config(
        cls, config: Mapping[str, Any], registry: JobRegistry | None = None
    ) -> ServerSettings:
        registry = registry or builtin_registry()
        known = set(RUN_CONFIG_KEYS) | {p.name for k in registry for p in k.params}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown run-config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
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
        kind = registry.get(str(_get(config, "model", "logistic")))
        # Flower sends every key the app declares (with its default): a parameter of another
        # kind is an error only when it was set to something else than its default.
        own = {p.name for p in kind.params}
        stray = sorted(
            {
                p.name
                for k in registry
                for p in k.params
                if p.name not in own and config.get(p.name, p.default) not in ("", p.default)
            }
        )
        if stray:
            raise ConfigurationError(
                f"run-config key(s) {', '.join(stray)} are not parameters of job kind '{kind.name}'"
            )
        try:
            settings = cls(
                agreement_path=Path(agreement).expanduser(),
                workdir=Path(workdir).expanduser(),
                job=job_from_config(config, kind),
                job_kind=kind,
                round_timeout=float(_get(config, "round-timeout", DEFAULT_ROUND_TIMEOUT)),
                party_wait_timeout=float(
                    _get(config, "party-wait-timeout", DEFAULT_PARTY_WAIT_TIMEOUT)
                ),
                align_chunk_ids=align_chunk_ids_of(config),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"run-config has a malformed value: {exc}") from exc
        if not settings.agreement_path.is_file():
            raise ConfigurationError(
                f"run-config 'agreement-path': {settings.agreement_path} does not exist"
            )
        return settings

"""The operator's run-config: every key known, clear errors, defaults from pyproject."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vfm_flower.errors import ConfigurationError
from vfm_flower.strategies.settings import RUN_CONFIG_KEYS, ServerSettings

ROOT = Path(__file__).resolve().parents[1]


def test_app_template_declares_every_key_with_the_kinds_defaults():
    from vfm_flower.cli.app import app_template
    from vfm_flower.jobs_builtin import BUILTIN_JOB_KINDS

    config = tomllib.loads(app_template())["tool"]["flwr"]["app"]["config"]
    params = {p.name: p.default for k in BUILTIN_JOB_KINDS for p in k.params}
    assert set(config) == set(RUN_CONFIG_KEYS) | set(params)
    assert all(config[name] == default for name, default in params.items())


def test_defaults_and_parsing(small_collab):
    settings = ServerSettings.from_run_config(
        {"agreement-path": str(small_collab.agreement_path), "early-stopping": 3}
    )
    assert settings.job.operation == "train" and settings.job.kind == "logistic"
    assert settings.job["paillier-bits"] == 2048
    assert settings.job["early-stopping"] == 3
    assert settings.job["l2"] == 1e-3  # the kind's declared default
    assert settings.workdir == Path("vfm-server")


def test_missing_agreement_path_says_what_to_set():
    with pytest.raises(ConfigurationError, match="agreement-path"):
        ServerSettings.from_run_config({})
    with pytest.raises(ConfigurationError, match="does not exist"):
        ServerSettings.from_run_config({"agreement-path": "/nonexistent/agreement.toml"})


def test_unknown_and_malformed_keys(small_collab):
    path = str(small_collab.agreement_path)
    with pytest.raises(ConfigurationError, match="unknown run-config key.*itterations"):
        ServerSettings.from_run_config({"agreement-path": path, "max-itterations": 3})
    with pytest.raises(ConfigurationError, match="max-iterations.*not an integer"):
        ServerSettings.from_run_config({"agreement-path": path, "max-iterations": "many"})
    with pytest.raises(ConfigurationError, match="holdout-fraction"):
        ServerSettings.from_run_config({"agreement-path": path, "holdout-fraction": 0.95})


def test_a_parameter_of_another_kind_is_refused(small_collab):
    from vfm_flower.jobs import JobKind, ParamSpec
    from vfm_flower.jobs_builtin import builtin_registry

    registry = builtin_registry()
    registry.register(JobKind("stump", ("train",), (ParamSpec("bins", int, 8, (2, 64)),)))
    path = str(small_collab.agreement_path)
    with pytest.raises(ConfigurationError, match="bins.*not parameters of job kind 'logistic'"):
        ServerSettings.from_run_config({"agreement-path": path, "bins": 4}, registry)

"""The operator's run-config: every key known, clear errors, defaults from pyproject."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from strategies.settings import RUN_CONFIG_KEYS, ServerSettings
from vfm_flower.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_lists_exactly_the_known_keys():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(config) == set(RUN_CONFIG_KEYS)


def test_defaults_and_parsing(small_collab):
    settings = ServerSettings.from_run_config(
        {"agreement-path": str(small_collab.agreement_path), "early-stopping": 3}
    )
    assert settings.job.operation == "train" and settings.job.model == "logistic"
    assert settings.job.paillier_bits == 2048
    assert settings.early_stopping == 3
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
    with pytest.raises(ConfigurationError, match="malformed"):
        ServerSettings.from_run_config({"agreement-path": path, "max-iterations": "many"})
    with pytest.raises(ConfigurationError, match="holdout-fraction"):
        ServerSettings.from_run_config({"agreement-path": path, "holdout-fraction": 0.95})

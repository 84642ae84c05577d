"""A partner's private settings, from its SuperNode's node-config.

Who reads what: only the party itself. The paths (data, key, agreement, work directory) never
leave the node; a refusal that travels to the server names the key to set, not the files
this party has (those go to its own log).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vfm_flower.errors import ConfigurationError
from vfm_flower.keys import validate_party_name

logger = logging.getLogger(__name__)

# node-config keys a partner sets on its SuperNode.
NODE_CONFIG_KEYS = {
    "party": "this party's name as listed in the agreement",
    "data-path": "CSV file with this party's customers (id column(s) and feature columns)",
    "key-path": "this party's private key file NAME.key (from `vfm keygen`)",
    "agreement-path": "the signed agreement TOML this party reviewed and signed",
    "work-dir": "directory for this party's model slice, audit log and outputs",
}

#: Optional node-config keys: more data sets, which a job names (run-config ``data-set``).
NODE_CONFIG_OPTIONAL_KEYS = {
    "data-sets": "named data sets, 'NAME=CSV,NAME=CSV' (e.g. 'q3=/data/q3.csv')",
    "data-dir": "a directory whose files NAME.csv are data sets (new files need no restart)",
}


def _parse_data_sets(text: str, party: str) -> dict[str, Path]:
    """``"NAME=PATH,NAME=PATH"`` -> name -> path (names checked, each once)."""
    from vfm_flower.jobs import DATA_SET_NAME

    out: dict[str, Path] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, path = (s.strip() for s in item.partition("="))
        if not sep or not path or not DATA_SET_NAME.match(name):
            raise ConfigurationError(
                f"node-config 'data-sets' of party '{party}': an entry is not NAME=CSV "
                "(names: 1-64 letters, digits, '_', '-' or '.')"
            )
        if name in out:
            raise ConfigurationError(
                f"node-config 'data-sets' of party '{party}' names '{name}' twice"
            )
        out[name] = Path(path).expanduser()
    return out


@dataclass(frozen=True)
class PartySettings:
    """A partner's private settings (from its SuperNode's node-config)."""

    party: str
    data_path: Path
    key_path: Path
    agreement_path: Path
    work_dir: Path
    #: the whole node-config, for an app's data loader that reads keys of its own
    node_config: Mapping[str, Any] = field(default_factory=dict)
    #: named data sets (``data-sets``) and a directory of them (``data-dir``)
    data_sets: Mapping[str, Path] = field(default_factory=dict)
    data_dir: Path | None = None

    def data_path_for(self, data_set: str | None) -> Path:
        """The file of the data set a job names (``None``: ``data-path``).

        Raises
        ------
        ConfigurationError
            This party has no such data set (the message names the party and what it has).
        """
        from vfm_flower.jobs import DATA_SET_NAME

        if data_set is None:
            return self.data_path
        if not DATA_SET_NAME.match(data_set):
            raise ConfigurationError(f"party '{self.party}': {data_set!r} is not a data set name")
        if data_set in self.data_sets:
            return self.data_sets[data_set]
        if self.data_dir is not None:
            candidate = (self.data_dir / f"{data_set}.csv").resolve()
            if candidate.parent == self.data_dir.resolve() and candidate.is_file():
                return candidate
        known = sorted(self.data_sets)
        if self.data_dir is not None:
            known += sorted(p.stem for p in self.data_dir.glob("*.csv") if p.stem not in known)
        # the names stay in this party's own log: the refusal travels to the server
        logger.warning(
            "party '%s': no data set '%s'; this node has: %s",
            self.party,
            data_set,
            ", ".join(known) or "none besides its data-path",
        )
        raise ConfigurationError(
            f"party '{self.party}' has no data set '{data_set}' (its own log lists the ones it "
            "has): add it to its node-config's data-sets, or put NAME.csv in its data-dir"
        )

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, Any], *, data_file: bool = True
    ) -> PartySettings:
        """Validate node-config; every problem is a one-line error that says what to set.

        With ``data_file=False`` (an app with its own data loader) ``data-path`` is optional
        and need not be a file: the loader interprets it.
        """
        required = [k for k in NODE_CONFIG_KEYS if data_file or k != "data-path"]
        missing = [k for k in required if not str(node_config.get(k, "")).strip()]
        if missing:
            hints = "; ".join(f"'{k}' ({NODE_CONFIG_KEYS[k]})" for k in missing)
            example = " ".join(f'{k}="..."' for k in missing)
            raise ConfigurationError(
                f"node-config is missing {hints}: start the SuperNode with "
                f"--node-config '{example}'"
            )
        try:
            party = validate_party_name(str(node_config["party"]))
        except ValueError as exc:
            raise ConfigurationError(f"node-config 'party': {exc}") from exc
        settings = cls(
            party=party,
            data_path=Path(str(node_config.get("data-path", ""))).expanduser(),
            key_path=Path(str(node_config["key-path"])).expanduser(),
            agreement_path=Path(str(node_config["agreement-path"])).expanduser(),
            work_dir=Path(str(node_config["work-dir"])).expanduser(),
            node_config=MappingProxyType(dict(node_config)),
            data_sets=MappingProxyType(
                _parse_data_sets(str(node_config.get("data-sets", "") or ""), party)
            ),
            data_dir=(
                Path(str(node_config["data-dir"])).expanduser()
                if str(node_config.get("data-dir", "") or "").strip()
                else None
            ),
        )
        if settings.data_dir is not None and not settings.data_dir.is_dir():
            raise ConfigurationError(
                f"node-config 'data-dir' of party '{party}': {settings.data_dir} is not a directory"
            )
        files = [("key-path", settings.key_path), ("agreement-path", settings.agreement_path)]
        if data_file:
            files.insert(0, ("data-path", settings.data_path))
            files += [(f"data-sets {n}", p) for n, p in settings.data_sets.items()]
        for name, path in files:
            if not path.is_file():
                raise ConfigurationError(
                    f"node-config '{name}' of party '{party}': {path} does not exist or is "
                    "not a file"
                )
            if not os.access(path, os.R_OK):
                raise ConfigurationError(
                    f"node-config '{name}' of party '{party}': {path} is not readable"
                )
        return settings

"""Shared fixtures: small collaborations built on the fly (keys, data, signed agreement)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@dataclass
class Collaboration:
    root: Path
    agreement_path: Path
    data: dict[str, Path]
    keys: dict[str, Path]
    identities: dict[str, Any] = field(default_factory=dict)
    operator_key: Path | None = None

    def files(self):
        from vfm_flower.runtime.local_job import PartyFiles

        return {p: PartyFiles(self.data[p], self.keys[p]) for p in self.data}

    def run(
        self,
        workdir: Path | None = None,
        grid_out=None,
        offline=(),
        party_agreements=None,
        **run_config,
    ):
        from vfm_flower.runtime.local_job import run_local_job

        config = {"party-wait-timeout": 0.2, **run_config}
        workdir = workdir or (self.root / "work")
        return run_local_job(
            self.agreement_path,
            self.files(),
            workdir,
            config,
            offline=tuple(offline),
            grid_out=grid_out,
            party_agreements=party_agreements,
            operator_key=self.operator_key,
        )


def make_collaboration(
    root: Path,
    frames: dict[str, pd.DataFrame],
    *,
    label_owner: str,
    label_column: str = "y",
    positive_class: str | None = None,
    id_column: str = "email",
    id_kind: str = "email",
    **terms: Any,
) -> Collaboration:
    from vfm_flower.agreement import SignedAgreement, init_agreement
    from vfm_flower.keys import PartyIdentity

    root.mkdir(parents=True, exist_ok=True)
    identities = {p: PartyIdentity.generate(p) for p in frames}
    data, keys = {}, {}
    for party, frame in frames.items():
        folder = root / "parties" / party
        keys[party], _ = identities[party].save(folder)
        data[party] = folder / f"{party}.csv"
        frame.to_csv(data[party], index=False)
    operator = PartyIdentity.generate("operator")
    operator_key, _ = operator.save(root / "operator")
    agreement = init_agreement(
        purpose="test collaboration",
        label_owner=label_owner,
        label_column=label_column,
        id_column=id_column,
        id_kind=id_kind,
        parties={p: i.public for p, i in identities.items()},
        operator=operator.public,
        positive_class=positive_class,
        **terms,
    )
    signed = SignedAgreement(agreement, {})
    for identity in (*identities.values(), operator):
        signed = signed.with_signature(identity)
    path = root / "agreement.toml"
    signed.save(path)
    return Collaboration(root, path, data, keys, identities, operator_key)


def synthetic_frames(
    n_shared: int = 300, n_only: int = 40, seed: int = 7, parties=("lo", "p1", "p2")
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Three parties over partly shared customers; the label depends on every party's column."""
    rng = np.random.default_rng(seed)
    shared = [f"user{i:05d}@example.com" for i in range(n_shared)]
    x = {p: rng.normal(size=n_shared) for p in parties}
    logits = sum(x.values()) * 1.5
    y = (rng.random(n_shared) < 1 / (1 + np.exp(-logits))).astype(int)
    frames = {}
    for k, party in enumerate(parties):
        only = [f"only{party}{i:04d}@example.com" for i in range(n_only)]
        ids = shared + only
        values = np.concatenate([x[party], rng.normal(size=n_only)])
        ids_fmt = [
            s.upper() if (k == 1 and i % 2) else f" {s} " if k == 2 else s
            for i, s in enumerate(ids)
        ]
        frame = pd.DataFrame({"email": ids_fmt, f"{party}_x": values})
        if party == parties[0]:
            frame["y"] = np.concatenate([y, rng.integers(0, 2, n_only)])
        frames[party] = frame.sample(frac=1.0, random_state=k).reset_index(drop=True)
    return frames, shared


def governed_collab(root: Path, seed: int, **terms: Any) -> Collaboration:
    """Three small parties (120 shared customers) under an agreement with ``terms``."""
    frames, _ = synthetic_frames(n_shared=120, n_only=10, seed=seed)
    terms.setdefault("min_intersection", 50)
    return make_collaboration(root / "c", frames, label_owner="lo", **terms)


def audit_decisions(root: Path) -> list[tuple[str, str]]:
    """``(writer folder, decision)`` of every audit entry under ``root``."""
    import json

    out = []
    for path in root.rglob("audit-*.jsonl"):
        for line in path.read_text().splitlines():
            out.append((path.parent.name, json.loads(line).get("decision")))
    return out


@pytest.fixture
def small_collab(tmp_path):
    frames, shared = synthetic_frames()
    collab = make_collaboration(tmp_path / "collab", frames, label_owner="lo", min_intersection=50)
    collab.shared = shared  # type: ignore[attr-defined]
    return collab


def joint_rows_of(states, party: str, label_owner: str):
    """A party's rows of the joint customers, in the common order. Test-side knowledge: a
    passive party of a kind that hides membership never learns them (the LO's positions and
    the party's own PSI permutation are combined here)."""
    if party == label_owner or "joint_rows" in states[party]:
        return states[party].array("joint_rows")
    positions = states[label_owner].array(f"hm.positions.{party}")
    return states[party].array("hm.row_of_position")[positions]

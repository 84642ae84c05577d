"""The demo data: COIL 2000 Caravan insurance, split vertically across three companies.

Source: UCI Machine Learning Repository, "Insurance Company Benchmark (COIL 2000)",
P. van der Putten, Sentient Machine Research, 2000, CC BY 4.0 (identical to
``ISLP/data/Caravan.csv``). Shipped compressed in ``vfm_flower/data/caravan.csv.gz``.

The split mimics a real collaboration:

- ``broker`` (a data broker): the ``M*`` zip-code socio-demographics;
- ``bank``: the ``P*`` contribution levels per product;
- ``insurer`` (label owner): the ``A*`` numbers of policies and the ``Purchase`` label.

Customer ids are synthesized e-mail addresses, formatted differently by each company (case,
surrounding white space), and each company also holds customers the others do not have, so the
demo exercises id normalization and PSI for real. The synthesis uses a seeded generator: it is
demo data, not a secret.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_PARTIES = ("broker", "bank", "insurer")
DEMO_LABEL_OWNER = "insurer"
DEMO_LABEL_COLUMN = "Purchase"
DEMO_POSITIVE_CLASS = "Yes"
DEMO_ID_COLUMN = "email"
DEMO_OPERATOR = "operator"
_COLUMN_PREFIX = {"broker": "M", "bank": "P", "insurer": "A"}
# Share of the real customers each company holds, and how many customers only it has.
_COVERAGE = {"broker": 0.93, "bank": 0.90, "insurer": 0.96}
_EXTRA = {"broker": 400, "bank": 350, "insurer": 250}
_FIRST = ("anna", "bram", "carla", "daan", "eva", "finn", "gijs", "hanna", "ilse", "joost")
_DOMAINS = ("example.com", "mail.example.org", "post.example.net")


def load_caravan() -> pd.DataFrame:
    """The Caravan table shipped with the package (5,822 rows, 86 columns)."""
    blob = resources.files("vfm_flower").joinpath("data/caravan.csv.gz").read_bytes()
    return pd.read_csv(io.BytesIO(gzip.decompress(blob)))


def _emails(ids: np.ndarray) -> np.ndarray:
    return np.array(
        [f"{_FIRST[i % len(_FIRST)]}.customer{i:06d}@{_DOMAINS[i % len(_DOMAINS)]}" for i in ids],
        dtype=object,
    )


def _format_for(party: str, emails: np.ndarray, rng: np.random.Generator) -> list[str]:
    out = []
    for email in emails:
        if party == "broker":
            out.append(email)
        elif party == "bank":
            out.append(f"  {email.upper()} " if rng.random() < 0.5 else email.upper())
        else:
            local, domain = email.split("@")
            out.append(f"{local.title()}@{domain.capitalize()}\t")
    return out


@dataclass(frozen=True)
class DemoSplit:
    """Where the demo wrote each party's CSV, and the true joint customer count."""

    paths: dict[str, Path]
    joint_customers: int


def write_demo_parties(out_dir: str | os.PathLike[str], seed: int = 2000) -> DemoSplit:
    """Split Caravan into the three demo parties' CSV files in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Created if needed; files ``broker.csv``, ``bank.csv``, ``insurer.csv``.
    seed : int
        Seed of the synthesis (ids, overlap, formatting, row order).
    """
    rng = np.random.default_rng(seed)
    table = load_caravan()
    n = len(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    holders: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    next_id = n
    for party in DEMO_PARTIES:
        real = np.flatnonzero(rng.random(n) < _COVERAGE[party])
        holders[party] = real
        # Customers only this party has: real attribute rows under new ids.
        extra_rows = rng.integers(0, n, size=_EXTRA[party])
        extra_ids = np.arange(next_id, next_id + _EXTRA[party])
        next_id += _EXTRA[party]
        prefix = _COLUMN_PREFIX[party]
        columns = [c for c in table.columns if c.startswith(prefix) and c != DEMO_LABEL_COLUMN]
        if party == DEMO_LABEL_OWNER:
            columns.append(DEMO_LABEL_COLUMN)
        rows = np.concatenate([real, extra_rows])
        ids = np.concatenate([real, extra_ids])
        frame = table.iloc[rows][columns].reset_index(drop=True)
        frame.insert(0, DEMO_ID_COLUMN, _format_for(party, _emails(ids), rng))
        frame = frame.iloc[rng.permutation(len(frame))]
        path = out / f"{party}.csv"
        tmp = path.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
        paths[party] = path
    joint = set(holders["broker"]) & set(holders["bank"]) & set(holders["insurer"])
    return DemoSplit(paths=paths, joint_customers=len(joint))


@dataclass(frozen=True)
class DemoCollaboration:
    """A ready demo: three parties with keys and data, and an agreement all of them signed."""

    root: Path
    agreement_path: Path
    party_data: dict[str, Path]
    party_keys: dict[str, Path]
    joint_customers: int
    operator_key: Path


def prepare_demo_collaboration(root: str | os.PathLike[str], seed: int = 2000) -> DemoCollaboration:
    """Create keys, party data and a signed agreement under ``root``.

    Layout: ``root/agreement.toml``, ``root/parties/NAME/{NAME.csv,NAME.key,NAME.pub}``,
    the operator's key pair in ``root/operator/`` and a copy of its key in ``root/server/``
    (the server work dir of a simulation run with ``demo-dir``).
    """
    from vfm_flower.agreement import SignedAgreement, init_agreement
    from vfm_flower.keys import PartyIdentity, install_private_key

    root = Path(root)
    identities = {p: PartyIdentity.generate(p) for p in DEMO_PARTIES}
    keys: dict[str, Path] = {}
    data: dict[str, Path] = {}
    for party, identity in identities.items():
        folder = root / "parties" / party
        key_path, _ = identity.save(folder)
        keys[party] = key_path
    split = write_demo_parties(root / "parties" / "_split", seed=seed)
    for party, path in split.paths.items():
        target = root / "parties" / party / f"{party}.csv"
        os.replace(path, target)
        data[party] = target
    (root / "parties" / "_split").rmdir()
    operator = PartyIdentity.generate(DEMO_OPERATOR)
    operator_key, _ = operator.save(root / "operator")
    install_private_key(operator_key, root / "server")
    terms = init_agreement(
        purpose="Caravan insurance propensity: who is likely to buy a caravan policy",
        label_owner=DEMO_LABEL_OWNER,
        label_column=DEMO_LABEL_COLUMN,
        id_column=DEMO_ID_COLUMN,
        id_kind="email",
        parties={p: i.public for p, i in identities.items()},
        positive_class=DEMO_POSITIVE_CLASS,
        min_intersection=1000,
        operator=operator.public,
    )
    signed = SignedAgreement(terms, {})
    for identity in (*identities.values(), operator):
        signed = signed.with_signature(identity)
    agreement_path = root / "agreement.toml"
    signed.save(agreement_path)
    return DemoCollaboration(
        root=root,
        agreement_path=agreement_path,
        party_data=data,
        party_keys=keys,
        joint_customers=split.joint_customers,
        operator_key=operator_key,
    )

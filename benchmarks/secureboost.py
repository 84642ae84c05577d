"""Benchmark: vertical SecureBoost (hidden membership, 2048-bit Paillier) against XGBoost.

The issue's setting: 45,000 customers, 17 columns over 3 parties (the label owner 6, two
passive parties 6 and 5; a size like SecretFlow's published bank-marketing benchmark), 20
trees, depth 5, 32 bins, learning rate 0.3, 2048-bit keys, 20% of the rows held out. The data
are generated (a logistic model with interactions); every party holds the same customers.

Every step of every party runs in this process with the protocol's own functions
(:class:`vfm_flower.secureboost_local.LocalSecureBoost`). Figures:

* ``seconds``: the critical path with every party on its own machine of these cores: per
  level, the passive parties' histograms in parallel while the label owner computes the next
  level's encryption randomness (the slower of the two), then its decryption and decision,
  the partitions and the encoding;
* ``seconds_sequential``: all of it one step after the other (one machine for everyone);
* ``rounds_per_tree``: server rounds per tree (four per level, whatever the data);
* ``auc``: hold-out AUC; ``xgboost_seconds`` / ``xgboost_auc``: XGBoost (``hist``, the same
  rows, split, bins and parameters, ``n_jobs`` = the cores given), timed in the same run;
  ``ratio``: ``seconds / xgboost_seconds``;
* ``identical_to_plain``: the same protocol with plain histograms grows the same trees.

Usage::

    python benchmarks/secureboost.py [--rows 45000] [--trees 20] [--depth 5] [--bins 32]
        [--bits 2048] [--workers 2]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfm_flower.secureboost_local import LocalSecureBoost  # noqa: E402
from vfm_flower.trees import BoostingParams  # noqa: E402

COLUMNS = {"insurer": 6, "bank": 6, "telco": 5}


def generate(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, sum(COLUMNS.values())))
    X[:, 3] = rng.integers(0, 5, rows)  # a few categorical-like columns
    X[:, 9] = rng.integers(0, 3, rows)
    w = rng.normal(size=X.shape[1]) * 0.6
    z = X @ w + np.sin(2 * X[:, 0]) + X[:, 7] * X[:, 13] - 1.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(float)
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=45_000)
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--bins", type=int, default=32)
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plain-check", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    X, y = generate(args.rows, args.seed)
    a, b = COLUMNS["insurer"], COLUMNS["insurer"] + COLUMNS["bank"]
    X_lo = X[:, :a]
    parts = {"bank": X[:, a:b], "telco": X[:, b:]}
    joint = {k: np.arange(args.rows) for k in parts}
    params = BoostingParams(
        n_trees=args.trees, max_depth=args.depth, n_bins=args.bins, learning_rate=0.3
    )

    started = time.perf_counter()
    run = LocalSecureBoost(params, key_bits=args.bits, seed=args.seed, workers=args.workers).fit(
        "insurer", X_lo, y, parts, joint
    )
    wall = time.perf_counter() - started
    ho = run.holdout
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y[ho], run.predict(X_lo[ho], {k: v[ho] for k, v in parts.items()}))

    identical = None
    if not args.no_plain_check:
        plain = LocalSecureBoost(params, encrypt=False, seed=args.seed).fit(
            "insurer", X_lo, y, parts, joint
        )
        identical = plain.model.canonical() == run.model.canonical()

    import xgboost as xgb

    ref = xgb.XGBClassifier(
        n_estimators=args.trees,
        max_depth=args.depth,
        max_bin=args.bins,
        learning_rate=0.3,
        reg_lambda=1.0,
        min_child_weight=1.0,
        tree_method="hist",
        base_score=float(y[~ho].mean()),
        n_jobs=args.workers,
    )
    xgb_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ref.fit(X[~ho], y[~ho])
        xgb_times.append(time.perf_counter() - t0)
    xgb_seconds = min(xgb_times)
    xgb_auc = roc_auc_score(y[ho], ref.predict_proba(X[ho])[:, 1])

    seconds = run.critical_path_seconds()
    print(
        json.dumps(
            {
                "rows": args.rows,
                "columns": X.shape[1],
                "parties": len(COLUMNS),
                "trees": args.trees,
                "depth": args.depth,
                "bins": args.bins,
                "key_bits": args.bits,
                "workers": args.workers,
                "seconds": round(seconds, 2),
                "seconds_sequential": round(run.sequential_seconds(), 2),
                "seconds_wall": round(wall, 2),
                "rounds_per_tree": run.rounds / args.trees,
                "megabytes_sent": round(run.bytes_sent / 1e6, 1),
                "auc": round(float(auc), 4),
                "xgboost_seconds": round(xgb_seconds, 3),
                "xgboost_auc": round(float(xgb_auc), 4),
                "ratio": round(seconds / xgb_seconds, 1),
                "identical_to_plain": identical,
                "seconds_per_level": {
                    k: round(sum(lv.get(k, 0.0) for lv in run.levels) / len(run.levels), 3)
                    for k in sorted({k for lv in run.levels for k in lv})
                },
            }
        )
    )


if __name__ == "__main__":
    main()

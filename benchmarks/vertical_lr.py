"""Benchmark: one full iteration of encrypted vertical logistic regression, in-process.

Rounds of one iteration (all parties in this process; a deployment runs them on their own
machines, so timing the passive parties one after the other here is conservative):

1. forward: each passive party masks its partial score ``u_k = X_k w_k`` with pairwise masks,
   the server sums the masked vectors, the label owner (LO) removes its own masks;
2. LO residual: the LO computes ``d = sigmoid(z) - y`` and encrypts it (DJN obfuscators);
3. party gradient: each passive party computes the masked, packed ``[[X_k^T d + r_k]]``;
4. LO decrypt: the LO decrypts (CRT) and returns the masked values; each party unmasks.

Payloads go through the byte codecs (as over Flower). The naive baseline does the backward
pass with per-element ``phe`` calls (encrypt each residual, multiply each ciphertext by each
float feature, add per feature, decrypt), measured on a subsample and extrapolated.

Usage::

    python benchmarks/vertical_lr.py [--rows 10000] [--features 50] [--bits 2048] [--dense]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfm_flower import hazmat, masking, paillier  # noqa: E402
from vfm_flower.keys import PartyIdentity  # noqa: E402

LO = "insurer"


def _standardize(column: np.ndarray) -> np.ndarray:
    std = column.std()
    return (column - column.mean()) / (std if std > 0 else 1.0)


def make_features(rows: int, features: int, dense: bool, rng: np.random.Generator) -> np.ndarray:
    """Synthetic standardized marketing features.

    Default mix: 40% binary flags (5-50% ones), 30% small integers 0..9 (counts, levels),
    30% continuous (normal and log-normal amounts). ``dense``: all continuous.
    """
    cols = []
    n_binary = 0 if dense else round(0.4 * features)
    n_small = 0 if dense else round(0.3 * features)
    for _ in range(n_binary):
        cols.append(rng.binomial(1, rng.uniform(0.05, 0.5), rows).astype(np.float64))
    for _ in range(n_small):
        cols.append(rng.integers(0, 10, rows).astype(np.float64))
    for j in range(features - n_binary - n_small):
        if j % 2:
            cols.append(rng.lognormal(0.0, 0.75, rows))
        else:
            cols.append(rng.normal(size=rows))
    return np.column_stack([_standardize(c) for c in cols])


def _own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _machine_busy() -> float:
    """CPU seconds all processes of the machine spent busy (Linux /proc/stat), else 0."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def run_iteration(ctx: dict, iteration: int, *, prefill: bool) -> dict:
    """One training iteration; returns the step timings and results."""
    public, private, encryptor = ctx["public"], ctx["private"], ctx["encryptor"]
    parties, weights, seeds, y = ctx["parties"], ctx["weights"], ctx["seeds"], ctx["y"]
    rows = len(y)
    label = f"bench-run/iter-{iteration}/forward"
    t: dict[str, float] = {}
    if prefill:
        started = time.perf_counter()
        encryptor.fill_pool(rows)
        t["prefill_off_critical_path"] = time.perf_counter() - started

    cpu_started, busy_started = _own_cpu(), _machine_busy()

    # Round 1: forward, masked secure sum.
    started = time.perf_counter()
    wire = []
    for name, X in parties.items():
        u = X @ weights[name]
        masked = masking.mask_vector(masking.encode_fixed(u), name, seeds[name], label)
        wire.append(masking.u64_to_bytes(masked))
    summed = masking.sum_masked([masking.u64_from_bytes(b, rows) for b in wire])
    z = masking.decode_fixed(masking.unmask_sum(summed, LO, seeds[LO], label))
    t["forward"] = time.perf_counter() - started

    # Round 2: LO residual, encrypted.
    started = time.perf_counter()
    d = _sigmoid(z) - y
    enc_d = paillier.encrypt_residuals(public, d, bound=1.0, encryptor=encryptor)
    enc_bytes = paillier.encrypted_vector_to_bytes(enc_d, public)
    t["lo_residual"] = time.perf_counter() - started

    # Round 3: each passive party, masked packed encrypted gradient.
    started = time.perf_counter()
    replies, states = {}, {}
    for name, X in parties.items():
        received = paillier.encrypted_vector_from_bytes(enc_bytes, public)
        packed, states[name] = paillier.masked_encrypted_gradient(public, received, X)
        replies[name] = paillier.packed_to_bytes(packed, public)
    t["party_gradient"] = time.perf_counter() - started

    # Round 4: LO decrypts; each party removes its masks.
    started = time.perf_counter()
    returned = {}
    for name, blob in replies.items():
        packed = paillier.packed_from_bytes(blob, public)
        values = paillier.decrypt_masked_gradient(private, packed)
        returned[name] = (paillier.masked_values_to_bytes(values, packed.slot_bits), packed)
    t["lo_decrypt"] = time.perf_counter() - started
    started = time.perf_counter()
    gradients = {}
    for name, (blob, packed) in returned.items():
        values = paillier.masked_values_from_bytes(blob, packed.slot_bits, packed.count)
        gradients[name] = paillier.unmask_gradient(values, states[name])
    t["party_unmask"] = time.perf_counter() - started
    cpu = _own_cpu() - cpu_started
    foreign = max(0.0, _machine_busy() - busy_started - cpu)

    # Correctness against the float computation.
    z_plain = sum(X @ weights[name] for name, X in parties.items())
    forward_err = float(np.max(np.abs(z - z_plain)))
    grad_err, tolerance_ok = 0.0, True
    for name, X in parties.items():
        exact = X.T @ d
        err = np.abs(gradients[name] - exact)
        # Quantization bound: rows * (|d| 2**-17 + |x| 2**-33) plus float rounding.
        bound = rows * (2.0**-17 + float(np.max(np.abs(X))) * 2.0**-33) + 1e-9 * rows
        tolerance_ok &= bool(np.all(err <= bound))
        grad_err = max(grad_err, float(err.max()))
    tolerance_ok &= forward_err <= len(parties) * 2.0**-24
    seconds = sum(v for k, v in t.items() if k != "prefill_off_critical_path")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "foreign_cpu": foreign,
        "steps": t,
        "correct": tolerance_ok,
        "max_abs_gradient_error": grad_err,
        "max_abs_forward_error": forward_err,
    }


def naive_backward(ctx: dict, rows_sub: int, features_sub: int) -> dict[str, float]:
    """Per-element ``phe`` backward pass on a subsample: seconds per unit of work."""
    public, private = ctx["public"], ctx["private"]
    X = next(iter(ctx["parties"].values()))[:rows_sub, :features_sub]
    d = np.linspace(-0.9, 0.9, rows_sub)
    started = time.perf_counter()
    enc = [public.encrypt(float(v)) for v in d]
    t_enc = (time.perf_counter() - started) / rows_sub
    started = time.perf_counter()
    sums = []
    for j in range(features_sub):
        acc = enc[0] * float(X[0, j])
        for i in range(1, rows_sub):
            acc = acc + enc[i] * float(X[i, j])
        sums.append(acc)
    t_mul_add = (time.perf_counter() - started) / (rows_sub * features_sub)
    started = time.perf_counter()
    values = [private.decrypt(s) for s in sums]
    t_dec = (time.perf_counter() - started) / features_sub
    if not np.allclose(values, X.T @ d, atol=1e-6):
        raise RuntimeError("naive phe baseline computed a wrong gradient")
    return {"encrypt": t_enc, "mul_add": t_mul_add, "decrypt": t_dec}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=50, help="passive features in total")
    parser.add_argument("--bits", type=int, default=2048, help="Paillier modulus size")
    parser.add_argument("--passive-parties", type=int, default=2)
    parser.add_argument("--dense", action="store_true", help="all features continuous")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--naive-rows", type=int, default=200)
    parser.add_argument("--naive-features", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic data only")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)  # synthetic data only, never crypto
    print(
        f"vertical LR iteration: {args.rows} rows, {args.features} passive features in "
        f"{args.passive_parties} parties, {args.bits}-bit Paillier, "
        f"{'dense (all continuous)' if args.dense else 'marketing mix'} features, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    public, private = paillier.generate_paillier_keypair(args.bits)
    encryptor = hazmat.DJNEncryptor(public, private=private)  # LO encrypts under its own key
    print(f"setup: key generation {time.perf_counter() - started:.2f} s (once per run)")

    X_all = make_features(args.rows, args.features, args.dense, rng)
    order = rng.permutation(args.features)  # spread the column kinds over the parties
    names = [f"party{k}" for k in range(1, args.passive_parties + 1)]
    parties = {
        name: np.ascontiguousarray(X_all[:, cols])
        for name, cols in zip(names, np.array_split(order, args.passive_parties))
    }
    weights = {name: rng.normal(scale=0.3, size=X.shape[1]) for name, X in parties.items()}
    z_true = sum(X @ weights[name] for name, X in parties.items())
    y = (rng.uniform(size=args.rows) < _sigmoid(z_true - 2.0)).astype(np.float64)

    started = time.perf_counter()
    identities = {name: PartyIdentity.generate(name) for name in [LO, *names]}
    publics = {name: ident.public for name, ident in identities.items()}
    seeds = {
        name: masking.derive_pairwise_seeds(
            ident, publics, run_id="bench-run", agreement_hash="bench-agreement"
        )
        for name, ident in identities.items()
    }
    print(f"setup: pairwise seeds {time.perf_counter() - started:.3f} s (once per run)")
    ctx = {
        "public": public,
        "private": private,
        "encryptor": encryptor,
        "parties": parties,
        "weights": weights,
        "seeds": seeds,
        "y": y,
    }

    runs = []
    for it in range(args.iterations):
        result = run_iteration(ctx, it, prefill=False)
        steps = ", ".join(f"{k} {v:.3f}" for k, v in result["steps"].items())
        print(
            f"iteration {it}: {result['seconds']:.3f} s ({steps}) correct={result['correct']}; "
            f"CPU {result['cpu']:.2f} s ours, {result['foreign_cpu']:.2f} s other processes"
        )
        runs.append(result)
    prefilled = run_iteration(ctx, args.iterations, prefill=True)
    steps = ", ".join(f"{k} {v:.3f}" for k, v in prefilled["steps"].items())
    print(f"iteration, obfuscators prefilled while idle: {prefilled['seconds']:.3f} s ({steps})")

    seconds = statistics.median(r["seconds"] for r in runs)
    forward = statistics.median(r["steps"]["forward"] for r in runs)
    unit = naive_backward(ctx, args.naive_rows, args.naive_features)
    naive = (
        forward
        + unit["encrypt"] * args.rows  # [[d]] is encrypted once and sent to every party
        + unit["mul_add"] * args.rows * args.features
        + unit["decrypt"] * args.features
    )
    print(
        f"naive phe per element: encrypt {unit['encrypt'] * 1e3:.2f} ms, multiply+add "
        f"{unit['mul_add'] * 1e3:.3f} ms, decrypt {unit['decrypt'] * 1e3:.2f} ms "
        f"(measured on {args.naive_rows} rows x {args.naive_features} features)"
    )
    print(
        f"ours: {seconds:.3f} s per iteration (median of {args.iterations}); naive extrapolated: "
        f"{naive:.1f} s; speedup {naive / seconds:.0f}x"
    )
    correct = all(r["correct"] for r in runs) and prefilled["correct"]
    summary = {
        "rows": args.rows,
        "passive_features": args.features,
        "passive_parties": args.passive_parties,
        "key_bits": args.bits,
        "feature_mix": "dense" if args.dense else "marketing",
        "seconds_per_iteration": round(seconds, 4),
        "seconds_per_iteration_min": round(min(r["seconds"] for r in runs), 4),
        "seconds_per_iteration_prefilled": round(prefilled["seconds"], 4),
        "cpu_seconds_per_iteration": round(statistics.median(r["cpu"] for r in runs), 3),
        "other_processes_cpu_seconds_per_iteration": round(
            statistics.median(r["foreign_cpu"] for r in runs), 3
        ),
        "rounds_per_iteration": 4,
        "step_seconds": {
            k: round(statistics.median(r["steps"][k] for r in runs), 4) for k in runs[0]["steps"]
        },
        "naive_seconds_per_iteration": round(naive, 2),
        "speedup": round(naive / seconds, 1),
        "correct": int(correct),
        "max_abs_gradient_error": max(r["max_abs_gradient_error"] for r in runs),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())

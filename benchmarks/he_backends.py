"""Benchmark: the two encrypted products of a private-gradient iteration on both HE backends.

Usage::

    python benchmarks/he_backends.py --rows 1000000 --features 50 [--paillier-rows 10000]

What one iteration of the private-gradient protocol asks of the HE scheme, measured on each
backend through the same :class:`vfm_flower.he_backend.HEBackend` calls, in the same run:

1. the label owner encrypts the residuals ``[[d]]`` (one per row);
2. a passive party computes its gradient ``[[X^T d]]`` (``dot``) and the image of an
   encrypted direction ``[[X s]]`` (``matvec``), and re-randomizes both for the key holder;
3. the label owner decrypts both.

The lattice backend (BFV, N = 16384, one 60-bit plaintext prime, depth 2) runs at
``--rows``; the Paillier backend (2048-bit key: ``dot`` by bucketed multi-exponentiation,
``matvec`` by Straus, one ciphertext per value) at ``--paillier-rows``, with its time scaled
linearly to ``--rows`` for comparison (Paillier's cost is linear in rows). That generic path
re-randomizes with full-size exponents and decrypts one ciphertext per value; the protocol's
own Paillier iteration is far faster (packed slots, short-exponent randomness), so it is run
too, in this process, as the fair baseline (``benchmarks/vertical_lr.py``). Data: quantized
standardized features (``2**-12``, ``|x| < 2**16``, as the protocol quantizes them), residuals
``|d| < 2**20`` and a direction ``|s| < 2**20``. Both backends must return exactly
``X^T d`` and ``X s`` (checked against numpy).

This is not the whole iteration: the protocol's masks, the preconditioner and the state moves
are not in it, and the protocol does not run on the lattice backend yet (issue 15).

The lattice side runs twice on one :class:`vfm_flower.lattice_matrix.LatticeMatrix` (made
once, with its worker processes): the first iteration encodes ``X``'s plaintexts (a party in
a fresh process every round pays this), the second reuses them (``cached_``).

The last line printed is one JSON object: rows, features, lattice (encrypt, dot, matvec,
rerandomize, decrypt seconds, iteration_seconds = their sum, the same with ``cached_``,
workers_start_seconds, bytes of [[d]] and of the two results, public key bytes), paillier
(the same at paillier_rows, and iteration_seconds_scaled to rows), paillier_protocol (the
Paillier protocol's real iteration, ``benchmarks/vertical_lr.py`` at paillier_rows in this
process, and scaled to rows),
speedup_generic, speedup_protocol and speedup_protocol_cached (scaled Paillier over
lattice), exact, workers,
peak_rss_mb (this process and, separately, its largest worker).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vfm_flower.he_backend import HEBackend
from vfm_flower.lattice import LatticeContext, lattice_parameters
from vfm_flower.lattice_matrix import LatticeMatrix
from vfm_flower.paillier import PaillierContext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vertical_lr  # noqa: E402  (the Paillier protocol's own iteration, the fair baseline)


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.clip(np.round(rng.standard_normal((rows, features)) * 2**12), -(2**16) + 1, 2**16 - 1)
    d = rng.integers(-(2**20) + 1, 2**20, rows)
    s = rng.integers(-(2**20) + 1, 2**20, features)
    return X.astype(np.int64), d, s


def run_backend(
    holder: HEBackend,
    rows: int,
    features: int,
    workers: int,
    *,
    lattice: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Time the iteration's HE calls on one backend; ``(figures, exact)``.

    On the lattice backend ``X`` is a :class:`LatticeMatrix` made once: the first iteration
    encodes its plaintexts (what a party pays in a fresh process each round), the second
    reuses them (a party whose process lives across rounds).
    """
    X, d, s = _data(rows, features, seed=rows)
    party = type(holder).from_public_bytes(holder.public_bytes())
    out: dict[str, Any] = {"rows": rows, "public_key_bytes": len(holder.public_bytes())}
    matrix: Any = X
    if lattice:
        matrix, start_seconds = _timed(LatticeMatrix, party, X, workers=workers)
        out["workers_start_seconds"] = round(start_seconds, 3)
    exact = True
    for label in ("", "cached_") if lattice else ("",):
        times: dict[str, float] = {}
        enc_d, times["encrypt"] = _timed(holder.encrypt_integers, d, value_bits=21)
        wire = holder.ciphertexts_to_bytes(enc_d)
        out["residuals_bytes"] = len(wire)
        enc_d = party.ciphertexts_from_bytes(wire, max_count=rows, count=rows)
        enc_s = holder.encrypt_integers(
            s, value_bits=21, **({"replicated": True} if lattice else {})
        )
        kw = {} if lattice else {"workers": workers}
        g, times["dot"] = _timed(party.dot, matrix, enc_d, **kw)
        image, times["matvec"] = _timed(party.matvec, matrix, enc_s, **kw)
        g, t_g = _timed(party.rerandomize, g)
        image, t_image = _timed(party.rerandomize, image)
        times["rerandomize"] = t_g + t_image
        back_g, back_image = party.ciphertexts_to_bytes(g), party.ciphertexts_to_bytes(image)
        out["gradient_bytes"], out["image_bytes"] = len(back_g), len(back_image)
        start = time.perf_counter()
        got_g = holder.decrypt(holder.ciphertexts_from_bytes(back_g, max_count=features))
        got_image = holder.decrypt(holder.ciphertexts_from_bytes(back_image, max_count=rows))
        times["decrypt"] = time.perf_counter() - start
        for k, v in times.items():
            out[f"{label}{k}_seconds"] = round(v, 3)
        out[f"{label}iteration_seconds"] = round(sum(times.values()), 3)
        # |X^T d| < 2**56 and |X s| < 2**42: int64 holds the references exactly
        exact = exact and bool(
            np.array_equal(np.asarray(got_g).astype(np.int64), X.T @ d)
            and np.array_equal(np.asarray(got_image).astype(np.int64), X @ s)
        )
    if lattice:
        matrix.close()
    return out, exact


class _PaillierTimed(PaillierContext):
    """PaillierContext whose ``matvec`` accepts (and ignores) ``workers`` like ``dot``."""

    __slots__ = ()

    def matvec(self, X: np.ndarray, encrypted: Any, **_: Any) -> Any:  # type: ignore[override]
        return super().matvec(X, encrypted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--paillier-rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    params = lattice_parameters(plaintext_bits=58, plain_depth=2)
    lattice_holder, keygen = _timed(LatticeContext.generate, params)
    lattice, exact_l = run_backend(
        lattice_holder, args.rows, args.features, args.workers, lattice=True
    )
    lattice["keygen_seconds"] = round(keygen, 3)
    lattice["poly_degree"] = params.poly_degree
    print("lattice", json.dumps(lattice), flush=True)

    paillier_holder = _PaillierTimed.generate(2048)
    paillier, exact_p = run_backend(
        paillier_holder, args.paillier_rows, args.features, args.workers
    )
    paillier["iteration_seconds_scaled"] = round(
        paillier["iteration_seconds"] * args.rows / args.paillier_rows, 1
    )
    print("paillier", json.dumps(paillier), flush=True)

    # The Paillier protocol's real iteration (packed images, DJN randomness, precompute) at
    # the same Paillier size, from benchmarks/vertical_lr.py, run here in the same process.
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        vertical_lr.main(
            [
                "--rows",
                str(args.paillier_rows),
                "--features",
                str(args.features),
                "--iterations",
                "1",
                "--naive-rows",
                "20",
                "--naive-features",
                "2",
            ]
        )
    protocol = json.loads(captured.getvalue().strip().splitlines()[-1])
    scale = args.rows / args.paillier_rows
    paillier_protocol = {
        "rows": args.paillier_rows,
        "seconds_per_iteration": protocol["seconds_per_iteration"],
        "seconds_per_iteration_sequential": protocol["seconds_per_iteration_sequential"],
        "iteration_seconds_scaled": round(protocol["seconds_per_iteration"] * scale, 1),
        "sequential_seconds_scaled": round(protocol["seconds_per_iteration_sequential"] * scale, 1),
    }
    print("paillier protocol", json.dumps(paillier_protocol), flush=True)

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": args.rows,
                "features": args.features,
                "workers": args.workers,
                "lattice": lattice,
                "paillier": paillier,
                "paillier_protocol": paillier_protocol,
                "speedup_generic": round(
                    paillier["iteration_seconds_scaled"] / lattice["iteration_seconds"], 1
                ),
                "speedup_protocol": round(
                    paillier_protocol["iteration_seconds_scaled"] / lattice["iteration_seconds"],
                    1,
                ),
                "speedup_protocol_cached": round(
                    paillier_protocol["iteration_seconds_scaled"]
                    / lattice["cached_iteration_seconds"],
                    1,
                ),
                "exact": exact_l and exact_p,
                "peak_rss_mb": round(own),
                "peak_worker_rss_mb": round(child),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark: the streamed alignment (``vfm_flower.psi_stream``) of two parties at marketing
scale, each party in its own processes, with its peak memory.

Usage::

    python benchmarks/psi_stream.py --ids 10000000 [--workers W] [--workdir DIR]

Two parties hold ``N`` synthetic email ids each, ``N // 2`` shared, written differently (case,
surrounding spaces) so normalization does real work, each in its own random row order. Every
step of a party runs in a fresh process, as a SuperNode runs each message: round 1 (both
parties, at once: normalize, hash and blind block by block; the passive party's shuffle),
round 2 (both: the second blinding), round 3 (the label owner's bucketed matching and gate),
round 4 (the passive party maps the positions to its rows). Between rounds a party keeps
only files in its spool; the relay is a file copy. Each process reports its peak RSS and
that of its largest pool worker; a party's peak is the largest over its rounds of
``main + workers x largest worker`` (the most it can hold at once).

The X25519 rate is measured in the same run (libsodium), on one core with the others idle
and on every core at once (a shared or thermally limited machine does less per core when all
are busy: 38 against 52 us per operation on this project's 2-core machine); the floors are
the four blinding passes at those rates over all cores, ``efficiency`` against the first,
``loaded_efficiency`` against the second. The last line printed is one JSON object:
ids_per_party, shared_ids, seconds (all rounds, wall), round_seconds, cores, workers,
x25519_us_per_op, floor_seconds, efficiency (floor / seconds), peak_rss_mb (per party),
main_rss_mb and worker_rss_mb (per party), spool_mb (largest spool on disk, per party),
correct (1 iff the joint rows are the plain intersection in one order).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nacl.bindings import crypto_scalarmult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfm_flower.normalize import normalize_ids  # noqa: E402
from vfm_flower.psi import local_rows_from_positions, psi_domain  # noqa: E402
from vfm_flower.psi_group import PsiSecret, blinding_pool  # noqa: E402
from vfm_flower.psi_stream import (  # noqa: E402
    DEFAULT_BLOCK_IDS,
    AlignmentSpool,
    match_streamed,
    stream_first_blind,
    stream_second_blind,
)

LO, PASSIVE = "label_owner", "passive"
DOMAIN = psi_domain("b" * 32, "benchmark-run")


def party_numbers(party: str, n: int, seed: int) -> np.ndarray:
    """The customer numbers of a party's rows: LO 0..n-1, P n/2..3n/2-1, each shuffled."""
    start = 0 if party == LO else n - n // 2
    rng = np.random.default_rng(seed + (0 if party == LO else 1))  # test data, not a secret
    return rng.permutation(np.arange(start, start + n, dtype=np.int64))


def id_blocks(party: str, n: int, seed: int):
    numbers = party_numbers(party, n, seed)
    template = "Customer{:08d}@Example.com" if party == LO else "  customer{:08d}@EXAMPLE.COM "
    for i in range(0, n, DEFAULT_BLOCK_IDS):
        raw = [template.format(v) for v in numbers[i : i + DEFAULT_BLOCK_IDS].tolist()]
        yield normalize_ids([raw], "email", party=party)


def _progress_printer(party: str, step: str):
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 30 or (total and done == total):
            last[0] = now
            of = f"/{total}" if total else ""
            print(f"  [{party}] {step}: {stage} {done}{of}", file=sys.stderr, flush=True)

    return report


def party_round(party: str, step: int, root: str, n: int, seed: int, workers: int) -> None:
    """One message of one party, in its own process; writes its peak memory to a file."""
    spool = AlignmentSpool.at(Path(root) / party)
    progress = _progress_printer(party, f"round {step}")
    secret_path = spool.path("secret.bin")
    with blinding_pool(workers) as pool:
        if step == 1:
            secret = PsiSecret.generate()
            secret_path.write_bytes(secret.to_bytes())
            secret_path.chmod(0o600)
            stream_first_blind(
                id_blocks(party, n, seed), DOMAIN, secret, spool, party=party,
                label_owner=party == LO, executor=pool, progress=progress, total=n,
            )  # fmt: skip
        elif step == 2:
            secret = PsiSecret.from_bytes(secret_path.read_bytes())
            inbox = spool.path("inbox.pts")
            stream_second_blind(
                inbox, secret, spool.path("double.pts"), sender=PASSIVE if party == LO else LO,
                max_set_size=n, executor=pool, progress=progress,
            )  # fmt: skip
            inbox.unlink()
        elif step == 3:  # LO
            joint = match_streamed(
                {PASSIVE: spool.path("lo_double.pts")}, {PASSIVE: spool.path("double.pts")},
                min_intersection=1, label_owner_rows=n, spool=spool, progress=progress,
            )  # fmt: skip
            np.save(spool.path("rows.npy"), joint.label_owner_rows)
            np.save(spool.path("positions.npy"), joint.passive_positions[PASSIVE])
        else:  # P
            positions = np.load(spool.path("inbox_positions.npy"))
            rows = local_rows_from_positions(
                positions, np.load(spool.path("permutation.npy"), mmap_mode="r")
            )
            np.save(spool.path("rows.npy"), rows)
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    disk = sum(f.stat().st_size for f in spool.root.iterdir()) / 2**20
    spool.path(f"rss.{step}.json").write_text(json.dumps([main, worker, disk]))


def x25519_seconds_per_op(count: int = 20000) -> float:
    """Seconds per libsodium X25519 operation in this process (one core)."""
    points = [bytes(b & (0x7F if i == 31 else 0xFF) for i, b in enumerate(os.urandom(32)))]
    key = os.urandom(32)
    start = time.perf_counter()
    for point in points * count:
        crypto_scalarmult(key, point)
    return (time.perf_counter() - start) / count


def run_round(ctx, root: Path, step: int, parties: list[str], n: int, seed: int, workers: int):
    procs = [
        ctx.Process(target=party_round, args=(p, step, str(root), n, seed, workers))
        for p in parties
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"round {step} failed (exit code {proc.exitcode})")


def relay(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, required=True, help="ids per party")
    parser.add_argument("--workers", type=int, default=None, help="pool processes per party")
    parser.add_argument("--workdir", default=None, help="where the spools go (default: /tmp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ids < 2:
        parser.error("--ids must be at least 2")
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    n = args.ids

    per_op = x25519_seconds_per_op()
    floor = 4 * n * per_op / cores
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        loaded = pool.map(x25519_seconds_per_op, [20000] * cores)
    rate = sum(1 / t for t in loaded)  # operations per second with every core busy
    loaded_floor = 4 * n / rate
    print(f"X25519 single core: {per_op * 1e6:.1f} us/op (libsodium); floor {floor:.0f} s")
    print(f"X25519 on {cores} busy cores: {cores / rate * 1e6:.1f} us/op per core; "
          f"floor {loaded_floor:.0f} s")  # fmt: skip
    print(f"parties: 2 x {n} ids, {n // 2} shared; cores {cores}, workers per party {workers}")

    ctx = multiprocessing.get_context("spawn")
    root = Path(tempfile.mkdtemp(prefix="vfm-psi-stream-", dir=args.workdir))
    rounds: list[float] = []
    try:
        start = time.perf_counter()
        t = time.perf_counter()
        run_round(ctx, root, 1, [LO, PASSIVE], n, args.seed, workers)
        relay(root / LO / "first.pts", root / PASSIVE / "inbox.pts")
        relay(root / PASSIVE / "first.pts", root / LO / "inbox.pts")
        rounds.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_round(ctx, root, 2, [LO, PASSIVE], n, args.seed, workers)
        relay(root / PASSIVE / "double.pts", root / LO / "lo_double.pts")
        rounds.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_round(ctx, root, 3, [LO], n, args.seed, workers)
        relay(root / LO / "positions.npy", root / PASSIVE / "inbox_positions.npy")
        rounds.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_round(ctx, root, 4, [PASSIVE], n, args.seed, workers)
        rounds.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start

        lo_rows = np.load(root / LO / "rows.npy")
        p_rows = np.load(root / PASSIVE / "rows.npy")
        lo_numbers = party_numbers(LO, n, args.seed)
        p_numbers = party_numbers(PASSIVE, n, args.seed)
        joint = lo_numbers[lo_rows]
        correct = (
            lo_rows.size == n // 2
            and bool(np.array_equal(joint, p_numbers[p_rows]))
            and bool(np.array_equal(np.sort(joint), np.arange(n - n // 2, n)))
        )
        memory = {}
        for party, steps in ((LO, (1, 2, 3)), (PASSIVE, (1, 2, 4))):
            figures = [json.loads((root / party / f"rss.{s}.json").read_text()) for s in steps]
            memory[party] = {
                "peak_rss_mb": round(max(m + workers * w for m, w, _ in figures), 1),
                "main_rss_mb": round(max(m for m, _, _ in figures), 1),
                "worker_rss_mb": round(max(w for _, w, _ in figures), 1),
                "spool_mb": round(max(d for _, _, d in figures), 1),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for party, figures in memory.items():
        print(f"{party}: peak {figures['peak_rss_mb']} MB (main {figures['main_rss_mb']}, "
              f"worker {figures['worker_rss_mb']}), spool {figures['spool_mb']} MB")  # fmt: skip
    print(f"aligned 2 x {n} ids in {seconds:.1f} s (rounds {[round(r, 1) for r in rounds]}), "
          f"floor {floor:.1f} s (every core busy: {loaded_floor:.1f} s), "
          f"correct {correct}")  # fmt: skip
    print(
        json.dumps(
            {
                "ids_per_party": n,
                "shared_ids": n // 2,
                "seconds": round(seconds, 2),
                "round_seconds": [round(r, 2) for r in rounds],
                "cores": cores,
                "workers": workers,
                "x25519_us_per_op": round(per_op * 1e6, 2),
                "floor_seconds": round(floor, 2),
                "efficiency": round(floor / seconds, 3),
                "x25519_us_per_op_all_cores_busy": round(cores / rate * 1e6, 2),
                "loaded_floor_seconds": round(loaded_floor, 2),
                "loaded_efficiency": round(loaded_floor / seconds, 3),
                "peak_rss_mb": {p: m["peak_rss_mb"] for p, m in memory.items()},
                "main_rss_mb": {p: m["main_rss_mb"] for p, m in memory.items()},
                "worker_rss_mb": {p: m["worker_rss_mb"] for p, m in memory.items()},
                "spool_mb": {p: m["spool_mb"] for p, m in memory.items()},
                "correct": int(correct),
            }
        )
    )
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())

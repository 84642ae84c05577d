"""Benchmark: whole ECDH-PSI alignment of two parties, against the X25519 floor, and the
overlap job's PSI cardinality on the same ids in the same run.

Usage::

    python benchmarks/psi.py --ids 200000 [--workers W]
    python benchmarks/psi.py --ids 10000000      # streamed, per-party processes and memory

Two parties hold ``N`` synthetic email ids each, about half shared, written differently
(case, surrounding spaces) so normalization does real work. Generating the ids is not timed;
normalization, uniqueness checks, hashing, all four blinding passes, the payload codecs and
the matching are. The raw X25519 rate is measured in the same run, single core, as the
per-element work of the blinding loop (libsodium's ``crypto_scalarmult``); OpenSSL's rate
through ``cryptography`` (``from_public_bytes`` + ``exchange`` with one private key object, and
with a fresh ``from_private_bytes`` per operation) is printed beside it.

The overlap protocol (:func:`vfm_flower.overlap.overlap_in_process`: the same hashing and
four blinding passes, the group seed's permutation, the count) then runs on the same
normalized ids with the same pool; its time is compared with the alignment's (both without
normalization, which is the same for both). Issue 13's bar: at most 1.5 times.

The last line printed is one JSON object (see ``--help``'s epilog for its keys).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_scalarmult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfm_flower.normalize import normalize_ids  # noqa: E402
from vfm_flower.overlap import overlap_in_process  # noqa: E402
from vfm_flower.psi import (  # noqa: E402
    POOL_MIN_POINTS,
    PsiSecret,
    align_in_process,
    blind_points,
    blinding_pool,
    psi_domain,
    secure_permutation,
)

#: Above this many ids per party, two whole sets in one process outgrow a party's memory
#: budget: the benchmark runs the streamed alignment instead (``--stream`` forces it).
STREAM_ABOVE = 2_000_000

EPILOG = """JSON keys: ids_per_party, shared_ids, seconds (normalization + alignment),
normalize_seconds, align_seconds, cores, workers, ids_per_sec_per_core (2N / seconds / cores),
x25519_us_per_op (single core, libsodium, as in the blinding loop), openssl_x25519_us_per_op
(OpenSSL's through cryptography, cached private key), floor_ids_per_sec_per_core
(1 / (2 x seconds per op)), efficiency (ratio of the two), naive_x25519_us_per_op (with
OpenSSL and from_private_bytes per op), correct (1 iff both parties get the plain set
intersection in the same order), peak_rss_mb (max RSS of this process + largest reaped
child, i.e. a pool worker).
timed_cpu_seconds (CPU of this process and its pool workers over the timed part),
cpu_efficiency (4N x seconds per op / timed_cpu_seconds: what a busy machine does not skew),
cpu_share (CPU seconds / (wall seconds x cores) while the pool was open: warm-up,
id generation, the timed part and the check), other_cpu_share (the same for every other
process on the machine, from /proc/stat: a busy machine slows the run), load_avg_1min_before.
The blinding pool is opened (and its workers started) before the ids are generated.
overlap_seconds (the overlap protocol on the same ids), overlap_ratio (overlap_seconds /
align_seconds), overlap_correct (1 iff its count equals the plain intersection's size)."""


def measure_x25519(points: int) -> tuple[float, float, float]:
    """Seconds per X25519 operation, single core: libsodium's ``crypto_scalarmult`` (what the
    blinding loop runs), OpenSSL's through ``cryptography`` with a cached private key, and
    OpenSSL's with a fresh private key object per operation."""
    data = bytearray(os.urandom(32 * points))
    data[31::32] = bytes(b & 0x7F for b in data[31::32])
    chunks = [bytes(data[i : i + 32]) for i in range(0, len(data), 32)]
    secret = os.urandom(32)
    from_public = X25519PublicKey.from_public_bytes
    from_private = X25519PrivateKey.from_private_bytes

    start = time.perf_counter()
    for chunk in chunks:
        crypto_scalarmult(secret, chunk)
    sodium = (time.perf_counter() - start) / points

    exchange = from_private(secret).exchange
    start = time.perf_counter()
    for chunk in chunks:
        exchange(from_public(chunk))
    cached = (time.perf_counter() - start) / points

    naive_points = chunks[: max(1, points // 4)]
    start = time.perf_counter()
    for chunk in naive_points:
        from_private(secret).exchange(from_public(chunk))
    naive = (time.perf_counter() - start) / len(naive_points)
    return sodium, cached, naive


def make_ids(n: int) -> tuple[list[str], list[str], int]:
    """Two parties' raw ids: ``n`` each, ``n // 2`` shared, in unrelated random orders."""
    shared = n // 2
    lo_numbers = np.arange(0, n)
    passive_numbers = np.arange(n - shared, 2 * n - shared)
    lo_numbers = lo_numbers[secure_permutation(n)]
    passive_numbers = passive_numbers[secure_permutation(n)]
    lo = [f"Customer{i:08d}@Example.com" for i in lo_numbers.tolist()]
    passive = [f"  customer{i:08d}@EXAMPLE.COM " for i in passive_numbers.tolist()]
    return lo, passive, shared


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def tree_cpu_seconds() -> float | None:
    """CPU seconds of this process and its live children (pool workers), Linux /proc."""
    own = os.times()
    total = own.user + own.system
    me = str(os.getpid())
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:  # ppid
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    except OSError:
        return None
    return total


def machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--ids", type=int, required=True, help="ids per party")
    parser.add_argument("--workers", type=int, default=None, help="blinding processes")
    parser.add_argument(
        "--floor-points", type=int, default=20000, help="X25519 operations timed for the floor"
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="run the streamed alignment, each party in its own processes, with its peak "
        "memory (benchmarks/psi_stream.py; the default above 2,000,000 ids)",
    )
    args = parser.parse_args(argv)
    if args.ids < 2:
        parser.error("--ids must be at least 2")
    if args.stream or args.ids > STREAM_ABOVE:
        from psi_stream import main as stream_main

        print(f"{args.ids} ids per party: the streamed alignment (benchmarks/psi_stream.py)")
        workers = [] if args.workers is None else ["--workers", str(args.workers)]
        return stream_main(["--ids", str(args.ids), *workers])
    cores = os.cpu_count() or 1
    workers = args.workers or cores

    load_before = os.getloadavg()[0]
    per_op, openssl_per_op, naive_per_op = measure_x25519(args.floor_points)
    print(f"X25519 single core: {per_op * 1e6:.1f} us/op through libsodium (the blinding loop)")
    print(f"X25519 single core: {openssl_per_op * 1e6:.1f} us/op through OpenSSL, cached key")
    print(f"X25519 single core: {naive_per_op * 1e6:.1f} us/op with from_private_bytes per op")

    # A long-lived party process keeps one pool; open it (and start its workers) before the
    # ids exist. 'spawn' forks before it execs, so a worker started from a large parent
    # reports the parent's RSS in RUSAGE_CHILDREN although it never uses that memory.
    pool_cpu_start = cpu_seconds()
    busy_start = machine_busy_seconds()
    pool_start = time.perf_counter()
    with blinding_pool(workers) as pool:
        warm = np.zeros((POOL_MIN_POINTS, 32), dtype=np.uint8)
        warm[:, 0] = 9
        blind_points(warm, PsiSecret.generate(), workers=workers, executor=pool)
        del warm

        lo_raw, passive_raw, shared = make_ids(args.ids)
        print(f"parties: 2 x {args.ids} ids, {shared} shared; cores {cores}, workers {workers}")

        tree_start = tree_cpu_seconds()
        start = time.perf_counter()
        lo_ids = normalize_ids([lo_raw], "email", party="label_owner")
        passive_ids = normalize_ids([passive_raw], "email", party="passive")
        normalize_seconds = time.perf_counter() - start
        del lo_raw, passive_raw
        result = align_in_process(
            {"label_owner": lo_ids, "passive": passive_ids},
            "label_owner",
            domain=psi_domain("benchmark-agreement", "benchmark-run"),
            workers=workers,
            executor=pool,
        )
        seconds = time.perf_counter() - start
        tree_end = tree_cpu_seconds()
        align_seconds = seconds - normalize_seconds
        overlap_start = time.perf_counter()
        counts, _ = overlap_in_process(
            {"label_owner": lo_ids, "passive": passive_ids},
            "label_owner",
            domain=psi_domain("benchmark-agreement", "benchmark-run"),
            workers=workers,
            executor=pool,
        )
        overlap_seconds = time.perf_counter() - overlap_start
    # Workers are reaped when the pool closes: only then is their CPU time counted.
    pool_wall = time.perf_counter() - pool_start
    own_cpu = cpu_seconds() - pool_cpu_start
    cpu_share = own_cpu / (pool_wall * cores)
    busy_end = machine_busy_seconds()
    other_share = (
        None
        if busy_start is None or busy_end is None
        else max(0.0, (busy_end - busy_start - own_cpu) / (pool_wall * cores))
    )

    lo_rows, passive_rows = result["label_owner"], result["passive"]
    joint_lo = [lo_ids[i] for i in lo_rows.tolist()]
    joint_passive = [passive_ids[i] for i in passive_rows.tolist()]
    expected = set(lo_ids) & set(passive_ids)
    correct = int(
        joint_lo == joint_passive
        and len(joint_lo) == len(expected)
        and set(joint_lo) == expected
        and len(set(lo_rows.tolist())) == len(lo_rows)
    )

    ids_rate = 2 * args.ids / seconds / cores
    timed_cpu = None if tree_start is None or tree_end is None else tree_end - tree_start
    cpu_efficiency = None if not timed_cpu else 4 * args.ids * per_op / timed_cpu
    floor_rate = 1.0 / (2.0 * per_op)
    report = {
        "ids_per_party": args.ids,
        "shared_ids": shared,
        "joint_rows": len(joint_lo),
        "seconds": round(seconds, 3),
        "normalize_seconds": round(normalize_seconds, 3),
        "align_seconds": round(align_seconds, 3),
        "cores": cores,
        "workers": workers,
        "ids_per_sec_per_core": round(ids_rate, 1),
        "x25519_us_per_op": round(per_op * 1e6, 2),
        "floor_ids_per_sec_per_core": round(floor_rate, 1),
        "efficiency": round(ids_rate / floor_rate, 3),
        "openssl_x25519_us_per_op": round(openssl_per_op * 1e6, 2),
        "naive_x25519_us_per_op": round(naive_per_op * 1e6, 2),
        "correct": correct,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "timed_cpu_seconds": None if timed_cpu is None else round(timed_cpu, 2),
        "cpu_efficiency": None if cpu_efficiency is None else round(cpu_efficiency, 3),
        "cpu_share": round(cpu_share, 3),
        "other_cpu_share": None if other_share is None else round(other_share, 3),
        "load_avg_1min_before": round(load_before, 2),
        "overlap_seconds": round(overlap_seconds, 3),
        "overlap_ratio": round(overlap_seconds / align_seconds, 3),
        "overlap_correct": int(counts.all_parties == len(expected)),
    }
    print(
        f"normalization {normalize_seconds:.2f} s, alignment {align_seconds:.2f} s, "
        f"total {seconds:.2f} s"
    )
    print(
        f"{ids_rate:,.0f} ids/s/core vs floor {floor_rate:,.0f} ids/s/core: "
        f"efficiency {report['efficiency']:.2f}"
    )
    if cpu_efficiency is not None:
        print(
            f"CPU time of the timed part {timed_cpu:.1f} s vs floor {4 * args.ids * per_op:.1f} s"
            f" (4N X25519 ops): CPU efficiency {cpu_efficiency:.2f}"
        )
    print(f"joint rows {len(joint_lo)} (expected {len(expected)}), correct={correct}")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB (this process + largest child)")
    print(
        f"CPU used {cpu_share:.0%} of {cores} cores while the pool was open; "
        f"other processes used {other_share if other_share is not None else float('nan'):.0%}"
        f" (1-min load average before the run: {load_before:.2f})"
    )
    print(
        f"overlap (PSI cardinality) {overlap_seconds:.2f} s vs alignment {align_seconds:.2f} s: "
        f"{report['overlap_ratio']:.2f}x (bar: 1.5x); count {counts.all_parties} "
        f"(expected {len(expected)}), correct={report['overlap_correct']}"
    )
    print(json.dumps(report))
    return 0 if correct and report["overlap_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())

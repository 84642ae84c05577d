"""Benchmark: the alignment through Flower (the ``query.align`` step, in chunks) against the
streamed core alone on the same ids, in the same run.

Usage::

    python benchmarks/psi_flower.py --ids 1000000 [--chunk-ids 262144]

Two parties (a label owner and one passive party) hold ``N`` synthetic email ids each, about
half shared. A ServerApp written on the public API (``vertical_session`` then
``session.align()``) runs on Flower's in-process Grid with the built-in ClientApp: every
message is serialized by Flower, each party keeps its state in ``context.state`` and its
work-dir files, and every set travels one chunk per round. The baseline is
:func:`vfm_flower.psi_stream.align_streaming` (the same protocol with no Flower, no
envelopes, no state files) on the same normalized ids with the same number of cores, timed
in the same run. Both must give the same joint customers.

Memory: the in-process runner holds the server and both parties in this one process, so the
peak RSS printed is theirs together (``benchmarks/psi.py`` measures one party per process).
The largest Flower message is printed too: with chunks it is bounded by ``chunk_ids`` x 32
bytes whatever the set size.

The last line printed is one JSON object: ids_per_party, chunk_ids, joint_rows, align_rounds,
flower_seconds (hello, alignment and close), align_seconds (the alignment phase),
streamed_seconds (the baseline), overhead (align_seconds / streamed_seconds),
largest_message_mb, bytes_to_parties_mb, bytes_from_parties_mb, peak_rss_mb (this process),
identical (same joint customers as the baseline).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.serverapp import ServerApp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from label_leakage import write_collaboration  # noqa: E402

from vfm_flower import vertical_session  # noqa: E402
from vfm_flower.agreement import SignedAgreement  # noqa: E402
from vfm_flower.clients.client_app import app as client_app  # noqa: E402
from vfm_flower.jobs_builtin import builtin_registry  # noqa: E402
from vfm_flower.normalize import normalize_ids  # noqa: E402
from vfm_flower.psi import psi_domain  # noqa: E402
from vfm_flower.psi_chunks import DEFAULT_CHUNK_IDS  # noqa: E402
from vfm_flower.psi_stream import align_streaming  # noqa: E402
from vfm_flower.runtime.local_job import run_local_app  # noqa: E402

PARTIES = ("lo", "p1")


def synthetic_ids(n: int, seed: int = 3) -> tuple[dict[str, list[str]], int]:
    """Two sets of ``n`` emails, about half shared, the passive party's in upper case."""
    rng = np.random.default_rng(seed)
    shared = n // 2
    base = [f"customer{i:09d}@example.com" for i in rng.permutation(4 * n)[: 2 * n - shared]]
    lo = base[:n]
    p1 = base[:shared] + base[n:]
    p1 = [p1[i].upper() for i in rng.permutation(len(p1))]
    return {"lo": lo, "p1": p1}, shared


def collaboration(root: Path, ids: dict[str, list[str]]) -> tuple[Path, dict, Path]:
    """The two parties' files and a signed agreement (as the leakage benchmark writes them)."""
    rng = np.random.default_rng(0)
    frames = {}
    for party in PARTIES:
        frame = pd.DataFrame({"email": ids[party], f"{party}_x": rng.normal(size=len(ids[party]))})
        if party == "lo":
            frame["y"] = rng.integers(0, 2, len(frame))
        frames[party] = frame
    largest = max(len(v) for v in ids.values())
    agreement, files = write_collaboration(
        root, frames, "lo", min_intersection=100, max_set_size=largest
    )
    return agreement, files, root / "operator" / "operator.key"


def align_only_app(chunk_ids: int, joint_out: dict) -> ServerApp:
    """A ServerApp on the public API: hello, alignment, close."""
    app = ServerApp()
    kind = builtin_registry().get("logistic")

    @app.main()
    def main(grid, context) -> None:
        job = kind.bind("train", {})
        with vertical_session(grid, context, job, job_kind=kind, align_chunk_ids=chunk_ids) as s:
            started = time.perf_counter()
            joint_out["joint_rows"] = s.align()
            joint_out["align_seconds"] = time.perf_counter() - started
            joint_out["phases"] = s.result.phases

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000, help="ids per party")
    parser.add_argument("--chunk-ids", type=int, default=DEFAULT_CHUNK_IDS // 4)
    args = parser.parse_args()
    ids, shared = synthetic_ids(args.ids)
    with tempfile.TemporaryDirectory(prefix="vfm-psi-flower-") as tmp:
        root = Path(tmp)
        agreement, files, operator_key = collaboration(root, ids)
        facts: dict = {}
        grids: list = []
        started = time.perf_counter()
        run_local_app(
            align_only_app(args.chunk_ids, facts),
            client_app,
            agreement,
            files,
            root / "work",
            {"job": "train", "model": "logistic"},
            operator_key=operator_key,
            grid_out=grids,
        )
        flower_seconds = time.perf_counter() - started
        largest = max((len(m) for _, _, m in grids[0].transcript), default=0)
        signed = SignedAgreement.load(agreement).agreement
        normalized = {p: normalize_ids([ids[p]], "email", party=p) for p in PARTIES}
        started = time.perf_counter()
        rows = align_streaming(
            {p: (lambda p=p: [normalized[p]]) for p in PARTIES},
            "lo",
            domain=psi_domain(signed.agreement_id, "benchmark"),
            min_intersection=100,
            workdir=root / "baseline",
        )
        streamed_seconds = time.perf_counter() - started
    phase = facts["phases"]["align"]
    result = {
        "ids_per_party": args.ids,
        "chunk_ids": args.chunk_ids,
        "joint_rows": facts["joint_rows"],
        "align_rounds": phase.rounds,
        "flower_seconds": round(flower_seconds, 1),
        "align_seconds": round(facts["align_seconds"], 1),
        "streamed_seconds": round(streamed_seconds, 1),
        "overhead": round(facts["align_seconds"] / streamed_seconds, 2),
        "largest_message_mb": round(largest / 2**20, 1),
        "bytes_to_parties_mb": round(phase.bytes_to_parties / 2**20, 1),
        "bytes_from_parties_mb": round(phase.bytes_from_parties / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "identical": facts["joint_rows"] == len(rows["lo"]) == shared,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The lattice products on all cores: ``dot`` by column ranges, ``matvec`` by row blocks.

SEAL runs on one thread and its objects do not pickle, so each worker process rebuilds the
public context from :meth:`LatticeContext.public_bytes` (about 0.3 s), parses the encrypted
vector from its bytes, computes its share of the product in-process and returns the
serialized result; the caller joins the shares in order. The results are those of the
one-process path, ciphertext for ciphertext in layout (the tests compare them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.hazmat import paillier_djn as _pool

if TYPE_CHECKING:
    from vfm_flower.lattice import LatticeContext, LatticeVector

__all__ = ["parallel_product"]


def _product_worker(payload: tuple[bytes, bytes, np.ndarray, str, int]) -> bytes:
    from vfm_flower.lattice import LatticeContext  # noqa: PLC0415 (in the worker)

    public, vector, X, operation, count = payload
    context = LatticeContext.from_public_bytes(public)
    encrypted = context.ciphertexts_from_bytes(vector, max_count=count, count=count)
    result = getattr(context, operation)(X, encrypted, workers=1)
    return context.ciphertexts_to_bytes(result)


def parallel_product(
    context: LatticeContext, operation: str, X: np.ndarray, encrypted: LatticeVector, workers: int
) -> LatticeVector | None:
    """``context.dot`` or ``context.matvec`` across ``workers`` processes, or ``None`` when
    the work does not split (one column, or one row block)."""
    from vfm_flower.lattice import LatticeVector  # noqa: PLC0415 (cycle)

    n = context.slots
    if operation == "dot":
        bounds = _pool.chunk_bounds(X.shape[1], workers)
        shares = [X[:, lo:hi] for lo, hi in bounds]
    else:
        blocks = -(-X.shape[0] // n)
        bounds = [
            (lo * n, min(hi * n, X.shape[0])) for lo, hi in _pool.chunk_bounds(blocks, workers)
        ]
        shares = [X[lo:hi] for lo, hi in bounds]
    if len(shares) < 2:
        return None
    vector = context.ciphertexts_to_bytes(encrypted)
    public = context.public_bytes()
    payloads = [(public, vector, share, operation, encrypted.length) for share in shares]
    results = [
        context.ciphertexts_from_bytes(data, max_count=share.shape[int(operation == "dot")])
        for data, share in zip(_pool.run_pool(_product_worker, payloads, workers), shares)
    ]
    parts: list[Any] = [
        tuple(ct for r in results for ct in r.parts[i]) for i in range(len(results[0].parts))
    ]
    return LatticeVector(
        tuple(parts),
        sum(r.length for r in results),
        max(r.value_bits for r in results),
        results[0].replicated,
        results[0].depth,
    )

"""``LatticeMatrix``: a party's plaintext matrix prepared for lattice products, on all cores.

Encoding a column block of ``X`` into a SEAL plaintext in NTT form costs about four times the
product it serves (3 to 4 ms against 1 ms at ``N = 16384``), and the private-gradient round
multiplies by the same ``X`` twice (``X^T [[d]]``, then ``[[X s]]``): a ``LatticeMatrix`` made
once per round (or once per run, where the party's process lives that long) encodes each
block once and keeps it (``cache=True``: 8 bytes x ciphertext primes per slot, 2.4 GB per
plaintext prime at 1,000,000 x 50 with 6 primes). ``cache=False`` encodes on the fly (what a
one-off ``dot`` on a raw array uses).

With ``workers > 1`` the columns are split into ranges, one per worker *process*, each holding
its own context (rebuilt from the public bytes), its columns and their cached plaintexts; a
worker answers ``dot`` with its columns' sums and ``matvec`` with its columns' share of every
row block, which the caller adds up. SEAL runs on one thread and its objects do not pickle, so
workers exchange only serialized vectors. Close the matrix (or use it as a context manager)
to stop them.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from vfm_flower.hazmat import paillier_djn as _pool
from vfm_flower.hazmat import seal_bfv as _bfv
from vfm_flower.lattice_codec import LatticeVector

if TYPE_CHECKING:
    from vfm_flower.lattice import LatticeContext

__all__ = ["LatticeMatrix"]


def integer_matrix(X: Any) -> np.ndarray:
    """``X`` as a 2-D integer array, or ``ValueError``."""
    arr = np.asarray(X)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("X must be a 2-D matrix of integers (quantize fixed-point values first)")
    return arr.astype(np.int64, copy=False)


class LatticeMatrix:
    """An integer ``rows x m`` matrix for :meth:`LatticeContext.dot` and ``matvec``.

    Parameters
    ----------
    context : LatticeContext
        The (public) context the products run under.
    X : np.ndarray
        Integer matrix (int64; ``|x| < 2**62``).
    cache : bool
        Keep every encoded plaintext (default) or encode on each use.
    workers : int, optional
        Worker processes (default: all cores for matrices of 64 blocks x columns or more;
        ``1``: in this process).
    value_bits : int, optional
        The public bound ``|x| < 2**value_bits`` the products' headers carry. Without it the
        bound is ``X``'s own largest magnitude, which the results' headers then reveal to the
        key holder: a protocol declares it.
    """

    def __init__(
        self,
        context: LatticeContext,
        X: Any,
        *,
        cache: bool = True,
        workers: int | None = None,
        value_bits: int | None = None,
    ) -> None:
        matrix = integer_matrix(X)
        self.context = context
        self.shape: tuple[int, int] = (int(matrix.shape[0]), int(matrix.shape[1]))
        magnitude = (
            0
            if matrix.size == 0
            else int(max(abs(int(matrix.max())), abs(int(matrix.min())))).bit_length()
        )
        if value_bits is not None and magnitude > value_bits:
            raise ValueError(f"X breaks the declared bound 2**{value_bits}")
        self.value_bits = magnitude if value_bits is None else int(value_bits)
        slots = context.slots
        self.blocks = [
            (lo, min(lo + slots, self.shape[0])) for lo in range(0, self.shape[0], slots)
        ]
        products = len(self.blocks) * self.shape[1] * len(context.plaintext_moduli)
        count = _pool.resolve_workers(workers, products, 64)
        self._workers: list[_Worker] = []
        self._residues: list[np.ndarray] = []
        self._cache: dict[tuple[int, int, int], Any] | None = {} if cache else None
        if count > 1 and self.shape[1] > 1:
            ranges = _pool.chunk_bounds(self.shape[1], count)
            public = context.public_bytes()
            self._workers = [
                _Worker(public, np.ascontiguousarray(matrix[:, lo:hi]), cache, lo, hi)
                for lo, hi in ranges
            ]
        else:
            self._residues = [_bfv_residues(matrix, t) for t in context.plaintext_moduli]

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the worker processes and drop the cached plaintexts."""
        for worker in self._workers:
            worker.close()
        self._workers = []
        if self._cache is not None:
            self._cache.clear()

    def __enter__(self) -> LatticeMatrix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---------------------------------------------------------------- products

    def _plaintext(self, index: int, block: int, column: int, parms_id: Any) -> Any:
        kit = self.context.kits[index]
        lo, hi = self.blocks[block]
        if self._cache is None:
            return _bfv.encode_ntt(kit, self._residues[index][lo:hi, column], parms_id)
        key = (index, block, column)
        plain = self._cache.get(key)
        if plain is None:
            plain = _bfv.encode_ntt(kit, self._residues[index][lo:hi, column], parms_id)
            self._cache[key] = plain
        return plain

    def dot_parts(self, encrypted: LatticeVector) -> tuple[tuple[Any, ...], ...]:
        """Per plaintext prime, one replicated ciphertext per column: ``[[X^T d]]``."""
        if self._workers:
            shares = self._ask("dot", encrypted)
            return tuple(
                tuple(ct for share in shares for ct in share.parts[i])
                for i in range(len(shares[0].parts))
            )
        parts = []
        for index, (kit, cts) in enumerate(zip(self.context.kits, encrypted.parts)):
            ntt = [_bfv.to_ntt(kit, ct) for ct in cts]
            columns = []
            for j in range(self.shape[1]):
                terms = [
                    (ct, self._plaintext(index, b, j, ct.parms_id())) for b, ct in enumerate(ntt)
                ]
                columns.append(_bfv.sum_slots(kit, _bfv.sum_of_products(kit, terms)))
            parts.append(tuple(columns))
        return tuple(parts)

    def matvec_parts(self, encrypted: LatticeVector) -> tuple[tuple[Any, ...], ...]:
        """Per plaintext prime, one packed ciphertext per row block: ``[[X w]]``."""
        if self._workers:
            shares = self._ask("matvec", encrypted)
            parts = []
            for i, kit in enumerate(self.context.kits):
                blocks = list(shares[0].parts[i])
                for share in shares[1:]:
                    for acc, ct in zip(blocks, share.parts[i]):
                        kit.evaluator.add_inplace(acc, ct)
                parts.append(tuple(blocks))
            return tuple(parts)
        parts = []
        for index, (kit, cts) in enumerate(zip(self.context.kits, encrypted.parts)):
            ntt = [_bfv.to_ntt(kit, ct) for ct in cts]
            rows = []
            for b in range(len(self.blocks)):
                terms = [
                    (ct, self._plaintext(index, b, j, ct.parms_id())) for j, ct in enumerate(ntt)
                ]
                rows.append(_bfv.sum_of_products(kit, terms))
            parts.append(tuple(rows))
        return tuple(parts)

    def _ask(self, operation: str, encrypted: LatticeVector) -> list[LatticeVector]:
        """Send every worker its share of the request, collect the shares in column order."""
        context = self.context
        if operation == "dot":
            vector = context.ciphertexts_to_bytes(encrypted)
            requests = [vector] * len(self._workers)
        else:
            requests = []
            for worker in self._workers:
                share = LatticeVector(
                    tuple(p[worker.lo : worker.hi] for p in encrypted.parts),
                    worker.hi - worker.lo,
                    encrypted.value_bits,
                    True,
                    encrypted.depth,
                    False,
                    encrypted.noise_bits,
                )
                requests.append(context.ciphertexts_to_bytes(share))
        for worker, request in zip(self._workers, requests):
            worker.send(
                operation,
                request,
                encrypted.length if operation == "dot" else worker.hi - worker.lo,
            )
        replies = [worker.receive() for worker in self._workers]
        count = (lambda w: w.hi - w.lo) if operation == "dot" else (lambda w: self.shape[0])
        return [
            context.ciphertexts_from_bytes(reply, max_count=count(w), count=count(w))
            for w, reply in zip(self._workers, replies)
        ]


def _bfv_residues(matrix: np.ndarray, modulus: int) -> np.ndarray:
    return np.mod(matrix, np.int64(modulus)).astype(np.uint64)


def _serve(connection: Connection, public: bytes, X: np.ndarray, cache: bool) -> None:
    """A worker process: its own context and column share, answering until told to stop."""
    from vfm_flower.lattice import LatticeContext  # noqa: PLC0415 (in the worker)

    context = LatticeContext.from_public_bytes(public)
    matrix = LatticeMatrix(context, X, cache=cache, workers=1)
    while True:
        request = connection.recv()
        if request is None:
            break
        operation, vector, count = request
        try:
            encrypted = context.ciphertexts_from_bytes(vector, max_count=count, count=count)
            result = getattr(context, operation)(matrix, encrypted)
            connection.send(("ok", context.ciphertexts_to_bytes(result)))
        except Exception as exc:  # noqa: BLE001 (reported to the caller, who raises)
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
    connection.close()


class _Worker:
    """One worker process and its pipe (columns ``lo..hi`` of the matrix)."""

    def __init__(self, public: bytes, X: np.ndarray, cache: bool, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        mp = _pool._mp_context()
        self._connection, child = mp.Pipe()
        self._process = mp.Process(target=_serve, args=(child, public, X, cache), daemon=True)
        self._process.start()
        child.close()

    def send(self, operation: str, vector: bytes, count: int) -> None:
        self._connection.send((operation, vector, count))

    def receive(self) -> bytes:
        try:
            status, payload = self._connection.recv()
        except EOFError:
            raise RuntimeError("a lattice worker process stopped") from None
        if status != "ok":
            raise RuntimeError(f"a lattice worker failed: {payload}")
        return payload

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        self._connection.close()

"""``LatticeContext``: exact lattice homomorphic encryption (BFV) behind the HE backend API.

The second backend of :class:`vfm_flower.he_backend.HEBackend`, next to Paillier: one
ciphertext holds ``N`` integers (SIMD *slots*, ``N = 16384`` for the private-gradient
protocol's needs), so encrypting a million residuals is 62 ciphertexts instead of a million,
and a plaintext-by-ciphertext product costs microseconds per value. The scheme is BFV from
Microsoft SEAL 4.1 (through TenSEAL's bindings, :mod:`vfm_flower.hazmat.seal_bfv`): exact
integer arithmetic modulo a plaintext modulus ``T``, so fixed-point values need no noise
analysis of their own (CKKS, approximate, would need noise flooding against IND-CPA-D key
recovery before every decryption; BFV decrypts exactly).

Who holds what: the key holder (the label owner) generates the keys and sends the public
material (public key and the Galois keys that let others rotate slots); any party then
encrypts, adds, multiplies by its own plaintext matrices and *re-randomizes*. Only the key
holder decrypts.

Values and layouts
------------------
Every vector carries a public bound ``|v| < 2**value_bits`` (as with Paillier): operations
derive the bound of their result and refuse one that could wrap modulo ``T``; decryption
refuses a value outside the bound. ``T`` is a product of up to several 60-bit primes (one
SEAL context and key per prime, the values combined by the Chinese remainder theorem), so
the plaintext space is as wide as the caller asks. A vector is either *packed* (value ``i`` in
slot ``i mod N`` of ciphertext ``i // N``: rows) or *replicated* (one ciphertext per value,
that value in every slot: weights). ``dot(X, [[d]])`` turns packed rows into replicated
column sums (slot-wise products, then a rotation sum); ``matvec(X, [[w]])`` turns replicated
weights into packed rows (slot-wise products with the columns, summed).

Circuit privacy (why a result can go back to the key holder)
------------------------------------------------------------
A BFV ciphertext's noise is a function of every plaintext that went into it, and the key
holder can compute the noise: a product ``X [[d]]`` sent as is would let the label owner solve
for ``X``. :meth:`LatticeContext.rerandomize` therefore adds a fresh public-key encryption of
zero (the ciphertext's ``c1`` becomes pseudorandom to the key holder, who knows neither the
fresh secret nor the fresh noise: a computational argument, RLWE) and switches the modulus
down from ``Q`` to the product ``q`` of the first primes. After the switch the noise is
``e q / Q`` plus SEAL's rounding of each coefficient; with ``e q / Q`` below
``2**-(statistical_bits + log2(N) + 1)`` the rounding comes out differently for two different
noises ``e`` only with probability ``2**-statistical_bits`` over all ``N`` coefficients
(``statistical_bits = 40``, the protocol's statistical parameter). That needs a bound on
``e``: every vector carries the noise model's bound (``noise_bits``), every operation adds its
share (:mod:`vfm_flower.lattice_parameters`), and an operation or a re-randomization that
would break the decryption or the sanitization margin is refused. The test suite checks it:
a sanitized product has the noise budget of a fresh ciphertext switched down.

The argument assumes the key holder's own ciphertexts carry the noise of an honest
encryption (semi-honest key holder, the threat model of the whole package): a key holder that
crafts high-noise ciphertexts defeats any single-key sanitization short of bootstrapping, and
the receiver cannot measure noise without the secret key. Headers carry public bounds: give
``LatticeMatrix`` and ``add_plain`` declared bounds (``value_bits``) so that the results'
headers say nothing about the data.

Parameters (:func:`lattice_parameters`)
---------------------------------------
Chosen from what the computation needs: the plaintext width, the *plaintext-product depth*
(how many plaintext products in a row: 2 for ``X [[M X^T [[d]]]]``), and the terms summed.
The function states the slot count and the depth it supports; 128-bit classical security is
the HE standard's bound on ``log2 Q`` for the ring degree (SEAL's ``MaxBitCount``), checked
again when a party loads the public parameters.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from vfm_flower.errors import CiphertextError, PaillierKeyError
from vfm_flower.hazmat import seal_bfv as _bfv
from vfm_flower.he_backend import HEBackend
from vfm_flower.lattice_codec import (
    LatticeVector,
    crt_centered,
    declared_bits,
    integer_values,
    magnitude_bits,
    residues_mod,
    vector_from_bytes,
    vector_to_bytes,
)
from vfm_flower.lattice_matrix import LatticeMatrix
from vfm_flower.lattice_parameters import (
    MAX_KEY_BYTES,
    LatticeParameters,
    lattice_parameters,
    pack_public,
    pack_secret,
    product_noise_bits,
    rotation_sum_noise_bits,
    sanitized_noise_bits,
    unpack_public,
    unpack_secret,
)

__all__ = ["LatticeParameters", "LatticeVector", "LatticeContext", "lattice_parameters"]


class LatticeContext(HEBackend):
    """BFV operations on one key set (one key per plaintext prime): the safe entry point.

    Built by the key holder with :meth:`generate` (it can decrypt) or by any party from
    :meth:`public_bytes` with :meth:`from_public_bytes`. Immutable. Needs the ``lattice``
    extra (TenSEAL).

    Examples
    --------
    >>> holder = LatticeContext.generate(lattice_parameters(plaintext_bits=40, plain_depth=1))
    >>> d = holder.encrypt_integers(np.array([3, -1, 2]), value_bits=4)
    >>> party = LatticeContext.from_public_bytes(holder.public_bytes())
    >>> g = party.rerandomize(party.dot(np.array([[1, 2], [1, 0], [0, 5]]), d))
    >>> holder.decrypt(g)
    array([ 2, 16])
    """

    name = "bfv"
    __slots__ = ("_params", "_kits", "_moduli", "_first", "_low", "_public", "_secret")

    def __init__(
        self,
        params: LatticeParameters,
        kits: tuple[_bfv.BFVKit, ...],
        public: bytes,
        secret: bytes | None,
    ) -> None:
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_kits", kits)
        object.__setattr__(self, "_moduli", [k.plain_modulus for k in kits])
        first, low = [], []
        for kit in kits:  # parms ids differ per plaintext prime
            levels = _bfv.chain(kit.context)
            first.append(levels[0][1])
            low.append(next(pid for primes, pid in levels if primes == params.sanitize_primes))
        object.__setattr__(self, "_first", tuple(first))
        object.__setattr__(self, "_low", tuple(low))
        object.__setattr__(self, "_public", public)
        object.__setattr__(self, "_secret", secret)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LatticeContext is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("LatticeContext is immutable")

    def __reduce__(self) -> Any:
        raise TypeError("a LatticeContext is not pickled: send public_bytes()")

    def __repr__(self) -> str:
        p = self._params
        return (
            f"LatticeContext(bfv, N={p.poly_degree}, log2 T={sum(p.plain_bits)}, "
            f"depth={p.plain_depth}, private={self.has_private_key})"
        )

    # ------------------------------------------------------------------ keys

    @staticmethod
    def _contexts(params: LatticeParameters) -> list[tuple[Any, int]]:
        n = params.poly_degree
        all_primes = _bfv.primes(n, [*params.coeff_bits, *params.plain_bits])
        coeff = all_primes[: len(params.coeff_bits)]
        plain = all_primes[len(params.coeff_bits) :]
        return [(_bfv.make_context(n, coeff, t), t) for t in plain]

    @classmethod
    def generate(cls, params: LatticeParameters) -> LatticeContext:
        """Fresh keys (OS randomness, in SEAL) for ``params``: the key holder's context."""
        params.check()
        kits, publics, secrets = [], [], []
        for context, t in cls._contexts(params):
            kit, public, galois, secret = _bfv.new_kit(context, t)
            kits.append(kit)
            publics.append((public, galois))
            secrets.append(secret)
        public = pack_public(params, publics)
        return cls(params, tuple(kits), public, pack_secret(secrets))

    @classmethod
    def from_public_bytes(cls, data: bytes) -> LatticeContext:
        """A context that encrypts and computes but cannot decrypt.

        Raises
        ------
        ConfigurationError
            Parameters below 128-bit security or malformed.
        CiphertextError
            Keys SEAL refuses.
        """
        params, publics = unpack_public(data)
        kits = tuple(
            _bfv.load_kit(ctx, t, pk, gk, None, max_key_bytes=MAX_KEY_BYTES)
            for (ctx, t), (pk, gk) in zip(cls._contexts(params), publics)
        )
        return cls(params, kits, bytes(data), None)

    @classmethod
    def from_private_bytes(cls, public: bytes, secret: bytes) -> LatticeContext:
        """The key holder's context again, from :meth:`public_bytes` and :meth:`private_bytes`."""
        params, publics = unpack_public(public)
        secrets = unpack_secret(secret, len(publics))
        kits = tuple(
            _bfv.load_kit(ctx, t, pk, gk, sk, max_key_bytes=MAX_KEY_BYTES)
            for (ctx, t), (pk, gk), sk in zip(cls._contexts(params), publics, secrets)
        )
        return cls(params, kits, bytes(public), bytes(secret))

    def public_bytes(self) -> bytes:
        """Parameters, public keys and Galois keys (tens of MB: sent once a run)."""
        return self._public

    def private_bytes(self) -> bytes:
        """The secret keys (key holder's private state only)."""
        if self._secret is None:
            raise PaillierKeyError("this lattice context holds only the public keys")
        return self._secret

    def public_context(self) -> LatticeContext:
        return LatticeContext.from_public_bytes(self._public)

    @property
    def has_private_key(self) -> bool:
        return self._secret is not None

    @property
    def parameters(self) -> LatticeParameters:
        return self._params

    @property
    def security_bits(self) -> int:
        return self._params.security_bits

    @property
    def slots(self) -> int:
        return self._params.slots

    # ------------------------------------------------------------------ checks

    def _check_bound(self, value_bits: int) -> None:
        cap = self._params.value_capacity_bits
        if value_bits > cap:
            raise CiphertextError(
                "bound",
                f"a result bound of 2**{value_bits} does not fit the plaintext space "
                f"(2**{cap}): use lattice parameters with wider plaintexts",
            )

    @property
    def _t_bits(self) -> int:
        return max(self._params.plain_bits)

    def _checked_noise(self, noise: int, sanitized: bool) -> int:
        """``noise`` if a ciphertext with it still decrypts at its level, else refuse."""
        room = self._params.max_decryptable_noise_bits(sanitized)
        if noise > room:
            raise CiphertextError(
                "noise",
                f"the result's noise (up to 2**{noise}) would not decrypt: these parameters "
                f"hold 2**{room} at this level",
            )
        return noise

    def _check_depth(self, vector: LatticeVector) -> None:
        if vector.sanitized:
            raise CiphertextError("depth", "a re-randomized vector can only be added or decrypted")
        if vector.depth + 1 > self._params.plain_depth:
            raise CiphertextError(
                "depth",
                f"a product at depth {vector.depth + 1}: these parameters allow "
                f"{self._params.plain_depth}",
            )

    def _check_terms(self, terms: int) -> None:
        if terms > 1 << self._params.terms_bits:
            raise CiphertextError(
                "count",
                f"{terms} products in one sum: these parameters allow "
                f"{1 << self._params.terms_bits}",
            )

    def _blocks(self, length: int) -> list[tuple[int, int]]:
        n = self.slots
        return [(lo, min(lo + n, length)) for lo in range(0, length, n)]

    # ------------------------------------------------------------------ operations

    def encrypt_integers(
        self, values: np.ndarray, *, value_bits: int, replicated: bool = False
    ) -> LatticeVector:
        """Encrypt signed integers under the public bound ``|v| < 2**value_bits``.

        Parameters
        ----------
        values : np.ndarray
            1-D integers (int64, or Python ints for wide plaintexts).
        replicated : bool
            One ciphertext per value, in every slot (weights for :meth:`matvec`).

        Raises
        ------
        ValueError
            If a value breaks the bound or is not an integer.
        CiphertextError
            If the bound does not fit the plaintext space.
        """
        arr = integer_values(values, "values").ravel()
        self._check_bound(value_bits)
        if magnitude_bits(arr) > value_bits:
            raise ValueError(f"a value breaks the declared bound 2**{value_bits}")
        parts = []
        for kit, t in zip(self._kits, self._moduli):
            res = residues_mod(arr, t)
            if replicated:
                cts = tuple(_bfv.encrypt(kit, np.full(self.slots, r, np.uint64)) for r in res)
            else:
                cts = tuple(_bfv.encrypt(kit, res[lo:hi]) for lo, hi in self._blocks(len(arr)))
            parts.append(cts)
        return LatticeVector(tuple(parts), len(arr), value_bits, replicated)

    def decrypt(self, encrypted: LatticeVector) -> np.ndarray:
        """The integers (int64 when the bound is at most ``2**62``, else Python ints).

        Raises
        ------
        PaillierKeyError
            Without the private key.
        CiphertextError
            A value outside the vector's bound (another key, a corrupted vector or a wrong
            bound declared).
        """
        if self._secret is None:
            raise PaillierKeyError("decryption needs the private key")
        residues = []
        for kit, cts in zip(self._kits, encrypted.parts):
            if encrypted.replicated:
                res = np.array([_bfv.decrypt(kit, ct)[0] for ct in cts], dtype=np.uint64)
            else:
                res = np.concatenate([_bfv.decrypt(kit, ct) for ct in cts])[: encrypted.length]
            residues.append(res)
        return crt_centered(residues, self._moduli, encrypted.value_bits)

    def add(self, a: LatticeVector, b: LatticeVector) -> LatticeVector:
        """``[[a + b]]`` for vectors of the same length, layout and level."""
        if (a.length, a.replicated, a.sanitized) != (b.length, b.replicated, b.sanitized):
            raise ValueError("add: vectors of different lengths, layouts or levels")
        value_bits = max(a.value_bits, b.value_bits) + 1
        self._check_bound(value_bits)
        noise = self._checked_noise(max(a.noise_bits, b.noise_bits) + 1, a.sanitized)
        parts = []
        for kit, pa, pb in zip(self._kits, a.parts, b.parts):
            out = []
            for x, y in zip(pa, pb):
                z = _bfv.new_ciphertext()
                kit.evaluator.add(x, y, z)
                out.append(z)
            parts.append(tuple(out))
        return LatticeVector(
            tuple(parts),
            a.length,
            value_bits,
            a.replicated,
            max(a.depth, b.depth),
            a.sanitized,
            noise,
        )

    def add_plain(
        self, encrypted: LatticeVector, values: np.ndarray, *, value_bits: int | None = None
    ) -> LatticeVector:
        """``[[v + k]]`` for a plaintext integer vector ``k`` (masks, offsets).

        ``value_bits`` declares the public bound ``|k| < 2**value_bits``; without it the bound
        is taken from ``k`` itself, and the result's header then reveals ``k``'s magnitude.
        """
        arr = integer_values(values, "values").ravel()
        if len(arr) != encrypted.length:
            raise ValueError(f"{len(arr)} values for a vector of {encrypted.length}")
        k_bits = declared_bits(arr, value_bits, "values")
        value_bits = max(encrypted.value_bits, k_bits) + 1
        self._check_bound(value_bits)
        noise = self._checked_noise(encrypted.noise_bits + 1, encrypted.sanitized)
        parts = []
        for kit, t, cts in zip(self._kits, self._moduli, encrypted.parts):
            res = residues_mod(arr, t)
            if encrypted.replicated:
                out = [
                    _bfv.add_plain(kit, ct, np.full(self.slots, r, np.uint64))
                    for ct, r in zip(cts, res)
                ]
            else:
                out = [
                    _bfv.add_plain(kit, ct, res[lo:hi])
                    for ct, (lo, hi) in zip(cts, self._blocks(len(arr)))
                ]
            parts.append(tuple(out))
        return LatticeVector(
            tuple(parts),
            encrypted.length,
            value_bits,
            encrypted.replicated,
            encrypted.depth,
            encrypted.sanitized,
            noise,
        )

    def dot(
        self,
        X: np.ndarray | LatticeMatrix,
        encrypted: LatticeVector,
        *,
        workers: int | None = None,
    ) -> LatticeVector:
        """``[[X^T d]]``: one replicated ciphertext per column of the integer matrix ``X``.

        Slot-wise products of each column with the packed ``[[d]]`` (plaintexts in NTT form),
        summed over the row blocks, then the sum of all slots by rotations (``log2 N``
        rotations a column). Pass a :class:`~vfm_flower.lattice_matrix.LatticeMatrix` to
        reuse its encoded plaintexts and worker processes; an array is encoded for this call
        (on ``workers`` processes: default all cores for large products).

        Raises
        ------
        ValueError
            ``X`` is not an integer ``rows x m`` matrix with ``rows = len(d)``, or ``d`` is
            replicated.
        CiphertextError
            The result's bound, the depth or the number of summed terms does not fit.
        """
        with self._matrix(X, workers) as matrix:
            if matrix.shape[0] != encrypted.length or encrypted.replicated:
                raise ValueError("dot: X must be rows x m with one row per packed value")
            self._check_depth(encrypted)
            self._check_terms(len(matrix.blocks))
            value_bits = (
                encrypted.value_bits + matrix.value_bits + max(encrypted.length - 1, 0).bit_length()
            )
            self._check_bound(value_bits)
            noise = self._checked_noise(
                encrypted.noise_bits
                + product_noise_bits(self.slots, self._t_bits, len(matrix.blocks))
                + rotation_sum_noise_bits(self.slots),
                False,
            )
            parts = matrix.dot_parts(encrypted)
        return LatticeVector(
            parts, matrix.shape[1], value_bits, True, encrypted.depth + 1, False, noise
        )

    def matvec(
        self,
        X: np.ndarray | LatticeMatrix,
        encrypted: LatticeVector,
        *,
        workers: int | None = None,
    ) -> LatticeVector:
        """``[[X w]]``, packed by row, for replicated weights ``[[w]]`` (one per column).

        ``X`` as for :meth:`dot`.

        Raises
        ------
        ValueError
            ``X`` is not an integer ``rows x m`` matrix with ``m = len(w)``, or ``w`` is packed.
        CiphertextError
            The result's bound, the depth or the number of summed terms does not fit.
        """
        with self._matrix(X, workers) as matrix:
            if matrix.shape[1] != encrypted.length or not encrypted.replicated:
                raise ValueError("matvec: X must be rows x m with one replicated weight per column")
            self._check_depth(encrypted)
            self._check_terms(matrix.shape[1])
            value_bits = (
                encrypted.value_bits + matrix.value_bits + max(matrix.shape[1] - 1, 0).bit_length()
            )
            self._check_bound(value_bits)
            noise = self._checked_noise(
                encrypted.noise_bits
                + product_noise_bits(self.slots, self._t_bits, matrix.shape[1]),
                False,
            )
            parts = matrix.matvec_parts(encrypted)
        return LatticeVector(
            parts, matrix.shape[0], value_bits, False, encrypted.depth + 1, False, noise
        )

    def _matrix(
        self, X: np.ndarray | LatticeMatrix, workers: int | None
    ) -> contextlib.AbstractContextManager[LatticeMatrix]:
        """The caller's matrix as is (it stays open), or a one-call matrix (closed after)."""
        if isinstance(X, LatticeMatrix):
            if X.context is not self and X.context.public_bytes() != self.public_bytes():
                raise ValueError("this LatticeMatrix was made for another key")
            return contextlib.nullcontext(X)
        return LatticeMatrix(self, X, cache=False, workers=workers)

    @property
    def kits(self) -> tuple[_bfv.BFVKit, ...]:
        """Hazardous: the SEAL objects per plaintext prime (for ``LatticeMatrix``)."""
        return self._kits

    @property
    def plaintext_moduli(self) -> tuple[int, ...]:
        """The plaintext primes (their product is ``T``)."""
        return tuple(self._moduli)

    def rerandomize(self, encrypted: LatticeVector) -> LatticeVector:
        """The same values, sanitized for the key holder: a fresh encryption of zero added,
        then switched down to the low level (see the module docstring). Only :meth:`add` and
        :meth:`decrypt` apply to the result."""
        if encrypted.sanitized:
            raise CiphertextError("depth", "this vector is re-randomized already")
        if encrypted.noise_bits > self._params.max_sanitizable_noise_bits:
            raise CiphertextError(
                "noise",
                f"noise up to 2**{encrypted.noise_bits} cannot be sanitized with these "
                f"parameters (at most 2**{self._params.max_sanitizable_noise_bits}): fewer "
                "additions or products, or parameters with more depth",
            )
        parts = []
        for kit, low, cts in zip(self._kits, self._low, encrypted.parts):
            parts.append(tuple(_bfv.sanitize(kit, ct, low) for ct in cts))
        return LatticeVector(
            tuple(parts),
            encrypted.length,
            encrypted.value_bits,
            encrypted.replicated,
            encrypted.depth,
            True,
            sanitized_noise_bits(self.slots),
        )

    def noise_budget(self, encrypted: LatticeVector) -> int:
        """The smallest SEAL noise budget (bits) of the vector's ciphertexts (key holder)."""
        if self._secret is None:
            raise PaillierKeyError("the noise budget needs the private key")
        return min(
            _bfv.noise_budget(kit, ct)
            for kit, cts in zip(self._kits, encrypted.parts)
            for ct in cts
        )

    # ------------------------------------------------------------------ serialization

    def level_ids(self, sanitized: bool) -> tuple[Any, ...]:
        """SEAL's parameter ids, per plaintext prime, of the full (or the sanitized) level."""
        return self._low if sanitized else self._first

    def ciphertexts_to_bytes(self, encrypted: LatticeVector) -> bytes:
        """Header (length, bound, layout, depth, level, noise), then every SEAL ciphertext."""
        return vector_to_bytes(encrypted)

    def ciphertexts_from_bytes(
        self,
        data: bytes,
        *,
        max_count: int,
        count: int | None = None,
        sanitized: bool | None = None,
    ) -> LatticeVector:
        """Parse :meth:`ciphertexts_to_bytes` output from an untrusted sender
        (:func:`vfm_flower.lattice_codec.vector_from_bytes`: ``max_count`` values at most,
        exactly ``count`` if given, and ``sanitized`` required or refused if given).

        Raises
        ------
        CiphertextError
            Malformed header, counts, sizes or levels, or ciphertexts SEAL refuses.
        """
        return vector_from_bytes(self, data, max_count=max_count, count=count, sanitized=sanitized)

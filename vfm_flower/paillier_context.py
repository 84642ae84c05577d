"""``PaillierContext``: the Paillier API a job step uses, on one key (pair).

Immutable; built from the label owner's key pair (``PaillierContext.generate(bits)``, at least
2048 bits) or from a public key (``from_public_bytes``). It encrypts fixed-point or integer
vectors, computes ``X^T [[d]]`` per column (``dot``), per-group homomorphic sums
(``grouped_sum``), adds and re-randomizes, decrypts (key holder only) and serializes with
size and range checks. The fast paths it uses live in :mod:`vfm_flower.hazmat`; the key and
payload functions in :mod:`vfm_flower.paillier`, which re-exports this class.
"""

from __future__ import annotations

import math
import operator
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from vfm_flower.errors import CiphertextError, PaillierKeyError
from vfm_flower.hazmat import (
    FEATURE_FRACTION_BITS,
    FEATURE_VALUE_BITS,
    MIN_KEY_BITS,
    RESIDUAL_FRACTION_BITS,
)
from vfm_flower.hazmat import paillier_djn as _djn
from vfm_flower.hazmat import paillier_dot as _dot
from vfm_flower.hazmat import paillier_pack as _pack
from vfm_flower.hazmat.paillier_image import signed_power_products
from vfm_flower.he_backend import HEBackend
from vfm_flower.paillier import (  # the key and payload functions this class builds on
    _DEFAULT_INTEGER_BITS,
    _EV_MAGIC,
    _INTEGER_FEATURE_BITS,
    EncryptedVector,
    _Key,
    _read_header,
    _validate_modulus,
    ciphertexts_from_bytes,
    encrypted_vector_to_bytes,
    generate_paillier_keypair,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_from_bytes,
    public_key_to_bytes,
    rerandomize,
)


def _integers(values: Any, what: str) -> list[int]:
    """Python ints of a 1-D integer (or bool) vector; ``ValueError`` for anything else."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector, got {arr.ndim} dimensions")
    if not (arr.dtype == object or arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be integers, got {arr.dtype}: convert with astype(np.int64)")
    try:
        return [operator.index(v) for v in arr.tolist()]
    except TypeError as exc:
        raise ValueError(f"{what} must be integers") from exc


def _fixed_point(values: Any, fraction_bits: int, what: str) -> list[int]:
    """``round(v * 2**fraction_bits)`` as exact Python ints of a 1-D finite float vector."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector, got {arr.ndim} dimensions")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} hold NaN or infinite values")
    try:
        return [round(math.ldexp(v, fraction_bits)) for v in arr.tolist()]
    except OverflowError as exc:
        raise ValueError(f"{what} are too large for a 2**-{fraction_bits} fixed point") from exc


def _parse_key(parse: Callable[..., _Key], data: bytes, min_bits: int, what: str) -> _Key:
    """``parse(data, min_bits=min_bits)`` with a malformed key as :class:`PaillierKeyError`."""
    try:
        return parse(data, min_bits=min_bits)
    except ValueError as exc:
        raise PaillierKeyError(f"{what} key refused: {exc}") from exc


def _magnitude_bits(values: Sequence[int]) -> int:
    return max((abs(v) for v in values), default=0).bit_length()


class PaillierContext(HEBackend):
    """Paillier operations on one key, for a vertical-FL job step: the safe entry point.

    Built from a public key (any party: encrypt, compute on ciphertexts, re-randomize,
    serialize) or from a key pair (the key holder: also decrypt). Immutable: the keys cannot be
    swapped, and every operation returns a new :class:`EncryptedVector`. Each vector carries a
    public bound ``|v| < 2**value_bits`` and its fixed-point scale ``fraction_bits``
    (``0``: integers); operations derive the bound of their result and refuse one that could
    wrap around the plaintext space, and :meth:`decrypt` refuses a value outside its bound
    (the sign of a wrong key or a corrupted vector).

    The context keeps one encryptor (a table of short-exponent obfuscators, made on first
    use, computed modulo ``p**2`` and ``q**2`` when the private key is present); a lock
    serializes its use, so an obfuscator is never used twice, also across threads. A context
    is not pickled: send :meth:`public_bytes`, keep :meth:`private_bytes` in the key holder's
    private state.

    Parameters
    ----------
    public_key : PaillierPublicKey
        The ``phe`` public key.
    private_key : PaillierPrivateKey, optional
        The matching ``phe`` private key (key holder only).
    min_bits : int
        Smallest modulus accepted (default ``MIN_KEY_BITS`` = 2048; an agreement may require
        more, never less).

    Raises
    ------
    PolicyViolation
        Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
    PaillierKeyError
        If the modulus is not a Paillier modulus or the private key belongs to another key.

    Examples
    --------
    >>> holder = PaillierContext.generate(2048)  # the label owner
    >>> labels = holder.encrypt_integers(np.array([1, 0, 1, 1]), value_bits=1)
    >>> party = PaillierContext.from_public_bytes(holder.public_bytes())
    >>> sums = party.grouped_sum(labels, np.array([0, 1, 1, -1]), 2)
    >>> holder.decrypt(sums)
    array([1, 1])
    """

    name = "paillier"
    __slots__ = ("_public", "_private", "_n", "_nsquare", "_lock", "_encryptor")

    def __init__(
        self,
        public_key: PaillierPublicKey,
        private_key: PaillierPrivateKey | None = None,
        *,
        min_bits: int = MIN_KEY_BITS,
    ) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise TypeError("public_key must be a phe PaillierPublicKey")
        n = int(public_key.n)
        try:
            _validate_modulus(n, min_bits)
        except ValueError as exc:
            raise PaillierKeyError(f"public key refused: {exc}") from exc
        if private_key is not None:
            if not isinstance(private_key, PaillierPrivateKey):
                raise TypeError("private_key must be a phe PaillierPrivateKey")
            if int(private_key.p) * int(private_key.q) != n:
                raise PaillierKeyError("the private key does not belong to this public key")
        for name, value in (
            ("_public", public_key),
            ("_private", private_key),
            ("_n", mpz(n)),
            ("_nsquare", mpz(n) ** 2),
            ("_lock", threading.Lock()),
            ("_encryptor", None),
        ):
            object.__setattr__(self, name, value)

    # ---------------------------------------------------------------- construction, keys

    @classmethod
    def generate(cls, bits: int = 2048) -> PaillierContext:
        """A new key pair (primes from the OS CSPRNG) and its context.

        Parameters
        ----------
        bits : int
            Modulus size: at least 2048, a multiple of 16.

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if ``bits < 2048``.
        ValueError
            If ``bits`` is not a multiple of 16.
        """
        public, private = generate_paillier_keypair(bits)
        return cls(public, private)

    @classmethod
    def from_public_bytes(cls, data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierContext:
        """The context of a public key serialized by :meth:`public_bytes`.

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
        PaillierKeyError
            If the bytes are not a canonical Paillier modulus.
        """
        public = _parse_key(public_key_from_bytes, data, min_bits, "public")
        return cls(public, min_bits=min_bits)

    @classmethod
    def from_private_bytes(cls, data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PaillierContext:
        """The key holder's context from :meth:`private_bytes` (checks ``p`` and ``q``).

        Raises
        ------
        PolicyViolation
            Rule ``"paillier_bits"`` if the modulus is shorter than ``min_bits``.
        PaillierKeyError
            If the bytes are malformed or ``p``, ``q`` are not distinct primes.
        """
        private = _parse_key(private_key_from_bytes, data, min_bits, "private")
        return cls(private.public_key, private, min_bits=min_bits)

    def public_bytes(self) -> bytes:
        """The public key: the modulus ``n``, big-endian, in ``bits / 8`` bytes."""
        return public_key_to_bytes(self._public)

    def private_bytes(self) -> bytes:
        """The private key (secret: store it only in the key holder's private state).

        Raises
        ------
        PaillierKeyError
            If this context holds only the public key.
        """
        return private_key_to_bytes(self._require_private("serializing the private key"))

    def public_context(self) -> PaillierContext:
        """This key without its private half, to hand to code that must not decrypt."""
        return PaillierContext(self._public) if self.has_private_key else self

    @property
    def public_key(self) -> PaillierPublicKey:
        """The ``phe`` public key."""
        return self._public

    @property
    def has_private_key(self) -> bool:
        """Whether this context can decrypt."""
        return self._private is not None

    @property
    def key_bits(self) -> int:
        """Size of the modulus in bits."""
        return int(self._n.bit_length())

    @property
    def security_bits(self) -> int:
        """Classical security of the modulus by NIST SP 800-57 (2048 bits: 112, 3072: 128)."""
        bits = self.key_bits
        return next((s for n, s in ((15360, 256), (7680, 192), (3072, 128)) if bits >= n), 112)

    @property
    def ciphertext_width(self) -> int:
        """Bytes of one serialized ciphertext."""
        return _djn.ciphertext_bytes_width(self._nsquare)

    def __repr__(self) -> str:
        return f"PaillierContext(bits={self.key_bits}, private_key={self.has_private_key})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a PaillierContext is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a PaillierContext is immutable")

    def __reduce__(self) -> Any:
        raise TypeError(
            "a PaillierContext is not pickled: send public_bytes(), keep private_bytes() in the "
            "key holder's private state"
        )

    def __copy__(self) -> PaillierContext:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PaillierContext:
        return self

    # ---------------------------------------------------------------- internals

    def _require_private(self, action: str) -> PaillierPrivateKey:
        if self._private is None:
            raise PaillierKeyError(
                f"{action} needs the private key: this context holds only the public key"
            )
        return self._private

    def _encryptor_in_lock(self) -> _djn.DJNEncryptor:
        """The encryptor (made on first use). Call with the lock held."""
        if self._encryptor is None:
            object.__setattr__(
                self, "_encryptor", _djn.DJNEncryptor(self._public, private=self._private)
            )
        return self._encryptor

    def _check_bounds(self, value_bits: int, fraction_bits: int) -> None:
        limit = self.key_bits - 2  # |v| < 2**(bits - 2) < n / 2: the sign decodes unambiguously
        if not 0 < value_bits <= limit:
            raise CiphertextError(
                "bound",
                f"a value bound of 2**{value_bits} does not fit a {self.key_bits}-bit key "
                f"(at most 2**{limit}): the result could wrap around",
            )
        if not 0 <= fraction_bits <= self.key_bits:
            raise CiphertextError("bound", f"invalid fixed-point scale 2**-{fraction_bits}")

    def _ciphertexts(self, encrypted: EncryptedVector) -> tuple[mpz, ...]:
        """The ciphertexts of a vector, after checking its bounds and their range."""
        if not isinstance(encrypted, EncryptedVector):
            raise TypeError("expected an EncryptedVector")
        self._check_bounds(encrypted.value_bits, encrypted.fraction_bits)
        nsquare = self._nsquare
        if any(not 0 < c < nsquare for c in encrypted.ciphertexts):
            raise CiphertextError("range", "a ciphertext is not in (0, n**2) for this key")
        return encrypted.ciphertexts

    def _result(
        self,
        cts: Sequence[mpz],
        value_bits: int,
        fraction_bits: int,
        fresh: bool,
        workers: int | None,
    ) -> EncryptedVector:
        vector = EncryptedVector(tuple(cts), value_bits, fraction_bits)
        return self.rerandomize(vector, workers=workers) if fresh else vector

    def _aligned(self, encrypted: EncryptedVector, fraction_bits: int) -> EncryptedVector:
        """``encrypted`` rescaled (by a power of two) to ``fraction_bits >= its own``."""
        shift = fraction_bits - encrypted.fraction_bits
        if shift == 0:
            return encrypted
        factor, nsquare = mpz(1) << shift, self._nsquare
        value_bits = encrypted.value_bits + shift
        self._check_bounds(value_bits, fraction_bits)
        cts = [gmpy2.powmod(c, factor, nsquare) for c in encrypted.ciphertexts]
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)

    # ---------------------------------------------------------------- encryption

    def encrypt(
        self, values: np.ndarray, *, bound: float, workers: int | None = None
    ) -> EncryptedVector:
        """Encrypt real values in fixed point (``round(v * 2**32)``) under a public bound.

        Parameters
        ----------
        values : np.ndarray
            1-D finite floats with ``|v| <= bound``.
        bound : float
            Public bound on ``|v|`` (below ``2**30``); only its bit length travels with the
            vector, so pass a data-independent bound (1.0 for probabilities and residuals of
            logistic regression).
        workers : int, optional
            Processes (default: all cores from 1024 values on).

        Returns
        -------
        EncryptedVector
            ``fraction_bits = 32``.

        Raises
        ------
        ValueError
            If ``values`` is not a 1-D finite vector within ``bound``.
        """
        quantized, value_bits = _dot.quantize_residuals(values, bound=float(bound))
        with self._lock:
            cts = _djn.encrypt_vector(
                self._public, quantized, encryptor=self._encryptor_in_lock(), workers=workers
            )
        return EncryptedVector(tuple(cts), value_bits, RESIDUAL_FRACTION_BITS)

    def encrypt_integers(
        self,
        values: np.ndarray,
        *,
        value_bits: int = _DEFAULT_INTEGER_BITS,
        workers: int | None = None,
    ) -> EncryptedVector:
        """Encrypt signed or non-negative integers (counts, 0/1 labels) exactly.

        Parameters
        ----------
        values : np.ndarray
            1-D integers or booleans.
        value_bits : int
            Public bound ``|v| < 2**value_bits``, 1 to 64 (default 32; 1 for 0/1 labels).
        workers : int, optional
            Processes (default: all cores from 1024 values on).

        Returns
        -------
        EncryptedVector
            ``fraction_bits = 0``.

        Raises
        ------
        ValueError
            If ``values`` is not a 1-D integer vector or a value is outside the bound.
        """
        if not 1 <= value_bits <= 64:
            raise ValueError("value_bits must be between 1 and 64")
        ints = _integers(values, "integers to encrypt")
        if _magnitude_bits(ints) > value_bits:
            raise ValueError(f"an integer is outside the public bound |v| < 2**{value_bits}")
        with self._lock:
            cts = _djn.encrypt_vector(
                self._public,
                np.array(ints, dtype=object),
                encryptor=self._encryptor_in_lock(),
                workers=workers,
            )
        return EncryptedVector(tuple(cts), value_bits, 0)

    def precompute(self, count: int, *, workers: int | None = None) -> None:
        """Compute ``count`` obfuscators ahead of need (e.g. while waiting for other parties).

        The next ``count`` encrypted values then cost one modular multiplication each.
        """
        with self._lock:
            self._encryptor_in_lock().fill_pool(count, workers=workers)

    # ---------------------------------------------------------------- computing on ciphertexts

    def dot(
        self,
        X: np.ndarray,
        encrypted: EncryptedVector,
        *,
        rerandomize: bool = True,
        workers: int | None = None,
    ) -> EncryptedVector:
        """``[[X^T d]]``: one ciphertext per column of ``X``, by bucketed multi-exponentiation.

        Parameters
        ----------
        X : np.ndarray
            ``rows x m`` matrix: floats (quantized to ``2**-16``, ``|x| < 2**24``) or integers
            (exact, ``|x| < 2**61``).
        encrypted : EncryptedVector
            ``[[d]]`` with one ciphertext per row of ``X``.
        rerandomize : bool
            Give the results fresh randomness (default). Turn it off only for results that are
            combined further before they leave (then re-randomize those).
        workers : int, optional
            Processes (default: all cores for large products).

        Returns
        -------
        EncryptedVector
            ``m`` ciphertexts; scale ``fraction_bits(d) + 16`` for float ``X``, that of ``d``
            for integer ``X``.

        Raises
        ------
        ValueError
            If the shapes do not match or ``X`` holds NaN, infinite or too large values.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"X must be a 2-D matrix, got {arr.ndim} dimensions")
        if arr.shape[0] != len(cts):
            raise ValueError(f"X has {arr.shape[0]} rows for {len(cts)} ciphertexts")
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            limit = 1 << _INTEGER_FEATURE_BITS
            if arr.size and not (-limit < int(arr.min()) and int(arr.max()) < limit):
                raise ValueError(f"integer features must satisfy |x| < 2**{_INTEGER_FEATURE_BITS}")
            X_int, x_bits, x_fraction = arr.astype(np.int64), _INTEGER_FEATURE_BITS, 0
        else:
            X_int, x_bits, x_fraction = (
                _dot.quantize_features(arr),
                FEATURE_VALUE_BITS,
                FEATURE_FRACTION_BITS,
            )
        value_bits = max(len(cts), 1).bit_length() + x_bits + encrypted.value_bits
        fraction_bits = encrypted.fraction_bits + x_fraction
        self._check_bounds(value_bits, fraction_bits)
        dots = _dot.encrypted_dot_products(cts, X_int, self._nsquare, workers=workers)
        return self._result(dots, value_bits, fraction_bits, rerandomize, workers)

    def matvec(self, X: np.ndarray, encrypted: EncryptedVector) -> EncryptedVector:
        """``[[X w]]``: one ciphertext per row of the integer matrix ``X`` (``rows x m``), for
        ``[[w]]`` of ``m`` ciphertexts, by Straus multi-exponentiation (the powers of every
        ``[[w_j]]`` shared by all rows). Not re-randomized: call :meth:`rerandomize` before it
        goes to the key holder.

        Raises
        ------
        ValueError
            If ``X`` is not an integer matrix with one column per ciphertext.
        CiphertextError
            If ``encrypted`` is out of range, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != len(cts):
            raise ValueError(f"X must be rows x {len(cts)}, got shape {arr.shape}")
        if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError("matvec: X must hold integers (quantize it first)")
        X_int = arr.astype(np.int64)
        value_bits = (
            encrypted.value_bits
            + _magnitude_bits(X_int.ravel().tolist())
            + max(len(cts) - 1, 0).bit_length()
        )
        self._check_bounds(value_bits, encrypted.fraction_bits)
        out = signed_power_products(cts, X_int, int(self._nsquare))
        return EncryptedVector(tuple(out), value_bits, encrypted.fraction_bits)

    def grouped_sum(
        self,
        encrypted: EncryptedVector,
        groups: np.ndarray,
        n_groups: int,
        *,
        rerandomize: bool = True,
        workers: int | None = None,
    ) -> EncryptedVector:
        """Per-group homomorphic sums: ciphertext ``g`` encrypts the sum of the rows in group ``g``.

        One modular multiplication per row (rows split over processes from 60,000 on). For
        secure segment statistics: with ``[[y]]`` the key holder's encrypted labels and
        ``groups`` a party's category levels, the key holder decrypts the label sum per level.

        Parameters
        ----------
        encrypted : EncryptedVector
            One ciphertext per row.
        groups : np.ndarray
            1-D integer group id per row, in ``[-1, n_groups)``; rows with ``-1`` are skipped.
        n_groups : int
            Number of groups (the length of the result).
        rerandomize : bool
            Give the sums fresh randomness (default): otherwise their randomness is the product
            of the rows', which tells the key holder which rows are in which group.
        workers : int, optional
            Processes.

        Returns
        -------
        EncryptedVector
            ``n_groups`` ciphertexts (an empty group sums to zero), bound ``value_bits(d) +
            bits(rows)``, same scale as ``encrypted``.

        Raises
        ------
        ValueError
            If ``groups`` is not a 1-D integer vector of the right length with ids in range.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        n_groups = operator.index(n_groups)
        value_bits = encrypted.value_bits + max(len(cts), 1).bit_length()
        self._check_bounds(value_bits, encrypted.fraction_bits)
        sums = _pack.encrypted_group_sums(cts, groups, n_groups, self._nsquare, workers=workers)
        return self._result(sums, value_bits, encrypted.fraction_bits, rerandomize, workers)

    def add(self, a: EncryptedVector, b: EncryptedVector) -> EncryptedVector:
        """``[[a + b]]`` elementwise (the scales are aligned to the finer one).

        The result's randomness is the product of the inputs': :meth:`rerandomize` it before it
        goes to the key holder.

        Raises
        ------
        ValueError
            If the lengths differ.
        CiphertextError
            If an input is out of range for the key, or the result's bound would not fit.
        """
        self._ciphertexts(a)
        self._ciphertexts(b)
        if len(a) != len(b):
            raise ValueError(f"cannot add encrypted vectors of lengths {len(a)} and {len(b)}")
        fraction_bits = max(a.fraction_bits, b.fraction_bits)
        a, b = self._aligned(a, fraction_bits), self._aligned(b, fraction_bits)
        value_bits = max(a.value_bits, b.value_bits) + 1
        self._check_bounds(value_bits, fraction_bits)
        nsquare = self._nsquare
        cts = [x * y % nsquare for x, y in zip(a.ciphertexts, b.ciphertexts)]
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)

    def add_plain(self, encrypted: EncryptedVector, values: np.ndarray) -> EncryptedVector:
        """``[[d + v]]`` elementwise for plaintext ``v``: one modular multiplication each.

        ``values`` are integers for an integer vector, floats (rounded to the vector's scale)
        for a fixed-point one. The result's bound reflects ``max |v|``; its randomness is that
        of ``encrypted``: :meth:`rerandomize` it before it goes to the key holder.

        Raises
        ------
        ValueError
            If ``values`` has the wrong length or kind.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        if encrypted.fraction_bits:
            plain = _fixed_point(values, encrypted.fraction_bits, "values to add")
        else:
            plain = _integers(values, "values to add")
        if len(plain) != len(cts):
            raise ValueError(f"{len(plain)} values to add to {len(cts)} ciphertexts")
        value_bits = max(encrypted.value_bits, _magnitude_bits(plain)) + 1
        self._check_bounds(value_bits, encrypted.fraction_bits)
        n = self._n
        cts = _djn.add_plaintexts([_djn.encode_signed(v, n) for v in plain], cts, n, self._nsquare)
        return EncryptedVector(tuple(cts), value_bits, encrypted.fraction_bits)

    def multiply_plain(
        self,
        encrypted: EncryptedVector,
        factors: np.ndarray | float,
        *,
        fraction_bits: int = FEATURE_FRACTION_BITS,
    ) -> EncryptedVector:
        """``[[d * k]]`` elementwise for a plaintext scalar or vector ``k``.

        Integer factors are exact; float factors are rounded to ``2**-fraction_bits`` and add
        ``fraction_bits`` to the result's scale. One exponentiation by ``k`` per ciphertext.
        A zero factor gives the trivial encryption of zero and the result's randomness derives
        from ``encrypted``'s: :meth:`rerandomize` it before it goes to the key holder.

        Raises
        ------
        ValueError
            If ``factors`` has the wrong length, or holds NaN or infinite values.
        CiphertextError
            If ``encrypted`` is out of range for the key, or the result's bound would not fit.
        """
        cts = self._ciphertexts(encrypted)
        arr = np.asarray(factors)
        if arr.ndim == 0:
            arr = np.full(len(cts), arr.item(), dtype=arr.dtype)
        if arr.dtype == object or arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            ks, extra = _integers(arr, "factors"), 0
        else:
            ks, extra = _fixed_point(arr, fraction_bits, "factors"), fraction_bits
        if len(ks) != len(cts):
            raise ValueError(f"{len(ks)} factors for {len(cts)} ciphertexts")
        value_bits = encrypted.value_bits + _magnitude_bits(ks)
        self._check_bounds(value_bits, encrypted.fraction_bits + extra)
        nsquare = self._nsquare
        out = [gmpy2.powmod(c, k, nsquare) for c, k in zip(cts, ks)]
        return EncryptedVector(tuple(out), value_bits, encrypted.fraction_bits + extra)

    def rerandomize(
        self, encrypted: EncryptedVector, *, workers: int | None = None
    ) -> EncryptedVector:
        """The same plaintexts under fresh full-size randomness (see :func:`rerandomize`).

        A ciphertext the key holder gets back then cannot be linked to the one it sent, and
        reveals nothing through its randomness. One full exponentiation per ciphertext (~15 ms
        at 2048 bits; all cores from 64 ciphertexts on).

        Raises
        ------
        CiphertextError
            If ``encrypted`` is out of range for the key.
        """
        cts = self._ciphertexts(encrypted)
        fresh = rerandomize(self._public, cts, workers=workers)
        return EncryptedVector(tuple(fresh), encrypted.value_bits, encrypted.fraction_bits)

    def equality_tests(
        self, encrypted: EncryptedVector, candidates: Sequence[Sequence[int]]
    ) -> EncryptedVector:
        """Private equality tests: for ciphertext ``i`` and each integer ``o`` of
        ``candidates[i]``, ``[[r (d_i - o)]]`` with ``r`` uniform in ``[1, n)`` (OS randomness).

        Each decrypts to 0 if ``d_i == o`` and otherwise to a uniformly random residue (``n``
        has no small factors), so the key holder learns whether ``d_i`` is among the
        candidates and nothing else (:meth:`decrypt_zeros`): the minimum-cohort test of a
        count it must not see. One full exponentiation per test. The caller shuffles the
        tests of one value if their order would tell which candidate matched.

        Raises
        ------
        ValueError
            If ``candidates`` does not give one list per ciphertext.
        """
        cts = self._ciphertexts(encrypted)
        if encrypted.fraction_bits:
            raise ValueError("equality tests take an integer vector")
        if len(candidates) != len(cts):
            raise ValueError(f"{len(candidates)} candidate lists for {len(cts)} ciphertexts")
        n, nsquare = self._n, self._nsquare
        out = []
        for c, values in zip(cts, candidates, strict=True):
            for o in values:
                shifted = _djn.add_plaintexts([_djn.encode_signed(-int(o), n)], [c], n, nsquare)
                factor = mpz(1 + secrets.randbelow(int(n) - 1))
                out.append(gmpy2.powmod(shifted[0], factor, nsquare))
        # fresh randomness: the input's (a power of it) would let the key holder solve for
        # the difference d - o from two ciphertexts that share it
        return self.rerandomize(EncryptedVector(tuple(out), self.key_bits - 2, 0))

    def refresh_for_peers(self, encrypted: EncryptedVector) -> EncryptedVector:
        """The same plaintexts times fresh encryptions of zero (short-exponent DJN
        obfuscators: about one modular multiplication each from the fixed-base table).

        Unlinkable to anyone without the private key: for ciphertexts a party passes to
        another *non-key-holding* party (a passive party forwarding the label owner's
        vectors), so the receiver cannot relate them to each other, to their plaintext
        factors, or to the vectors the label owner sent. A ciphertext that goes back to the
        key holder gets :meth:`rerandomize` (full-size randomness) instead.
        """
        zeros = self.encrypt_integers(np.zeros(len(encrypted), dtype=np.int64), value_bits=1)
        refreshed = self.add(encrypted, zeros)
        return EncryptedVector(refreshed.ciphertexts, encrypted.value_bits, encrypted.fraction_bits)

    # ---------------------------------------------------------------- decryption

    def decrypt_zeros(self, encrypted: EncryptedVector) -> np.ndarray:
        """Which ciphertexts encrypt zero (key holder only): the answers of
        :meth:`equality_tests`, whose other plaintexts are random and are not returned."""
        private = self._require_private("decryption")
        cts = self._ciphertexts(encrypted)
        values = _djn.decrypt_vector(private, cts)
        return np.array([v == 0 for v in values], dtype=bool)

    def decrypt(self, encrypted: EncryptedVector, *, workers: int | None = None) -> np.ndarray:
        """Decrypt (CRT) to what was encrypted: integers or fixed-point floats.

        Parameters
        ----------
        encrypted : EncryptedVector
            A vector under this key.
        workers : int, optional
            Processes (default: all cores from 256 ciphertexts on).

        Returns
        -------
        np.ndarray
            ``float64`` for a fixed-point vector (``fraction_bits > 0``); for an integer vector
            ``int64`` if its bound is at most ``2**63``, else ``object`` (Python ints).

        Raises
        ------
        PaillierKeyError
            If this context holds only the public key.
        CiphertextError
            If a ciphertext is out of range, or a decrypted value breaks the vector's bound
            (made under another key, corrupted, or a wrong bound declared).
        """
        private = self._require_private("decryption")
        cts = self._ciphertexts(encrypted)
        values = _djn.decrypt_vector(private, cts, workers=workers)
        if _magnitude_bits(values) > encrypted.value_bits:
            raise CiphertextError(
                "bound",
                f"a decrypted value breaks the vector's bound 2**{encrypted.value_bits}: made "
                "under another key, corrupted, or a wrong bound declared",
            )
        if encrypted.fraction_bits:
            scale = 1 << encrypted.fraction_bits
            return np.array([v / scale for v in values], dtype=np.float64)
        if encrypted.value_bits <= 63:
            return np.array(values, dtype=np.int64)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    # ---------------------------------------------------------------- serialization

    def ciphertexts_to_bytes(self, encrypted: EncryptedVector) -> bytes:
        """Serialize a vector: header (count, value bits, fraction bits), fixed-width ciphertexts.

        The format of :func:`encrypted_vector_to_bytes`; read it with
        :meth:`ciphertexts_from_bytes`.

        Raises
        ------
        CiphertextError
            If a ciphertext is out of range for the key or the bounds are invalid.
        """
        self._ciphertexts(encrypted)
        return encrypted_vector_to_bytes(encrypted, self._public)

    def ciphertexts_from_bytes(
        self, data: bytes, *, max_count: int, count: int | None = None
    ) -> EncryptedVector:
        """Parse :meth:`ciphertexts_to_bytes` output from an untrusted sender.

        Parameters
        ----------
        data : bytes
            The serialized vector.
        max_count : int
            Most ciphertexts accepted (checked before anything is parsed).
        count : int, optional
            Exact number of ciphertexts expected.

        Returns
        -------
        EncryptedVector

        Raises
        ------
        CiphertextError
            ``problem`` names what was wrong: ``"header"`` (not a serialized vector),
            ``"count"`` (more than ``max_count``, or not ``count``), ``"length"`` (bytes do not
            match the declared count), ``"bound"`` (declared bounds do not fit the key),
            ``"range"`` (a ciphertext is zero or ``>= n**2``).
        """
        max_count = operator.index(max_count)
        if max_count < 0:
            raise ValueError("max_count must be non-negative")
        try:
            (declared, value_bits, fraction_bits), body = _read_header(
                data, _EV_MAGIC, 3, "encrypted vector"
            )
        except ValueError as exc:
            raise CiphertextError("header", str(exc)) from exc
        if declared > max_count:
            raise CiphertextError(
                "count", f"{declared} ciphertexts declared, at most {max_count} accepted"
            )
        if count is not None and declared != count:
            raise CiphertextError("count", f"{declared} ciphertexts declared, {count} expected")
        width = self.ciphertext_width
        if len(body) != declared * width:
            raise CiphertextError(
                "length",
                f"{len(body)} bytes of ciphertexts for {declared} ciphertexts of {width} bytes",
            )
        self._check_bounds(value_bits, fraction_bits)
        try:
            cts = ciphertexts_from_bytes(body, self._public, declared)
        except ValueError as exc:
            raise CiphertextError("range", "a ciphertext is zero or >= n**2 for this key") from exc
        return EncryptedVector(tuple(cts), value_bits, fraction_bits)
